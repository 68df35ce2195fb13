import { lstat, mkdir, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { csiServices } from "../csi/proto.ts";
import type { Logger } from "../log.ts";
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

export async function serveCsi(
  socketPath: string,
  impls: CsiServiceImpls,
  rt: RpcRuntime,
): Promise<RunningServer> {
  const services = csiServices();
  const server = new Server({
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    // Channelz (gRPC's introspection service, which the driver does not serve) otherwise books
    // every call: measurable in NodeGetVolumeStats, which kubelet calls for every volume.
    "grpc.enable_channelz": 0,
  });
  server.addService(services.Identity.service, bindService(services.Identity.service, impls.identity, rt));
  if (impls.controller) {
    server.addService(
      services.Controller.service,
      bindService(services.Controller.service, impls.controller, rt),
    );
  }
  if (impls.groupController) {
    server.addService(
      services.GroupController.service,
      bindService(services.GroupController.service, impls.groupController, rt),
    );
  }
  if (impls.node)
    server.addService(services.Node.service, bindService(services.Node.service, impls.node, rt));

  await mkdir(dirname(socketPath), { recursive: true });
  await removeStaleSocket(socketPath, rt.log);
  await new Promise<number>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
  rt.log.info({ socket: socketPath }, "serving CSI");

  return {
    socketPath,
    async shutdown(timeoutMs) {
      const graceful = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      const timer = new Promise<"timeout">((resolve) =>
        setTimeout(() => resolve("timeout"), timeoutMs).unref(),
      );
      if ((await Promise.race([graceful, timer])) === "timeout") {
        rt.log.warn({ inflight: rt.inflight.size }, "in-flight calls did not finish in time: closing them");
        server.forceShutdown();
      }
      await unlink(socketPath).catch(() => undefined);
    },
  };
}
