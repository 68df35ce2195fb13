import { readFile } from "node:fs/promises";
import { request as httpRequestOf } from "node:http";
import type { Options } from "./config.ts";
import type { Logger } from "./log.ts";

/** What the node (and, for the region, the controller) needs to know about the instance it runs on. */
export interface InstanceMetadata {
  instanceId: string;
  instanceType: string;
  zone: string;
  region: string;
  /** Network interfaces attached (they share the Nitro attachment limit with EBS volumes). */
  networkInterfaces?: number;
  /** Block devices from the instance's launch mapping (root and other non-CSI volumes). */
  blockDevices?: number;
  source: "imds" | "kubernetes" | "flags";
}

export interface MetadataSources {
  /** IMDS base URL; default from AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254. */
  imdsEndpoint?: string;
  imdsDisabled?: boolean;
  imdsTimeoutMs?: number;
  kubeNodeName?: string;
  nodeId?: string;
  zone?: string;
  instanceType?: string;
  region?: string;
}

export class MetadataError extends Error {
  constructor(attempts: string[]) {
    super(`could not determine the instance id, zone and region: ${attempts.join("; ")}`);
    this.name = "MetadataError";
  }
}

export const regionOfZone = (zone: string): string => zone.replace(/[a-z]$/, "");

/** Tries IMDSv2, then the Kubernetes Node object, then the flags; says what it tried when all fail. */
export async function resolveInstanceMetadata(sources: MetadataSources): Promise<InstanceMetadata> {
  const attempts: string[] = [];
  const env = process.env;
  const imdsEndpoint =
    sources.imdsEndpoint ?? env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? "http://169.254.169.254";
  if (sources.imdsDisabled ?? env.AWS_EC2_METADATA_DISABLED === "true") {
    attempts.push("instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)");
  } else {
    try {
      return await fromImds(imdsEndpoint, sources.imdsTimeoutMs ?? 2000);
    } catch (err) {
      attempts.push(`instance metadata at ${imdsEndpoint}: ${(err as Error).message}`);
    }
  }
  if (sources.kubeNodeName && env.KUBERNETES_SERVICE_HOST) {
    try {
      return await fromKubernetes(sources.kubeNodeName, env);
    } catch (err) {
      attempts.push(`Kubernetes Node ${sources.kubeNodeName}: ${(err as Error).message}`);
    }
  } else {
    attempts.push("Kubernetes: not in a cluster or CSI_NODE_NAME/--kube-node-name unset");
  }
  if (sources.nodeId && sources.zone) {
    return {
      instanceId: sources.nodeId,
      zone: sources.zone,
      region: sources.region ?? regionOfZone(sources.zone),
      instanceType: sources.instanceType ?? "",
      source: "flags",
    };
  }
  attempts.push("flags: --node-id and --zone are not both set");
  throw new MetadataError(attempts);
}

async function fromImds(endpoint: string, timeoutMs: number): Promise<InstanceMetadata> {
  const base = endpoint.replace(/\/+$/, "");
  const ask = (method: string, path: string, headers: Record<string, string>) =>
    httpRequest(`${base}${path}`, { method, headers, timeoutMs }).catch((err: Error) => {
      throw new Error(
        err.name === "TimeoutError" ? `no answer within ${timeoutMs} ms (hop limit?)` : err.message,
      );
    });
  const tokenResponse = await ask("PUT", "/latest/api/token", {
    "X-aws-ec2-metadata-token-ttl-seconds": "300",
  });
  if (tokenResponse.status !== 200) throw new Error(`token request answered HTTP ${tokenResponse.status}`);
  const token = tokenResponse.body;
  const get = async (path: string, optional = false): Promise<string | undefined> => {
    const res = await ask("GET", `/latest/meta-data/${path}`, { "X-aws-ec2-metadata-token": token });
    if (res.status === 200) return res.body.trim();
    if (optional && res.status === 404) return undefined;
    throw new Error(`${path} answered HTTP ${res.status}`);
  };
  const [instanceId, instanceType, zone, region, macs, devices] = await Promise.all([
    get("instance-id"),
    get("instance-type"),
    get("placement/availability-zone"),
    get("placement/region", true),
    get("network/interfaces/macs/", true),
    get("block-device-mapping/", true),
  ]);
  const count = (list: string | undefined) =>
    list ? list.split("\n").filter((l) => l.trim() !== "").length : undefined;
  return {
    instanceId: instanceId!,
    instanceType: instanceType!,
    zone: zone!,
    region: region ?? regionOfZone(zone!),
    networkInterfaces: count(macs),
    // "ami" and "root" name the same root device; "ebsN" entries are extra launch volumes.
    blockDevices: devices
      ? devices.split("\n").filter((d) => /^(root|ebs\d+)$/.test(d.trim())).length
      : undefined,
    source: "imds",
  };
}

