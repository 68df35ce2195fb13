// An HTTP proxy in front of moto that adds what real AWS does and moto lacks (ClientToken
// idempotency, VolumeInUse) and injects faults (throttling, latency, 5xx, lost answers).
import { createServer, type IncomingHttpHeaders, type IncomingMessage, request } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type AwsCall,
  awsError,
  internalError,
  recognizeCall,
  signingScope,
  throttlingError,
  topLevelItems,
  type WireResponse,
} from "./aws-request.ts";
import { type CopyEmulation, copyVolumes, showSources } from "./copy-volumes.ts";
import { createSnapshots } from "./create-snapshots.ts";
import { createIdempotencyMemory } from "./idempotency.ts";
import { createKeyedSerializer } from "./serialize.ts";
import {
  afterCreateSnapshot,
  createSnapshotEmulation,
  enableFastSnapshotRestores,
  lockSnapshot,
  type SnapshotEmulation,
  showPending,
} from "./snapshots.ts";
import { createThrottle, type ThrottleConfig } from "./throttle.ts";
import { describeVolumeStatus, type VolumeStatusFault } from "./volume-status.ts";

export type { BucketConfig, ThrottleConfig } from "./throttle.ts";
export type { VolumeStatusFault } from "./volume-status.ts";

export interface Faults {
  /** Replay creates with a known ClientToken (EC2 CreateVolume, EFS CreateAccessPoint). Default on. */
  clientTokenIdempotency: boolean;
  /** AttachVolume of an attached volume fails with VolumeInUse instead of moving it. Default on. */
  volumeInUse: boolean;
  /** Refused calls get RequestLimitExceeded (EC2, 503) or ThrottlingException (EFS, 429). */
  throttle: ThrottleConfig | undefined;
  /** Delay before a call is forwarded: for every call, or per action name. */
  latencyMs: number | Record<string, number> | undefined;
  /** Fraction (0..1) of calls answered with HTTP 500 InternalError (EFS: InternalServerError): for every call, or per action name. */
  errorRate: number | Record<string, number>;
  /** Share (0..1) of those errors whose call reached moto first: the operation happened, its answer was lost. */
  lostAnswerShare: number;
  /**
   * A plain DetachVolume is not passed on: the volume shows "detaching" in DescribeVolumes until a
   * DetachVolume with Force=true arrives, as with an instance that went away. Default off.
   */
  stuckDetach: boolean;
}

export interface Hooks {
  onAttach?: (volumeId: string, instanceId: string, device: string) => void | Promise<void>;
  onDetach?: (volumeId: string, instanceId: string) => void | Promise<void>;
  onModify?: (volumeId: string, sizeGiB: number | undefined) => void | Promise<void>;
  onDelete?: (volumeId: string) => void | Promise<void>;
  /** After CreateVolume; snapshotId when the volume was restored from a snapshot. */
  onCreateVolume?: (volumeId: string, snapshotId: string | undefined) => void | Promise<void>;
  onSnapshot?: (volumeId: string, snapshotId: string) => void | Promise<void>;
  onDeleteSnapshot?: (snapshotId: string) => void | Promise<void>;
  /** After CopyVolumes (answered by the proxy): the copy starts as the source's data. */
  onCopyVolume?: (copyId: string, sourceId: string) => void | Promise<void>;
}

export interface FaultProxy {
  url: string;
  /** Mutable: tests switch faults on and off between calls. */
  faults: Faults;
  /** Mutable: called after moto answered 2xx, awaited before the client gets the answer. */
  hooks: Hooks;
  /**
   * Mutable: EC2 status checks by volume id for DescribeVolumeStatus, which the proxy answers
   * itself (moto does not implement it). A volume not listed reports "ok".
   */
  volumeStatuses: Map<string, VolumeStatusFault>;
  /**
   * Mutable: lifecycle states by EFS file system, access point or mount target id, shown in the
   * Describe answers instead of moto's, which are always "available" (e.g. "error", "deleting").
   */
  efsStates: Map<string, string>;
  /** Mutable: snapshot behaviour moto lacks (pending time, fast restore, locks); see snapshots.ts. */
  snapshots: SnapshotEmulation;
  /** Calls received per action name (EC2 Action or EFS operation), refused ones included. */
  stats(): Record<string, number>;
  resetStats(): void;
  /** Faults back to defaults, hooks removed, remembered ClientTokens, throttle buckets and stats cleared. */
  reset(): void;
  stop(): Promise<void>;
}

