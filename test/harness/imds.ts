// A fake EC2 instance metadata service that, like a hardened instance, speaks IMDSv2 only.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface InstanceMetadata {
  instanceId: string;
  instanceType: string;
  zone: string;
  region: string;
  /** Network interfaces attached to the instance. Default 1. */
  enis?: number;
  /** Block device mapping name -> device. Default { ami: "xvda", root: "/dev/xvda" }. */
  blockDevices?: Record<string, string>;
}

export interface Imds {
  /** For AWS_EC2_METADATA_SERVICE_ENDPOINT. */
  url: string;
  /** The served metadata; changes show in later answers (e.g. more ENIs or block devices). */
  metadata: InstanceMetadata;
  stop(): Promise<void>;
}

interface Answer {
  status: number;
  body?: string;
  headers?: Record<string, string>;
}

const MAX_TOKEN_TTL_SECONDS = 21_600;
const defaultBlockDevices: Record<string, string> = { ami: "xvda", root: "/dev/xvda" };

export async function startImds(metadata: InstanceMetadata): Promise<Imds> {
  const tokens = new Map<string, number>(); // token -> expiry (ms since epoch)

  function answer(req: IncomingMessage): Answer {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (req.method === "PUT" && path === "/latest/api/token") {
      const ttl = Number(req.headers["x-aws-ec2-metadata-token-ttl-seconds"]);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TOKEN_TTL_SECONDS) return { status: 400 };
      const token = randomBytes(32).toString("base64url");
      tokens.set(token, Date.now() + ttl * 1000);
      return { status: 200, body: token, headers: { "x-aws-ec2-metadata-token-ttl-seconds": String(ttl) } };
    }
    if (req.method !== "GET" && req.method !== "HEAD") return { status: 405 };
    const expiry = tokens.get(String(req.headers["x-aws-ec2-metadata-token"] ?? ""));
    if (expiry === undefined || expiry < Date.now()) return { status: 401 };
    const body = lookup(metadata, path);
    return body === undefined ? { status: 404 } : { status: 200, body };
  }

  const server = createServer((req, res) => reply(res, answer(req)));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    metadata,
    stop() {
      server.closeAllConnections();
      return new Promise((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
    },
  };
}

function lookup(metadata: InstanceMetadata, path: string): string | undefined {
  const blockDevices = metadata.blockDevices ?? defaultBlockDevices;
  const macs = Array.from({ length: metadata.enis ?? 1 }, (_, index) => macAddress(index));
  const documents: Record<string, string> = {
    "/latest/meta-data/instance-id": metadata.instanceId,
    "/latest/meta-data/instance-type": metadata.instanceType,
    "/latest/meta-data/placement/availability-zone": metadata.zone,
    "/latest/meta-data/placement/region": metadata.region,
    "/latest/meta-data/block-device-mapping/": Object.keys(blockDevices).join("\n"),
    "/latest/meta-data/network/interfaces/macs/": macs.map((mac) => `${mac}/`).join("\n"),
    "/latest/dynamic/instance-identity/document": JSON.stringify(
      {
        accountId: "123456789012",
        architecture: "x86_64",
        availabilityZone: metadata.zone,
        imageId: "ami-12c6146b",
        instanceId: metadata.instanceId,
        instanceType: metadata.instanceType,
        pendingTime: "2026-01-01T00:00:00Z",
        privateIp: "10.0.0.10",
        region: metadata.region,
        version: "2017-09-30",
      },
      null,
      2,
    ),
  };
  const mapping = /^\/latest\/meta-data\/block-device-mapping\/([^/]+)$/.exec(path);
  if (mapping) return Object.hasOwn(blockDevices, mapping[1]!) ? blockDevices[mapping[1]!] : undefined;
  return Object.hasOwn(documents, path) ? documents[path] : undefined;
}

/** Stable, locally administered MAC addresses: 02:00:00:00:00:01, ...:02, ... */
function macAddress(index: number): string {
  const hex = (index + 1).toString(16).padStart(10, "0");
  return `02:${hex.match(/../g)!.join(":")}`;
}

function reply(res: ServerResponse, { status, body = "", headers = {} }: Answer): void {
  const contentType = body.startsWith("{") ? "application/json" : "text/plain";
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}
