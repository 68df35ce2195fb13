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
  const server = new GrpcServer(routes, { maxReceiveBytes: MAX_RECEIVE_BYTES, log: rt.log });

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