interface KubeNode {
  spec?: { providerID?: string };
  metadata?: { labels?: Record<string, string> };
}

async function fromKubernetes(nodeName: string, env: NodeJS.ProcessEnv): Promise<InstanceMetadata> {
  const sa = "/var/run/secrets/kubernetes.io/serviceaccount";
  const [token, ca] = await Promise.all([readFile(`${sa}/token`, "utf8"), readFile(`${sa}/ca.crt`)]);
  const host = env.KUBERNETES_SERVICE_HOST ?? "";
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${env.KUBERNETES_SERVICE_PORT ?? 443}`;
  const res = await httpRequest(`${server}/api/v1/nodes/${encodeURIComponent(nodeName)}`, {
    method: "GET",
    headers: { authorization: `Bearer ${token.trim()}`, accept: "application/json" },
    ca,
    timeoutMs: 5000,
  }).catch((err: Error) => {
    throw new Error(err.name === "TimeoutError" ? "API server did not answer within 5 s" : err.message);
  });
  if (res.status !== 200) throw new Error(`API server answered HTTP ${res.status}`);
  let node: KubeNode;
  try {
    node = JSON.parse(res.body) as KubeNode;
  } catch {
    throw new Error("API server answered with something other than JSON");
  }
  // providerID: aws:///us-east-1a/i-0123456789abcdef0
  const match = /^aws:\/\/\/([^/]+)\/(i-[0-9a-f]+)$/.exec(node.spec?.providerID ?? "");
  if (!match)
    throw new Error(`spec.providerID "${node.spec?.providerID ?? ""}" is not aws:///<zone>/<instance-id>`);
  const labels = node.metadata?.labels ?? {};
  const zone = labels["topology.kubernetes.io/zone"] ?? match[1]!;
  return {
    instanceId: match[2]!,
    zone,
    region: labels["topology.kubernetes.io/region"] ?? regionOfZone(zone),
    instanceType: labels["node.kubernetes.io/instance-type"] ?? "",
    source: "kubernetes",
  };
}

/** Where the plugin runs: its instance (a controller given its region may not know it), its region. */
export interface PluginLocation {
  metadata: InstanceMetadata | undefined;
  region: string;
}

/**
 * Where the plugin runs. A node must know its instance; a controller needs only the region, so
 * it asks instance metadata only when no region was given.
 */
export async function locatePlugin(options: Options, log: Logger): Promise<PluginLocation> {
  let metadata: InstanceMetadata | undefined;
  if (options.mode !== "controller" || !options.region) {
    metadata = await resolveInstanceMetadata({
      kubeNodeName: options.kubeNodeName,
      nodeId: options.nodeId,
      zone: options.zone,
      instanceType: options.instanceType,
      region: options.region,
    });
    log.info({ ...metadata }, "instance metadata");
  }
  return { metadata, region: options.region ?? metadata!.region };
}

/** Above the API server's largest object (etcd's 1.5 MiB), far above any metadata answer. */
const MAX_BODY_CHARS = 4 * 1024 * 1024;

/**
 * One HTTP(S) request with a time limit, body as text (cut at MAX_BODY_CHARS). Node's http module
 * rather than fetch: fetch's implementation (undici) is loaded on first use and would cost every
 * node plugin megabytes of memory and tens of milliseconds of start-up for the few requests made
 * here (instance metadata, else the Kubernetes Node).
 */
async function httpRequest(
  url: string,
  o: { method: string; headers: Record<string, string>; timeoutMs: number; ca?: Buffer },
): Promise<{ status: number; body: string }> {
  // https (and TLS with it) only for the Kubernetes API, the fallback: not loaded otherwise.
  const send = url.startsWith("https:")
    ? (process.getBuiltinModule("node:https") as typeof import("node:https")).request
    : httpRequestOf;
  return new Promise((resolve, reject) => {
    const req = send(url, { method: o.method, headers: o.headers, ...(o.ca ? { ca: o.ca } : {}) }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (body.length < MAX_BODY_CHARS) body += chunk;
      });
      res.on("end", () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body });
      });
      res.on("error", reject);
    });
    // The whole exchange, not only a silent socket, is bounded.
    const timer = setTimeout(() => {
      const err = new Error(`no answer within ${o.timeoutMs} ms`);
      err.name = "TimeoutError";
      req.destroy(err);
    }, o.timeoutMs);
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end();
  });
}