export function defaultFaults(): Faults {
  return {
    clientTokenIdempotency: true,
    volumeInUse: true,
    throttle: undefined,
    latencyMs: undefined,
    errorRate: 0,
    lostAnswerShare: 0.5,
    stuckDetach: false,
  };
}

interface Incoming {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export async function startFaultProxy(options: {
  target: string;
  /** The account the fake gives the fake credentials: what EC2 means by owner "self". */
  account: string;
}): Promise<FaultProxy> {
  const target = new URL(options.target);
  const { account } = options;
  const faults = defaultFaults();
  const hooks: Hooks = {};
  const counts = new Map<string, number>();
  const idempotency = createIdempotencyMemory();
  const throttle = createThrottle();
  const serializedPerVolume = createKeyedSerializer();
  /** Volume id -> instance id of detaches held back by faults.stuckDetach. */
  const stuckDetaches = new Map<string, string>();
  const volumeStatuses = new Map<string, VolumeStatusFault>();
  const efsStates = new Map<string, string>();
  const snapshots = createSnapshotEmulation();
  const copies: CopyEmulation = { sources: new Map() };

  async function answer(incoming: Incoming): Promise<WireResponse> {
    const call = recognizeCall(incoming.method, incoming.url, incoming.headers, incoming.body);
    if (!call) return forward(target, incoming);
    counts.set(call.action, (counts.get(call.action) ?? 0) + 1);
    if (throttle.refuses(call.action, faults.throttle)) return throttlingError(call);
    const errorRate =
      typeof faults.errorRate === "number" ? faults.errorRate : (faults.errorRate[call.action] ?? 0);
    if (Math.random() < errorRate) {
      if (Math.random() < faults.lostAnswerShare) await perform(call, incoming).catch(() => undefined);
      return internalError(call);
    }
    return perform(call, incoming);
  }

  async function perform(call: AwsCall, incoming: Incoming): Promise<WireResponse> {
    const latency = typeof faults.latencyMs === "number" ? faults.latencyMs : faults.latencyMs?.[call.action];
    if (latency) await sleep(latency);
    if (!faults.clientTokenIdempotency) return execute(call, incoming);
    const region = signingScope(incoming.headers)?.region ?? "";
    return idempotency.run(call, region, () => execute(call, incoming));
  }

  async function execute(call: AwsCall, incoming: Incoming): Promise<WireResponse> {
    if (call.service === "ec2" && call.action === "DetachVolume") {
      const volumeId = call.params.get("VolumeId") ?? "";
      if (call.params.get("Force") === "true") stuckDetaches.delete(volumeId);
      else if (faults.stuckDetach || stuckDetaches.has(volumeId)) {
        stuckDetaches.set(volumeId, call.params.get("InstanceId") ?? "");
        return detachingAnswer(volumeId, call.params.get("InstanceId") ?? "");
      }
    }
    if (call.service === "ec2" && call.action === "DescribeVolumeStatus") {
      return describeVolumeStatus(call.params, volumeStatuses, (query) => askMoto(target, incoming, query));
    }
    if (call.service === "ec2" && call.action === "DescribeSnapshots") {
      if (!call.params.has("Owner.1")) return showPending(await forward(target, incoming), snapshots);
      // Filtered by moto itself (owner-id), not after it: its answer with every built-in AMI
      // snapshot is megabytes, and ListSnapshots asks for it on every call.
      const body = Buffer.from(ownersAsFilter(call.params, account).toString());
      return showPending(
        onlyOwners(await forward(target, { ...incoming, body }), call.params, account),
        snapshots,
      );
    }
    if (call.service === "ec2" && call.action === "EnableFastSnapshotRestores") {
      return enableFastSnapshotRestores(call.params, await regionZones(target, incoming), snapshots);
    }
    if (call.service === "ec2" && call.action === "CreateSnapshots") {
      return createSnapshots(
        call.params,
        (query) => askMoto(target, incoming, query),
        async (volumeId, snapshotId) => {
          await hooks.onSnapshot?.(volumeId, snapshotId);
        },
        snapshots.pendingMs,
        snapshots.readyAt,
      );
    }
    if (call.service === "ec2" && call.action === "LockSnapshot") return lockSnapshot(call.params, snapshots);
    if (
      call.service === "ec2" &&
      call.action === "DescribeVolumes" &&
      (stuckDetaches.size > 0 || copies.sources.size > 0)
    ) {
      return showSources(showDetaching(await forward(target, incoming), stuckDetaches), copies);
    }
    if (call.service === "ec2" && call.action === "CopyVolumes") {
      const answer = await copyVolumes(call.params, (query) => askMoto(target, incoming, query), copies);
      if (answer.status < 300) {
        const copyId = xmlValue(answer.body.toString(), "volumeId") ?? "";
        try {
          await hooks.onCopyVolume?.(copyId, call.params.get("SourceVolumeId") ?? "");
        } catch (error) {
          return internalError(call, `fault proxy hook failed after the copy was made: ${String(error)}`);
        }
      }
      return answer;
    }
    const response =
      faults.volumeInUse && call.service === "ec2" && call.action === "AttachVolume"
        ? await attachUnlessInUse(call.params.get("VolumeId") ?? "", incoming)
        : await forward(target, incoming);
    if (response.status >= 300) return response;
    if (call.service === "efs" && efsStates.size > 0) return showEfsStates(call.action, response, efsStates);
    try {
      await runHooks(hooks, call, response);
    } catch (error) {
      return internalError(call, `fault proxy hook failed after moto answered: ${String(error)}`);
    }
    if (call.service === "ec2" && call.action === "CreateSnapshot")
      return afterCreateSnapshot(response, snapshots);
    return response;
  }

  /** Checks and attaches as one step per volume, so that of two racing attaches one sees VolumeInUse. */
  function attachUnlessInUse(volumeId: string, incoming: Incoming): Promise<WireResponse> {
    const region = signingScope(incoming.headers)?.region ?? "";
    return serializedPerVolume(`${region}/${volumeId}`, async () => {
      const attachedTo = await attachedInstance(target, incoming, volumeId);
      if (!attachedTo) return forward(target, incoming);
      const message = `${volumeId} is already attached to an instance (${attachedTo})`;
      return awsError("ec2", 400, "VolumeInUse", message);
    });
  }

  const server = createServer((req, res) => {
    readIncoming(req)
      .then(answer)
      .catch((error: unknown) => ({
        status: 502,
        headers: { "content-type": "text/plain" },
        body: Buffer.from(`fault proxy: ${String(error)}`),
      }))
      .then((response) => {
        res.writeHead(response.status, { ...response.headers, "content-length": response.body.length });
        res.end(response.body);
      })
      .catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    faults,
    hooks,
    volumeStatuses,
    efsStates,
    snapshots,
    stats: () => Object.fromEntries(counts),
    resetStats: () => counts.clear(),
    reset() {
      Object.assign(faults, defaultFaults());
      for (const name of Object.keys(hooks) as (keyof Hooks)[]) delete hooks[name];
      idempotency.clear();
      throttle.reset();
      stuckDetaches.clear();
      volumeStatuses.clear();
      efsStates.clear();
      snapshots.reset();
      copies.sources.clear();
      counts.clear();
    },
    stop() {
      server.closeAllConnections();
      return new Promise((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
    },
  };
}

async function runHooks(hooks: Hooks, call: AwsCall, response: WireResponse): Promise<void> {
  if (call.service !== "ec2") return;
  const volumeId = call.params.get("VolumeId") ?? "";
  switch (call.action) {
    case "AttachVolume":
      return hooks.onAttach?.(volumeId, call.params.get("InstanceId") ?? "", call.params.get("Device") ?? "");
    case "DetachVolume": {
      // InstanceId is optional in DetachVolume; the answer always names the instance.
      const instanceId =
        call.params.get("InstanceId") ?? xmlValue(response.body.toString(), "instanceId") ?? "";
      return hooks.onDetach?.(volumeId, instanceId);
    }
    case "ModifyVolume": {
      const size = call.params.get("Size");
      return hooks.onModify?.(volumeId, size ? Number(size) : undefined);
    }
    case "DeleteVolume":
      return hooks.onDelete?.(volumeId);
    case "CreateVolume": {
      const body = response.body.toString();
      return hooks.onCreateVolume?.(
        xmlValue(body, "volumeId") ?? "",
        call.params.get("SnapshotId") || undefined,
      );
    }
    case "CreateSnapshot":
      return hooks.onSnapshot?.(volumeId, xmlValue(response.body.toString(), "snapshotId") ?? "");
    case "DeleteSnapshot":
      return hooks.onDeleteSnapshot?.(call.params.get("SnapshotId") ?? "");
  }
}

/** The instance a volume is attached to, asked of moto directly in the caller's region. */
async function attachedInstance(
  target: URL,
  incoming: Incoming,
  volumeId: string,
): Promise<string | undefined> {
  const query = new URLSearchParams({
    Action: "DescribeVolumes",
    Version: "2016-11-15",
    "VolumeId.1": volumeId,
  });
  const answer = await askMoto(target, incoming, query);
  if (answer.status !== 200) return undefined;
  const attachments = /<attachmentSet>([\s\S]*?)<\/attachmentSet>/.exec(answer.body.toString())?.[1] ?? "";
  return xmlValue(attachments, "instanceId");
}

/** The region's zone names, as moto lists them for the caller. */
async function regionZones(target: URL, incoming: Incoming): Promise<string[]> {
  const answer = await askMoto(
    target,
    incoming,
    new URLSearchParams({ Action: "DescribeAvailabilityZones", Version: "2016-11-15" }),
  );
  return [...answer.body.toString().matchAll(/<zoneName>([^<]*)<\/zoneName>/g)].map((m) => m[1]!);
}

/** An EC2 query sent to moto directly, in the region and account of the incoming call. */
function askMoto(target: URL, incoming: Incoming, query: URLSearchParams): Promise<WireResponse> {
  return forward(target, {
    method: "POST",
    url: "/",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      authorization: incoming.headers.authorization ?? "",
    },
    body: Buffer.from(query.toString()),
  });
}

function detachingAnswer(volumeId: string, instanceId: string): WireResponse {
  const xml =
    '<DetachVolumeResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">' +
    `<requestId>fault-proxy-stuck-detach</requestId><volumeId>${volumeId}</volumeId>` +
    `<instanceId>${instanceId}</instanceId><status>detaching</status></DetachVolumeResponse>`;
  return { status: 200, headers: { "content-type": "text/xml" }, body: Buffer.from(xml) };
}

/** Rewrites the held-back volumes' attachments in a DescribeVolumes answer from attached to detaching. */
function showDetaching(response: WireResponse, stuck: Map<string, string>): WireResponse {
  if (response.status !== 200) return response;
  const xml = response.body
    .toString()
    .replace(/<attachmentSet>[\s\S]*?<\/attachmentSet>/g, (set) =>
      [...stuck.keys()].some((id) => set.includes(`<volumeId>${id}</volumeId>`))
        ? set.replace(/<status>attached<\/status>/g, "<status>detaching</status>")
        : set,
    );
  return { ...response, body: Buffer.from(xml) };
}

/** The EFS Describe answers, the list each holds and the id field of its items. */
const EFS_LISTS: Record<string, [list: string, id: string]> = {
  DescribeFileSystems: ["FileSystems", "FileSystemId"],
  DescribeAccessPoints: ["AccessPoints", "AccessPointId"],
  DescribeMountTargets: ["MountTargets", "MountTargetId"],
};

/** Rewrites LifeCycleState of the listed resources in an EFS Describe answer. */
function showEfsStates(action: string, response: WireResponse, states: Map<string, string>): WireResponse {
  const shape = EFS_LISTS[action];
  if (!shape) return response;
  const [list, idField] = shape;
  const body = JSON.parse(response.body.toString()) as Record<string, Record<string, unknown>[] | undefined>;
  for (const item of body[list] ?? []) {
    const state = states.get(String(item[idField]));
    if (state) item["LifeCycleState"] = state;
  }
  return { ...response, body: Buffer.from(JSON.stringify(body)) };
}

/** Owner.N (which moto ignores) as the filter owner-id (which it applies), "self" as the account. */
function ownersAsFilter(params: URLSearchParams, account: string): URLSearchParams {
  const out = new URLSearchParams();
  const owners: string[] = [];
  for (const [name, value] of params) {
    if (/^Owner\.\d+$/.test(name)) owners.push(value === "self" ? account : value);
    else out.append(name, value);
  }
  let n = 1;
  while (out.has(`Filter.${n}.Name`)) n++;
  out.set(`Filter.${n}.Name`, "owner-id");
  owners.forEach((owner, i) => {
    out.set(`Filter.${n}.Value.${i + 1}`, owner);
  });
  return out;
}

/**
 * DescribeSnapshots with OwnerIds: moto (LocalStack's EC2 too) ignores them and answers every snapshot it holds, among
 * them thousands of its built-in AMIs' snapshots owned by others. EC2 answers only the owners asked
 * for ("self": the caller's account), so the proxy leaves the others out.
 */
function onlyOwners(response: WireResponse, params: URLSearchParams, account: string): WireResponse {
  if (response.status !== 200) return response;
  const owners = new Set<string>();
  for (let n = 1; params.has(`Owner.${n}`); n++) {
    const owner = params.get(`Owner.${n}`) ?? "";
    owners.add(owner === "self" ? account : owner);
  }
  const xml = response.body.toString();
  const open = xml.indexOf("<snapshotSet>");
  const close = xml.lastIndexOf("</snapshotSet>");
  if (open < 0 || close < 0) return response;
  const kept = topLevelItems(xml.slice(open + "<snapshotSet>".length, close)).filter((item) =>
    owners.has(xmlValue(item, "ownerId") ?? ""),
  );
  const body = `${xml.slice(0, open)}<snapshotSet>${kept.join("")}</snapshotSet>${xml.slice(close + "</snapshotSet>".length)}`;
  return { ...response, body: Buffer.from(body) };
}

function xmlValue(xml: string, element: string): string | undefined {
  return new RegExp(`<${element}>([^<]*)</${element}>`).exec(xml)?.[1];
}

const hopByHop = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "host"]);

function forward(target: URL, incoming: Incoming): Promise<WireResponse> {
  const headers = Object.fromEntries(
    Object.entries(incoming.headers).filter(([name]) => !hopByHop.has(name)),
  );
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        host: target.hostname,
        port: target.port,
        method: incoming.method,
        path: incoming.url,
        headers: { ...headers, "content-length": incoming.body.length },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("error", reject);
        response.on("end", () => {
          const answerHeaders: Record<string, string> = {};
          for (const [name, value] of Object.entries(response.headers)) {
            if (value !== undefined && !hopByHop.has(name)) answerHeaders[name] = String(value);
          }
          resolve({
            status: response.statusCode ?? 502,
            headers: answerHeaders,
            body: Buffer.concat(chunks),
          });
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(incoming.body);
  });
}

async function readIncoming(req: IncomingMessage): Promise<Incoming> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return {
    method: req.method ?? "GET",
    url: req.url ?? "/",
    headers: req.headers,
    body: Buffer.concat(chunks),
  };
}
