import { createHash, createHmac, X509Certificate } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  der,
  type EfsCertificateInput,
  efsClientCertificate,
  efsClientKey,
  efsConnectSignature,
  quotePlus,
} from "../../src/efs/tls/client-certificate.ts";
import { run } from "../../src/host/exec.ts";

const FS = "fs-0123456789abcdef0";
const AP = "fsap-0123456789abcdef0";
const NOW = new Date("2026-03-04T05:06:07.890Z");
const IAM = {
  accessKeyId: "AKIDEXAMPLE",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
  sessionToken: "IQoJb3JpZ2luX2VjE+/token==",
  region: "us-east-1",
};
// One key for the file: RSA 3072 takes a while to make.
const KEY = efsClientKey();

function certificate(more: Partial<EfsCertificateInput> = {}) {
  return efsClientCertificate({
    key: KEY,
    fileSystemId: FS,
    clientSource: "k8s",
    version: "0.1.0",
    now: NOW,
    commonName: "ip-10-0-0-1.ec2.internal",
    ...more,
  });
}

/** The bytes written out by hand, so that the test does not lean on the encoder it checks. */
const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ""), "hex");
const ascii = (text: string) => Buffer.from(text, "ascii");
/** One octet in hex: a short-form length. */
const byte = (n: number) => n.toString(16).padStart(2, "0");
/** 1.3.6.1.4.1.4843.7.n: 2b 06 01 04 01, 4843 in base 128 (a5 6b), 07, n. */
const efsOid = (n: number) => hex(`06 09 2b 06 01 04 01 a5 6b 07 0${n}`);

/** The SigV4 steps as AWS documents them, written plainly for this test. */
function expectedSignature(publicKeyHash: string, token: string | undefined): string {
  const query = [
    "Action=Connect",
    `PublicKeyHash=${publicKeyHash}`,
    "X-Amz-Algorithm=AWS4-HMAC-SHA256",
    "X-Amz-Credential=AKIDEXAMPLE%2F20260304%2Fus-east-1%2Felasticfilesystem%2Faws4_request",
    "X-Amz-Date=20260304T050607Z",
    "X-Amz-Expires=86400",
    ...(token ? ["X-Amz-Security-Token=IQoJb3JpZ2luX2VjE%2B%2Ftoken%3D%3D"] : []),
    "X-Amz-SignedHeaders=host",
  ].join("&");
  const emptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  const canonical = `GET\n/\n${query}\nhost:${FS}\n\nhost\n${emptyHash}`;
  const toSign = `AWS4-HMAC-SHA256\n20260304T050607Z\n20260304/us-east-1/elasticfilesystem/aws4_request\n${createHash("sha256").update(canonical).digest("hex")}`;
  let key: Buffer = Buffer.from(`AWS4${IAM.secretAccessKey}`);
  for (const part of ["20260304", "us-east-1", "elasticfilesystem", "aws4_request"]) {
    key = createHmac("sha256", key).update(part).digest();
  }
  return createHmac("sha256", key).update(toSign).digest("hex");
}

