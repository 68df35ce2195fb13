import { runInCallScope } from "../call-scope.ts";
import { asTimeout, CsiError } from "../csi/errors.ts";
import type { CsiMethod, CsiServiceDefinition } from "../csi/proto.ts";
import { status, statusName } from "../csi/status.ts";
import { type Logger, redactSecrets } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { UnaryCall, UnaryHandler } from "./grpc.ts";
import type { InflightKeys } from "./inflight.ts";

/** What a service method gets besides its request. */
export interface RpcContext {
  requestId: string;
  log: Logger;
  /** Aborted when the caller cancels or its deadline passes: waits stop, retries finish the job. */
  signal: AbortSignal;
}

export type Method<Req = never, Res = unknown> = (req: Req, ctx: RpcContext) => Promise<Res>;

/**
 * A service implementation: an object (often a class instance) whose methods are named as in the
 * proto (CreateVolume, NodeStageVolume, ...). Methods it lacks are answered with UNIMPLEMENTED.
 */
export type ServiceImpl = object;

export interface RpcRuntime {
  log: Logger;
  inflight: InflightKeys;
  metrics: Metrics;
}

/** Calls that only read: they never wait for a busy volume and never make one busy. */
const READ_ONLY = new Set([
  "ValidateVolumeCapabilities",
  "ControllerGetVolume",
  "ListVolumes",
  "GetCapacity",
  "NodeGetVolumeStats",
  "NodeGetVolumeHealth",
  "NodeGetStorageHealth",
  "ControllerGetVolumeHealth",
  "ControllerListVolumeHealth",
  "ListSnapshots",
  "GetSnapshot",
  "GetVolumeGroupSnapshot",
]);

/**
 * Calls kubelet and the sidecars repeat on a timer (every volume's stats every minute, probes
 * every few seconds): a success is no news, so its "done" line is at debug. Failures keep theirs.
 */
const POLLED = new Set([
  "Probe",
  "GetPluginInfo",
  "GetPluginCapabilities",
  "ControllerGetCapabilities",
  "NodeGetCapabilities",
  "NodeGetVolumeStats",
  "NodeGetVolumeHealth",
  "NodeGetStorageHealth",
]);

/**
 * The in-flight key of a call: the name for CreateVolume, the volume id otherwise (with the
 * target path for publish calls, so that two pods of one volume do not turn each other away).
 */
export function inflightKey(method: string, req: Record<string, unknown>): string | undefined {
  if (READ_ONLY.has(method)) return undefined;
  const text = (field: string) =>
    typeof req[field] === "string" && req[field] !== "" ? req[field] : undefined;
  if (method === "CreateVolume") return text("name") && `name/${text("name")}`;
  // One call per snapshot name: EC2 CreateSnapshot has no ClientToken, the name tag stands in.
  if (method === "CreateSnapshot") return text("name") && `snapshot-name/${text("name")}`;
  if (method === "DeleteSnapshot") return text("snapshot_id") && `snapshot/${text("snapshot_id")}`;
  if (method === "CreateVolumeGroupSnapshot") return text("name") && `group-name/${text("name")}`;
  if (method === "DeleteVolumeGroupSnapshot") {
    return text("group_snapshot_id") && `group/${text("group_snapshot_id")}`;
  }
  const volumeId = text("volume_id");
  if (!volumeId) return undefined;
  if (method === "NodePublishVolume" || method === "NodeUnpublishVolume") {
    // By target alone: two calls on one target conflict whatever volume they name.
    return `target/${text("target_path") ?? ""}`;
  }
  return `${method.startsWith("Node") ? "node" : "controller"}/${volumeId}`;
}

/**
 * Request ids for the log: 8 hex digits, counting up from a random start, so that the calls of one
 * process never share one and a restart does not repeat the last run's. Not from node:crypto, which
 * an EBS node plugin would load for nothing else (a few milliseconds of start-up).
 */
let lastRequestId = Math.floor(Math.random() * 2 ** 32);
function nextRequestId(): string {
  lastRequestId = (lastRequestId + 1) % 2 ** 32;
  return lastRequestId.toString(16).padStart(8, "0");
}

/** Answers the call; a throw from the transport is logged, never allowed to end the process. */
function reply(send: () => void, logOf: () => Logger): void {
  try {
    send();
  } catch (err) {
    logOf().error({ err }, "could not send the reply");
  }
}

/**
 * What an aborted call answers: once its deadline passed (or its caller cancelled), that is the
 * outcome, whatever the aborted work threw on its way out (an AWS request "aborted", a wait cut
 * short); sidecars retry DEADLINE_EXCEEDED as "still in progress". Other failures are unchanged.
 */
export function abortedOutcome(caught: unknown, signal: AbortSignal): unknown {
  const reason: unknown = signal.aborted ? signal.reason : undefined;
  if (!(reason instanceof CsiError)) return caught;
  return new CsiError(
    reason.code,
    caught instanceof CsiError ? `${reason.message}; ${caught.message}` : reason.message,
  );
}

