import { lstat, mkdir, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { type CsiServiceName, csiServiceDefinitions } from "../csi/proto.ts";
import type { Logger } from "../log.ts";
import { GrpcServer, type UnaryHandler } from "./grpc.ts";
import { bindService, type RpcRuntime, type ServiceImpl } from "./rpc.ts";

export interface CsiServiceImpls {
  identity: ServiceImpl;
  controller?: ServiceImpl;
  groupController?: ServiceImpl;
  node?: ServiceImpl;
}

export interface RunningServer {
  socketPath: string;
  /** Stop accepting calls, give in-flight ones up to timeoutMs, then close whatever is left. */
  shutdown(timeoutMs: number): Promise<void>;
}

/** A socket file left by an earlier process is removed; anything else at that path is an error. */
async function removeStaleSocket(path: string, log: Logger): Promise<void> {
  const stat = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
  if (!stat) return;
  if (!stat.isSocket()) throw new Error(`${path} exists and is not a socket: refusing to remove it`);
  await unlink(path);
  log.info({ path }, "removed stale socket");
}

/** The largest request message accepted, as gRPC servers default to. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

/**
 * Calls started per turn of the event loop (GrpcServerOptions.callsPerTurn) by a process that
 * serves kubelet's node calls. At four, NodeGetVolumeStats at concurrency 8 kept its p50 and
 * throughput; eight per turn kept a caller's calls in lockstep and lost a quarter of the
 * throughput. What grouping saves, measured when every process started four: against one per
 * turn, the controller's CPU over 100 deletes went from 110 to 90 ms and the last request left at
 * 60 ms instead of 104 (npm run bench's delete phase, ten rounds); 100 SDK DeleteVolume calls took
 * 0.69 ms of CPU each started one per turn, 0.49 ms four per turn, 0.35 ms all in one (the
 * controller's V8 flags; answered after 25 ms by a server in the same process, its CPU counted).
 */
const NODE_CALLS_PER_TURN = 4;

/**
 * The same for a controller-only process, whose calls wait on AWS: fewer, larger groups cost less
 * CPU per call and still let requests leave while later calls wait. In npm run bench's delete
 * phase (100 deletes, 25 ms of AWS latency, three A/B runs of 8-10 rounds each), twelve per turn
 * finished 3-6% sooner than four in every run and sent the last request at 52-59 ms instead of
 * 68-69 (the two runs timed at the fake EC2); 24 was no better than twelve, and all 100 in one
 * turn sent the first request at 33 ms instead of 13-15 and finished later than four.
 */
const CONTROLLER_CALLS_PER_TURN = 12;

export async function serveCsi(
  socketPath: string,
  impls: CsiServiceImpls,
  rt: RpcRuntime,
): Promise<RunningServer> {
  const definitions = csiServiceDefinitions();
  const served: [CsiServiceName, ServiceImpl | undefined][] = [
    ["Identity", impls.identity],
    ["Controller", impls.controller],
    ["GroupController", impls.groupController],
    ["Node", impls.node],
  ];
  const routes = new Map<string, UnaryHandler>();
  for (const [name, impl] of served) {
    if (impl) for (const route of bindService(definitions[name], impl, rt)) routes.set(...route);
  }
  const server = new GrpcServer(routes, {
    maxReceiveBytes: MAX_RECEIVE_BYTES,
    callsPerTurn: impls.node ? NODE_CALLS_PER_TURN : CONTROLLER_CALLS_PER_TURN,
    // A controller starts a burst's first call alone (GrpcServer#startNext). In npm run bench's
    // delete phase (100 deletes, 25 ms of AWS latency, 8 A/B rounds, timed at the fake EC2), the
    // first request arrived 10.8 ms after the calls were sent instead of 14.9, the first answer
    // came back at 42 ms instead of 51, and the phase took 263 ms instead of 268 (the official
    // driver: 6.3, 38 and 260 ms). A node plugin's calls send nothing to AWS: full groups.
    rampUp: !impls.node,
    log: rt.log,
  });

  await mkdir(dirname(socketPath), { recursive: true });
  await removeStaleSocket(socketPath, rt.log);
  await server.listen(socketPath);
  rt.log.info({ socket: socketPath }, "serving CSI");

  return {
    socketPath,
    async shutdown(timeoutMs) {
      if (!(await server.close(timeoutMs))) {
        rt.log.warn({ inflight: rt.inflight.size }, "in-flight calls did not finish in time: closed them");
      }
      await unlink(socketPath).catch(() => undefined);
    },
  };
}
