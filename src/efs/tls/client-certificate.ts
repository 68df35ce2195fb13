/**
 * The TLS client certificate EFS expects, built as amazon-efs-utils builds it (certificate_utils.py),
 * without openssl: a self-signed X.509 v3 certificate whose custom extensions tell the mount target
 * the file system, the access point, the client and, for `iam` mounts, a SigV4 signature of
 * `Action=Connect` over the hash of our public key. That is how EFS learns who mounts what: nothing
 * is sent in the stream itself.
 *
 * The DER encoder below is written here rather than taken from a library: the certificate needs a
 * dozen fixed shapes, and the driver takes no dependency for that.
 */
import {
  createHash,
  createHmac,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
} from "node:crypto";

/** The object identifiers of efs-utils' extensions (metadata.py CA_CONFIG_BODY). */
export const EFS_EXTENSION = {
  accessPoint: "1.3.6.1.4.1.4843.7.1",
  clientAuth: "1.3.6.1.4.1.4843.7.2",
  fileSystemId: "1.3.6.1.4.1.4843.7.3",
  clientInfo: "1.3.6.1.4.1.4843.7.4",
} as const;

const OID_SUBJECT_KEY_IDENTIFIER = "2.5.29.14";
const OID_COMMON_NAME = "2.5.4.3";
const OID_SHA256_WITH_RSA = "1.2.840.113549.1.1.11";

/** efs-utils' window: valid from 15 minutes ago (clock skew) for 3 hours; the watchdog renews it hourly. */
const NOT_BEFORE_MS = 15 * 60_000;
const NOT_AFTER_MS = 3 * 3_600_000;
const MAX_COMMON_NAME = 64;
const SERIAL_BYTES = 16;

/** What the SigV4 signature in the certificate is for. */
export const EFS_SIGV4 = {
  service: "elasticfilesystem",
  algorithm: "AWS4-HMAC-SHA256",
  expiresSeconds: 86_400,
} as const;

export interface IamCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string | undefined;
  /** The file system's region: part of the SigV4 credential scope. */
  region: string;
}

export interface EfsCertificateInput {
  /** The client's private key (efsClientKey); the certificate carries its public half. */
  key: KeyObject;
  fileSystemId: string;
  accessPointId?: string | undefined;
  /** efs-utils' `[client-info] source`, "unknown" there when not configured. */
  clientSource: string;
  /** The client's version, sent where efs-utils sends its own. */
  version: string;
  /** Creation time: the validity window and the SigV4 date follow from it. */
  now: Date;
  /** The subject and issuer CN (efs-utils uses the host name); cut to 64 characters. */
  commonName: string;
  /** Sign `Action=Connect` with these credentials (the `iam` mount option). */
  iam?: IamCredentials | undefined;
}

export interface EfsCertificate {
  pem: string;
  der: Buffer;
  /** SHA-1 hex of the public key: the subjectKeyIdentifier and the signed PublicKeyHash. */
  publicKeyHash: string;
}

/** The client's key pair: RSA 3072, as efs-utils makes with `openssl genpkey`. Slow (~0.1-1 s): cache it. */
export function efsClientKey(): KeyObject {
  return generateKeyPairSync("rsa", { modulusLength: 3072 }).privateKey;
}

/** The self-signed client certificate for one mount: see the module comment. */
export function efsClientCertificate(input: EfsCertificateInput): EfsCertificate {
  const publicKey = createPublicKey(input.key);
  const spki = publicKey.export({ type: "spki", format: "der" });
  // The key id hashes the subjectPublicKey BIT STRING's bits: for RSA, the PKCS#1 RSAPublicKey.
  const publicKeyHash = createHash("sha1")
    .update(publicKey.export({ type: "pkcs1", format: "der" }))
    .digest("hex");
  const name = distinguishedName(input.commonName.slice(0, MAX_COMMON_NAME));
  const algorithm = der.sequence(der.oid(OID_SHA256_WITH_RSA), der.null());
  const tbs = der.sequence(
    der.explicit(0, der.integer(Buffer.from([2]))), // v3
    der.integer(serialNumber()),
    algorithm,
    name,
    der.sequence(
      der.time(new Date(input.now.getTime() - NOT_BEFORE_MS)),
      der.time(new Date(input.now.getTime() + NOT_AFTER_MS)),
    ),
    name,
    spki,
    der.explicit(3, der.sequence(...extensions(input, publicKeyHash))),
  );
  const signature = sign("sha256", tbs, input.key);
  const certificate = der.sequence(tbs, algorithm, der.bitString(signature));
  return { pem: toPem(certificate), der: certificate, publicKeyHash };
}