describe("efsClientCertificate", () => {
  it("is a self-signed X.509 v3 certificate for CN=<name>, valid from 15 minutes ago for 3 hours", () => {
    const cert = new X509Certificate(certificate().pem);
    expect(cert.subject).toBe("CN=ip-10-0-0-1.ec2.internal");
    expect(cert.issuer).toBe(cert.subject);
    expect(new Date(cert.validFrom).getTime()).toBe(Date.parse("2026-03-04T04:51:07Z"));
    expect(new Date(cert.validTo).getTime()).toBe(Date.parse("2026-03-04T08:06:07Z"));
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.checkPrivateKey(KEY)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.modulusLength).toBe(3072);
  });

  it("matches its DER form and gives each certificate a fresh positive serial", () => {
    const a = certificate();
    const b = certificate();
    expect(new X509Certificate(a.der).raw).toEqual(a.der);
    expect(new X509Certificate(a.pem).raw).toEqual(a.der);
    expect(a.pem).toMatch(
      /^-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/=]{1,64}\n)+-----END CERTIFICATE-----\n$/,
    );
    const serialA = new X509Certificate(a.der).serialNumber;
    expect(serialA).not.toBe(new X509Certificate(b.der).serialNumber);
    expect(Number.parseInt(serialA.slice(0, 2), 16)).toBeLessThan(0x80);
  });

  it("cuts the common name to 64 characters", () => {
    const cert = new X509Certificate(certificate({ commonName: "n".repeat(100) }).pem);
    expect(cert.subject).toBe(`CN=${"n".repeat(64)}`);
  });

  it("keys its subjectKeyIdentifier and PublicKeyHash on the SHA-1 of the RSA public key", () => {
    const { der: bytes, publicKeyHash } = certificate();
    // For RSA the subjectPublicKey bits are the PKCS#1 RSAPublicKey.
    const expected = createHash("sha1")
      .update(new X509Certificate(bytes).publicKey.export({ type: "pkcs1", format: "der" }))
      .digest("hex");
    expect(publicKeyHash).toBe(expected);
    // extnID 2.5.29.14, extnValue OCTET STRING { OCTET STRING (20 bytes) }
    expect(bytes.includes(Buffer.concat([hex("06 03 55 1d 0e 04 16 04 14"), hex(expected)]))).toBe(true);
  });

  it("carries the file system id, the access point and the client info in efs-utils' extensions", () => {
    const { der: bytes } = certificate({ accessPointId: AP });
    const utf8 = (text: string) => Buffer.concat([hex(`0c ${byte(text.length)}`), ascii(text)]);
    const ext = (n: number, value: Buffer) =>
      Buffer.concat([efsOid(n), hex(`04 ${byte(value.length)}`), value]);
    expect(bytes.includes(ext(3, utf8(FS)))).toBe(true);
    expect(bytes.includes(ext(1, utf8(AP)))).toBe(true);
    const info = Buffer.concat([utf8("k8s"), utf8("0.1.0")]);
    expect(bytes.includes(ext(4, Buffer.concat([hex(`30 ${byte(info.length)}`), info])))).toBe(true);
    expect(bytes.includes(efsOid(2))).toBe(false);
  });

  it("leaves the access point extension out when there is none", () => {
    const { der: bytes } = certificate();
    expect(bytes.includes(efsOid(1))).toBe(false);
    expect(bytes.includes(efsOid(3))).toBe(true);
  });

  it("carries an iam client-auth sequence: key id, the signature's hex text, the date, the session token", () => {
    const { der: bytes, publicKeyHash } = certificate({ iam: IAM });
    const signature = expectedSignature(publicKeyHash, IAM.sessionToken);
    const body = Buffer.concat([
      hex("0c 0b"),
      ascii(IAM.accessKeyId),
      hex("04 40"),
      ascii(signature),
      hex("17 0d"),
      ascii("260304050607Z"),
      hex(`a0 ${byte(IAM.sessionToken.length + 2)} 0c ${byte(IAM.sessionToken.length)}`),
      ascii(IAM.sessionToken),
    ]);
    const sequence = Buffer.concat([hex(`30 ${byte(body.length)}`), body]);
    const value = Buffer.concat([hex(`04 ${byte(sequence.length)}`), sequence]);
    expect(body.length).toBeLessThan(0x80);
    expect(bytes.includes(Buffer.concat([efsOid(2), value]))).toBe(true);
  });

  it("leaves the session token out of the client-auth sequence when there is none", () => {
    const { der: bytes } = certificate({ iam: { ...IAM, sessionToken: undefined } });
    expect(bytes.includes(efsOid(2))).toBe(true);
    expect(bytes.includes(ascii(IAM.sessionToken))).toBe(false);
    expect(bytes.includes(hex("17 0d"))).toBe(true);
  });

  describe("read back by openssl", () => {
    let dir = "";
    let hasOpenssl = false;
    beforeAll(async () => {
      hasOpenssl = await run("openssl", ["version"]).then(
        () => true,
        () => false,
      );
      if (!hasOpenssl) console.log("openssl checks skipped: the openssl command is not installed");
      dir = await mkdtemp(join(tmpdir(), "efs-cert-"));
    });
    afterAll(() => rm(dir, { recursive: true, force: true }));

    it("shows every extension with the values given", async () => {
      if (!hasOpenssl) return;
      const cert = certificate({ accessPointId: AP, iam: IAM });
      const file = join(dir, "cert.der");
      await writeFile(file, cert.der);
      const { stdout: text } = await run("openssl", [
        "x509",
        "-inform",
        "DER",
        "-in",
        file,
        "-noout",
        "-text",
      ]);
      expect(text).toContain("Version: 3 (0x2)");
      expect(text).toContain("Signature Algorithm: sha256WithRSAEncryption");
      expect(text.replace(/:/g, "").toLowerCase()).toContain(cert.publicKeyHash);
      const { stdout: tree } = await run("openssl", ["asn1parse", "-inform", "DER", "-in", file]);
      for (const n of [1, 2, 3, 4]) expect(tree).toContain(`:1.3.6.1.4.1.4843.7.${n}`);
      // Each extension value is DER of its own: parse the client-auth one.
      const offset =
        /(\d+):d=\d+\s+hl=\d+ l=\s*\d+ prim: OBJECT\s+:1\.3\.6\.1\.4\.1\.4843\.7\.2\n\s*(\d+):/.exec(
          tree,
        )?.[2];
      expect(offset).toBeDefined();
      const { stdout: auth } = await run("openssl", [
        "asn1parse",
        "-inform",
        "DER",
        "-in",
        file,
        "-strparse",
        offset!,
      ]);
      expect(auth).toMatch(/UTF8STRING\s+:AKIDEXAMPLE/);
      expect(auth).toMatch(/l=\s*64 prim: OCTET STRING/);
      expect(auth).toMatch(/UTCTIME\s+:260304050607Z/);
      expect(auth).toMatch(/cont \[ 0 \]/);
      expect(auth).toContain(`:${IAM.sessionToken}`);
    });
  });
});

