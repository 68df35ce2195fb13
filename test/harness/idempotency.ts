// ClientToken idempotency as EC2 and EFS implement it and moto does not: the first successful
// create is remembered and replayed for the same token and parameters.
import { createHash } from "node:crypto";
import { type AwsCall, awsError, type WireResponse } from "./aws-request.ts";
import { createKeyedSerializer } from "./serialize.ts";

interface Remembered {
  fingerprint: string;
  response: WireResponse;
}

export interface IdempotencyMemory {
  /** Runs `execute` unless the call's token was already used; calls with one token never overlap. */
  run(call: AwsCall, region: string, execute: () => Promise<WireResponse>): Promise<WireResponse>;
  clear(): void;
}

export function createIdempotencyMemory(): IdempotencyMemory {
  const remembered = new Map<string, Remembered>();
  const serialized = createKeyedSerializer();

  return {
    run(call, region, execute) {
      const token = tokenedCreate(call);
      if (!token) return execute();
      const key = `${region}/${call.action}/${token.clientToken}`;
      return serialized(key, async () => {
        const earlier = remembered.get(key);
        if (earlier) {
          return earlier.fingerprint === token.fingerprint
            ? earlier.response
            : mismatch(call, token.clientToken, earlier.response);
        }
        const response = await execute();
        // Failed creates do not use up the token, so a retry after a validation error may succeed.
        if (response.status < 300) remembered.set(key, { fingerprint: token.fingerprint, response });
        return response;
      });
    },
    clear() {
      remembered.clear();
    },
  };
}

/** Token and a hash of every other parameter, for the creates that take a ClientToken. */
function tokenedCreate(call: AwsCall): { clientToken: string; fingerprint: string } | undefined {
  if (call.service === "ec2" && (call.action === "CreateVolume" || call.action === "CopyVolumes")) {
    const clientToken = call.params.get("ClientToken");
    if (!clientToken) return undefined;
    return { clientToken, fingerprint: sha256(canonicalJson(ec2Parameters(call.params))) };
  }
  if (call.service === "efs" && call.action === "CreateAccessPoint") {
    const { ClientToken, ...others } = call.body;
    if (typeof ClientToken !== "string" || ClientToken === "") return undefined;
    return { clientToken: ClientToken, fingerprint: sha256(canonicalJson(others)) };
  }
  return undefined;
}

function mismatch(call: AwsCall, clientToken: string, earlier: WireResponse): WireResponse {
  const message = `The client token '${clientToken}' was already used with different parameters.`;
  if (call.service === "ec2") return awsError("ec2", 400, "IdempotentParameterMismatch", message);
  // EFS documents AccessPointAlreadyExists (409) for a reused token, carrying the existing access point.
  const accessPointId = String(JSON.parse(earlier.body.toString()).AccessPointId ?? "");
  return awsError("efs", 409, "AccessPointAlreadyExists", message, { AccessPointId: accessPointId });
}

/** Query parameters that are not part of what a create asks for: protocol, token, query-string auth. */
const notParameters = new Set(["Action", "Version", "ClientToken"]);
const authParameter = /^(X-Amz-|AWSAccessKeyId$|Signature|Timestamp$|Expires$)/;
/** Numbered lists whose order EC2 ignores: the tags of a resource, and tag specifications (one per type). */
const unorderedLists = new Set(["TagSpecification", "Tag"]);

type QueryValue = string | { [member: string]: QueryValue };

/**
 * The parameters as EC2 reads them: `TagSpecification.1.Tag.2.Key=k` becomes nested values, numbered
 * lists become arrays (sorted where EC2 ignores the order), and auth and protocol parameters are dropped.
 */
function ec2Parameters(params: URLSearchParams): unknown {
  // Without a prototype, a parameter named __proto__ is only a name.
  const root: { [member: string]: QueryValue } = Object.create(null);
  for (const [name, value] of params) {
    if (notParameters.has(name) || authParameter.test(name)) continue;
    const path = name.split(".");
    let node = root;
    for (const member of path.slice(0, -1)) {
      if (typeof node[member] !== "object") node[member] = Object.create(null);
      node = node[member] as { [member: string]: QueryValue };
    }
    node[path.at(-1)!] = value;
  }
  return listsAsArrays(root, "");
}

function listsAsArrays(value: QueryValue, name: string): unknown {
  if (typeof value === "string") return value;
  const members = Object.keys(value);
  if (members.length > 0 && members.every((member) => /^\d+$/.test(member))) {
    const items = members
      .sort((a, b) => Number(a) - Number(b))
      .map((member) => listsAsArrays(value[member]!, name));
    if (!unorderedLists.has(name)) return items;
    const keyed = items.map((item) => [canonicalJson(item), item] as const);
    return keyed.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, item]) => item);
  }
  return Object.fromEntries(members.map((member) => [member, listsAsArrays(value[member]!, member)]));
}

/** JSON with object keys sorted at every level, so equal values always hash the same. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