/** The extensions in efs-utils' order: key id, access point, client auth, file system, client info. */
function extensions(input: EfsCertificateInput, publicKeyHash: string): Buffer[] {
  const out = [extension(OID_SUBJECT_KEY_IDENTIFIER, der.octetString(Buffer.from(publicKeyHash, "hex")))];
  if (input.accessPointId !== undefined) {
    out.push(extension(EFS_EXTENSION.accessPoint, der.utf8(input.accessPointId)));
  }
  if (input.iam) {
    out.push(extension(EFS_EXTENSION.clientAuth, clientAuth(input, input.iam, publicKeyHash)));
  }
  out.push(extension(EFS_EXTENSION.fileSystemId, der.utf8(input.fileSystemId)));
  out.push(
    extension(EFS_EXTENSION.clientInfo, der.sequence(der.utf8(input.clientSource), der.utf8(input.version))),
  );
  return out;
}

/** efs_client_auth: SEQUENCE { accessKeyId, signature (hex text as octets), date, [0] sessionToken? }. */
function clientAuth(input: EfsCertificateInput, iam: IamCredentials, publicKeyHash: string): Buffer {
  const { signature } = efsConnectSignature({
    iam,
    fileSystemId: input.fileSystemId,
    publicKeyHash,
    now: input.now,
  });
  const fields = [
    der.utf8(iam.accessKeyId),
    der.octetString(Buffer.from(signature, "ascii")),
    der.utcTime(input.now),
  ];
  if (iam.sessionToken) fields.push(der.explicit(0, der.utf8(iam.sessionToken)));
  return der.sequence(...fields);
}

/** Extension ::= SEQUENCE { extnID, extnValue OCTET STRING (the DER of the value) }; none is critical. */
function extension(oid: string, value: Buffer): Buffer {
  return der.sequence(der.oid(oid), der.octetString(value));
}

function distinguishedName(commonName: string): Buffer {
  return der.sequence(der.set(der.sequence(der.oid(OID_COMMON_NAME), der.utf8(commonName))));
}

/** A random positive serial, as RFC 5280 asks: at most 20 octets, not zero. */
function serialNumber(): Buffer {
  const serial = randomBytes(SERIAL_BYTES);
  serial[0] = serial[0]! & 0x7f || 1;
  return serial;
}