describe("efsConnectSignature", () => {
  const input = { iam: IAM, fileSystemId: FS, publicKeyHash: "ab".repeat(20), now: NOW };

  it("signs Action=Connect as an independent SigV4 computation does", () => {
    const { signature } = efsConnectSignature(input);
    expect(signature).toMatch(/^[0-9a-f]{64}$/);
    expect(signature).toBe(expectedSignature(input.publicKeyHash, IAM.sessionToken));
  });

  it("signs without a security token when the credentials have none", () => {
    const { signature, canonicalRequest } = efsConnectSignature({
      ...input,
      iam: { ...IAM, sessionToken: undefined },
    });
    expect(canonicalRequest).not.toContain("X-Amz-Security-Token");
    expect(signature).toBe(expectedSignature(input.publicKeyHash, undefined));
  });

  it("builds the canonical request with the fs id as the host header", () => {
    const { canonicalRequest, stringToSign } = efsConnectSignature(input);
    const lines = canonicalRequest.split("\n");
    expect(lines.slice(0, 2)).toEqual(["GET", "/"]);
    expect(lines.slice(3)).toEqual([
      `host:${FS}`,
      "",
      "host",
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]);
    expect(stringToSign.split("\n").slice(0, 3)).toEqual([
      "AWS4-HMAC-SHA256",
      "20260304T050607Z",
      "20260304/us-east-1/elasticfilesystem/aws4_request",
    ]);
  });
});

describe("quotePlus", () => {
  it("escapes as Python's urllib.parse.quote_plus", () => {
    expect(quotePlus("a b/c+d=e~f_g.h-i!j'k(l)m*n")).toBe("a+b%2Fc%2Bd%3De~f_g.h-i%21j%27k%28l%29m%2An");
  });
});

describe("der", () => {
  it("encodes integers minimally and positive", () => {
    expect(der.integer(hex("00 00 7f"))).toEqual(hex("02 01 7f"));
    expect(der.integer(hex("80"))).toEqual(hex("02 02 00 80"));
    expect(der.integer(Buffer.alloc(0))).toEqual(hex("02 01 00"));
  });

  it("encodes long lengths in the long form", () => {
    expect(der.octetString(Buffer.alloc(0x80)).subarray(0, 3)).toEqual(hex("04 81 80"));
    expect(der.octetString(Buffer.alloc(0x1234)).subarray(0, 4)).toEqual(hex("04 82 12 34"));
  });

  it("encodes object identifiers with base-128 arcs", () => {
    expect(der.oid("1.2.840.113549.1.1.11")).toEqual(hex("06 09 2a 86 48 86 f7 0d 01 01 0b"));
    expect(() => der.oid("1")).toThrow(/not an object identifier/);
  });

  it("writes dates after 2049 as GeneralizedTime", () => {
    expect(der.time(new Date("2050-01-02T03:04:05Z"))).toEqual(
      Buffer.concat([hex("18 0f"), ascii("20500102030405Z")]),
    );
    expect(() => der.utcTime(new Date("2050-01-02T03:04:05Z"))).toThrow(/year 2050/);
  });
});
