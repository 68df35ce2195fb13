// A fake EC2 instance metadata service that, like a hardened instance, speaks IMDSv2 only.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { FAKE_AMI } from "./fake-aws.ts";

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
const PRIVATE_IP = "10.0.0.10";

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
    const body = lookup(metadataTree(metadata), path);
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

/** A metadata directory: each name holds a value or a sub-directory. */
interface Directory {
  [name: string]: string | Directory;
}

/** What the instance serves, built per request so that changes to `metadata` show. */
function metadataTree(metadata: InstanceMetadata): Directory {
  const macs = Array.from({ length: metadata.enis ?? 1 }, (_, index) => macAddress(index));
  const interfaces = macs.map((mac, index) => [mac, { "device-number": String(index), mac }] as const);
  // No outpost-arn: instances outside an Outpost answer 404 for it.
  return {
    latest: {
      "meta-data": {
        "ami-id": FAKE_AMI,
        "block-device-mapping": { ...(metadata.blockDevices ?? defaultBlockDevices) },
        "instance-id": metadata.instanceId,
        "instance-type": metadata.instanceType,
        "local-ipv4": PRIVATE_IP,
        mac: macs[0] ?? "",
        network: { interfaces: { macs: Object.fromEntries(interfaces) } },
        placement: { "availability-zone": metadata.zone, region: metadata.region },
      },
      dynamic: {
        "instance-identity": {
          document: JSON.stringify(
            {
              accountId: "123456789012",
              architecture: "x86_64",
              availabilityZone: metadata.zone,
              imageId: FAKE_AMI,
              instanceId: metadata.instanceId,
              instanceType: metadata.instanceType,
              pendingTime: "2026-01-01T00:00:00Z",
              privateIp: PRIVATE_IP,
              region: metadata.region,
              version: "2017-09-30",
            },
            null,
            2,
          ),
        },
      },
    },
  };
}

/**
 * A value, or a directory's listing (one name a line, sub-directories ending in "/"). As on EC2, a
 * directory answers with and without a trailing slash; a value answers only without one (the strict reading).
 */
function lookup(tree: Directory, path: string): string | undefined {
  const names = path.replace(/^\//, "").replace(/\/$/, "").split("/");
  let node: string | Directory = tree;
  for (const name of names) {
    if (typeof node === "string" || !Object.hasOwn(node, name)) return undefined;
    node = node[name]!;
  }
  if (typeof node === "string") return path.endsWith("/") ? undefined : node;
  return Object.entries(node)
    .map(([name, child]) => (typeof child === "string" ? name : `${name}/`))
    .join("\n");
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