function shortMessage(err: unknown): { code: status; message: string; expected: boolean } {
  if (err instanceof CsiError) return { code: err.code, message: err.message, expected: true };
  const timedOut = asTimeout(err);
  if (timedOut) return { code: timedOut.code, message: timedOut.message, expected: true };
  return { code: status.INTERNAL, message: "internal error: see the plugin log", expected: false };
}

/**
 * Builds the gRPC handlers of one service, by path: every method of the definition is served, the
 * ones the implementation lacks with UNIMPLEMENTED. Each call gets a request id, a log line with
 * its method, duration and status code (at debug for a polled call that succeeded), secrets
 * redacted, and errors mapped to status codes.
 */
export function bindService(
  service: CsiServiceDefinition,
  impl: ServiceImpl,
  rt: RpcRuntime,
): Map<string, UnaryHandler> {
  const handlers = new Map<string, UnaryHandler>();
  for (const [method, def] of Object.entries(service)) {
    if (def.requestStream || def.responseStream) continue;
    const member = (impl as Record<string, unknown>)[method];
    const fn = typeof member === "function" ? (member.bind(impl) as Method<unknown, unknown>) : undefined;
    handlers.set(def.path, (call) => {
      void handleCall(method, def, fn, call, rt);
    });
  }
  return handlers;
}

async function handleCall(
  method: string,
  def: CsiMethod,
  fn: Method<unknown, unknown> | undefined,
  call: UnaryCall,
  rt: RpcRuntime,
): Promise<void> {
  const started = process.hrtime.bigint();
  const requestId = nextRequestId();
  // Made at the first line logged: most successful calls log none.
  let callLog: Logger | undefined;
  const logOf = (): Logger => {
    callLog ??= rt.log.child({ rid: requestId, method });
    return callLog;
  };
  const abort = new AbortController();
  // Only a call still being served is aborted (and the error, with its stack, is made only then).
  call.oncancel = () => abort.abort(new CsiError(status.CANCELLED, "the caller cancelled the call"));
  // Host calls and waits stop at the caller's deadline, whether or not the transport says so.
  const msLeft = call.deadline === undefined ? Number.POSITIVE_INFINITY : call.deadline - Date.now();
  const deadlineTimer =
    msLeft < 2 ** 31 - 1
      ? setTimeout(
          () => abort.abort(new CsiError(status.DEADLINE_EXCEEDED, "the caller's deadline passed")),
          Math.max(0, msLeft),
        )
      : undefined;

  let req: Record<string, unknown> = {};
  let code: status = status.OK;
  let release: (() => void) | undefined;
  try {
    try {
      req = def.requestDeserialize(call.request) as Record<string, unknown>;
    } catch (err) {
      // INTERNAL, as gRPC servers answer bytes that do not decode: no field can be named.
      throw new CsiError(
        status.INTERNAL,
        `the request is not a valid ${method} message: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    if (rt.log.isLevelEnabled("debug")) logOf().debug({ request: redactSecrets(req) }, "call");
    if (!fn) throw new CsiError(status.UNIMPLEMENTED, `${method} is not implemented by this driver`);
    const key = inflightKey(method, req);
    if (key) {
      release = rt.inflight.tryAcquire(key);
      if (!release) {
        throw new CsiError(
          status.ABORTED,
          `an operation for ${key.slice(key.indexOf("/") + 1)} is already in progress`,
        );
      }
    }
    const ctx: RpcContext = {
      requestId,
      signal: abort.signal,
      get log() {
        return logOf();
      },
    };
    const response = await runInCallScope(abort.signal, () => fn(req, ctx));
    // A response the message type cannot hold is a bug here: INTERNAL, below, with its stack logged.
    const bytes = def.responseSerialize((response ?? {}) as object);
    reply(() => call.reply(bytes), logOf);
  } catch (caught) {
    const err = abortedOutcome(caught, abort.signal);
    const { code: errCode, message, expected } = shortMessage(err);
    code = errCode;
    // A host call that hung, or a caller that gave up, is worth a look: warn, with what hung.
    const log = logOf();
    if (expected && (code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED))
      log.warn({ code: statusName(code), error: message }, "call failed");
    else if (expected) log.info({ code: statusName(code), error: message }, "call failed");
    else log.error({ err }, "unexpected error");
    reply(() => call.fail(code, message), logOf);
  } finally {
    call.oncancel = undefined;
    clearTimeout(deadlineTimer);
    release?.();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    rt.metrics.rpcDuration.observe({ method, code: statusName(code) }, seconds);
    const level = code === status.OK && POLLED.has(method) ? "debug" : "info";
    if (rt.log.isLevelEnabled(level)) {
      // Cut: a malformed request may carry a name of any length.
      const volume = String(req["volume_id"] || req["name"] || "").slice(0, 128);
      logOf()[level]({ code: statusName(code), ms: Math.round(seconds * 1000), volume }, "done");
    }
  }
}
