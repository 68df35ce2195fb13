// A test CA made with the openssl command, and the reading of efs-utils' certificate extensions:
// what the stand-in EFS mount targets (efs-tls-target.ts, the relay tests) need to be TLS servers
// of a file system's name, and to see who the client says it is.
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { der } from "../../src/efs/tls/client-certificate.ts";
import { run } from "../../src/host/exec.ts";

export interface Pem {
  cert: string;
  key: string;
}

export interface TestCa extends Pem {
  /** A server certificate for the DNS name (SAN; a wildcard works too), signed by this CA. */
  sign(name: string): Promise<Pem>;
}

/** Whether the openssl command is there: the tests that need a CA are skipped without it. */
export const hasOpenssl = await run("openssl", ["version"]).then(
  () => true,
  () => false,
);

/** A CA, and certificates it signs for DNS names: EC keys, valid for a day. */
export async function makeCa(dir: string, label: string): Promise<TestCa> {
  const caKey = join(dir, `${label}-ca.key`);
  const caCert = join(dir, `${label}-ca.pem`);
  await run("openssl", [
    ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
    ...["-keyout", caKey, "-out", caCert, "-days", "1", "-subj", `/CN=${label} test CA`],
    ...["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
  ]);
  const sign = async (name: string): Promise<Pem> => {
    const base = join(dir, `${label}-${name.replace("*", "wildcard")}`);
    await writeFile(`${base}.ext`, `subjectAltName=DNS:${name}\nextendedKeyUsage=serverAuth\n`);
    await run("openssl", [
      ...["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-keyout", `${base}.key`, "-out", `${base}.csr`, "-subj", `/CN=${name}`],
    ]);
    await run("openssl", [
      ...["x509", "-req", "-in", `${base}.csr`, "-CA", caCert, "-CAkey", caKey, "-CAcreateserial"],
      ...["-out", `${base}.pem`, "-days", "1", "-extfile", `${base}.ext`],
    ]);
    return { cert: await readFile(`${base}.pem`, "utf8"), key: await readFile(`${base}.key`, "utf8") };
  };
  return { cert: await readFile(caCert, "utf8"), key: await readFile(caKey, "utf8"), sign };
}

/** One DER element at offset: its tag, where its contents start and where it ends. */
function readTlv(buf: Buffer, offset: number): { tag: number; start: number; end: number } {
  const first = buf[offset + 1] ?? 0;
  let length = first;
  let start = offset + 2;
  if (first & 0x80) {
    length = 0;
    for (let i = 0; i < (first & 0x7f); i++) length = length * 256 + (buf[start + i] ?? 0);
    start += first & 0x7f;
  }
  return { tag: buf[offset] ?? 0, start, end: start + length };
}

/** The UTF8String value of one of efs-utils' extensions in a certificate's DER, or undefined. */
export function extensionText(certificate: Buffer, oid: string): string | undefined {
  const id = der.oid(oid);
  const at = certificate.indexOf(id);
  if (at < 0) return undefined;
  const value = readTlv(certificate, at + id.length);
  const text = readTlv(certificate, value.start);
  return certificate.subarray(text.start, text.end).toString("utf8");
}

/** Whether the certificate carries an extension (by OID), e.g. efs-utils' iam client auth. */
export function hasExtension(certificate: Buffer, oid: string): boolean {
  return certificate.indexOf(der.oid(oid)) >= 0;
}