function toPem(certificate: Buffer): string {
  const lines = certificate.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----\n`;
}

/** A type, a length, the contents: the definite-length form DER requires. */
function tlv(tag: number, contents: Buffer): Buffer {
  const n = contents.length;
  let length: Buffer;
  if (n < 0x80) length = Buffer.from([n]);
  else {
    const octets: number[] = [];
    for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) octets.unshift(rest % 256);
    length = Buffer.from([0x80 | octets.length, ...octets]);
  }
  return Buffer.concat([Buffer.from([tag]), length, contents]);
}

/** The DER encodings the certificate uses. */
export const der = {
  sequence: (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items)),
  set: (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items)),
  null: (): Buffer => Buffer.from([0x05, 0x00]),
  utf8: (text: string): Buffer => tlv(0x0c, Buffer.from(text, "utf8")),
  octetString: (bytes: Buffer): Buffer => tlv(0x04, bytes),
  /** Whole octets only: the unused-bits count is 0. */
  bitString: (bytes: Buffer): Buffer => tlv(0x03, Buffer.concat([Buffer.from([0]), bytes])),
  /** [n] EXPLICIT: a constructed context-specific wrapper around one element. */
  explicit: (n: number, inner: Buffer): Buffer => tlv(0xa0 | n, inner),

  /** A non-negative integer from its big-endian bytes: minimal, with a 0 octet where the top bit is set. */
  integer(magnitude: Buffer): Buffer {
    let i = 0;
    while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
    const bytes = magnitude.subarray(i);
    const contents =
      bytes.length === 0 || bytes[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes;
    return tlv(0x02, contents);
  },

  oid(dotted: string): Buffer {
    const arcs = dotted.split(".").map(Number);
    const [first, second, ...rest] = arcs;
    if (first === undefined || second === undefined || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) {
      throw new Error(`DER: "${dotted}" is not an object identifier`);
    }
    const octets = [first * 40 + second];
    for (const arc of rest) {
      const base128 = [arc & 0x7f];
      for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) base128.unshift(0x80 | (v & 0x7f));
      octets.push(...base128);
    }
    return tlv(0x06, Buffer.from(octets));
  },

  /** UTCTime YYMMDDHHMMSSZ: the form efs-utils uses for the SigV4 date. Years 1950..2049 only. */
  utcTime(date: Date): Buffer {
    const year = date.getUTCFullYear();
    if (year < 1950 || year > 2049) throw new Error(`DER: UTCTime cannot hold the year ${year}`);
    return tlv(0x17, Buffer.from(`${compactUtc(date).slice(2)}Z`, "ascii"));
  },

  /** A certificate validity time: UTCTime until 2049, GeneralizedTime after, as RFC 5280 says. */
  time(date: Date): Buffer {
    const year = date.getUTCFullYear();
    if (year >= 1950 && year <= 2049) return der.utcTime(date);
    return tlv(0x18, Buffer.from(`${compactUtc(date)}Z`, "ascii"));
  },
};

/** YYYYMMDDHHMMSS in UTC. */
function compactUtc(date: Date): string {
  return date
    .toISOString()
    .replace(/\.\d{3}Z$/, "")
    .replace(/[-:T]/g, "");
}

// --- SigV4 of Action=Connect (certificate_utils.py create_canonical_request and friends) ---

export interface EfsConnectSigning {
  iam: IamCredentials;
  fileSystemId: string;
  /** SHA-1 hex of the certificate's public key. */
  publicKeyHash: string;
  now: Date;
}

export interface EfsConnectSignature {
  canonicalRequest: string;
  stringToSign: string;
  /** 64 lowercase hex characters. */
  signature: string;
}

/** The SigV4 signature EFS checks for an `iam` mount: a presigned GET of Action=Connect, host = the fs id. */
export function efsConnectSignature(input: EfsConnectSigning): EfsConnectSignature {
  const { iam, now } = input;
  const { dateTime, date } = sigv4Dates(now);
  const scope = `${date}/${iam.region}/${EFS_SIGV4.service}/aws4_request`;
  const canonicalRequest = efsCanonicalRequest(input);
  const stringToSign = [EFS_SIGV4.algorithm, dateTime, scope, sha256Hex(canonicalRequest)].join("\n");
  const signingKey = [date, iam.region, EFS_SIGV4.service, "aws4_request"].reduce<Buffer>(
    (key, part) => hmac(key, part),
    Buffer.from(`AWS4${iam.secretAccessKey}`, "utf8"),
  );
  return { canonicalRequest, stringToSign, signature: hmac(signingKey, stringToSign).toString("hex") };
}

/** GET / ?query, one signed header `host:<fs id>`, an empty body. */
export function efsCanonicalRequest(input: EfsConnectSigning): string {
  const host = `host:${input.fileSystemId}\n`;
  return ["GET", "/", efsCanonicalQuery(input), host, "host", sha256Hex("")].join("\n");
}

/** The query parameters sorted by name, values escaped as Python's quote_plus does. */
export function efsCanonicalQuery(input: EfsConnectSigning): string {
  const { iam } = input;
  const { dateTime, date } = sigv4Dates(input.now);
  const params: Record<string, string> = {
    Action: "Connect",
    PublicKeyHash: quotePlus(input.publicKeyHash),
    "X-Amz-Algorithm": EFS_SIGV4.algorithm,
    "X-Amz-Credential": quotePlus(
      `${iam.accessKeyId}/${date}/${iam.region}/${EFS_SIGV4.service}/aws4_request`,
    ),
    "X-Amz-Date": quotePlus(dateTime),
    "X-Amz-Expires": String(EFS_SIGV4.expiresSeconds),
    "X-Amz-SignedHeaders": "host",
  };
  if (iam.sessionToken) params["X-Amz-Security-Token"] = quotePlus(iam.sessionToken);
  return Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join("&");
}

/** Python's urllib.parse.quote_plus: only letters, digits and `_.-~` stay; a space becomes `+`. */
export function quotePlus(text: string): string {
  return encodeURIComponent(text)
    .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
    .replace(/%20/g, "+");
}

/** SigV4's two date forms: 20260102T030405Z and 20260102. */
function sigv4Dates(now: Date): { dateTime: string; date: string } {
  const compact = compactUtc(now);
  return { dateTime: `${compact.slice(0, 8)}T${compact.slice(8)}Z`, date: compact.slice(0, 8) };
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac("sha256", key).update(text, "utf8").digest();
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}
