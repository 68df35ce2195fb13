/**
 * Controller figures, this driver against the official EBS driver, both on the same fake AWS (moto
 * behind the fault proxy, which counts every call): start-up, memory, a provisioning burst with
 * AWS latency, and the same burst under EC2-like token buckets.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { status } from "@grpc/grpc-js";
import type { FakeAws } from "../test/harness/fake-aws.ts";
import { type PluginCommand, type RunningPlugin, startPlugin } from "./plugin-process.ts";

const GiB = 1024 ** 3;
const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } };
/** The external-provisioner as the official manifests run it: --worker-threads=100 --timeout=60s. */
const PROVISIONER_WORKERS = 100;
const CALL_TIMEOUT_MS = 60_000;
/** Its per-item backoff: --retry-interval-start=1s, doubling (capped here at 60 s). */
const RETRY_START_MS = 1000;
const RETRY_MAX_MS = 60_000;
/** An m5.large takes 27 attachments, less its network interface and root volume. */
export const ATTACHES = 25;

export interface ControllerFactory {
  label: string;
  controller(socket: string, aws: FakeAws): PluginCommand;
}

/** Failed attempts of a phase, by gRPC code name, as the sidecar saw them. */
export type Failures = Record<string, number>;

export interface Phase {
  ms: number;
  failures: Failures;
}

/**
 * Runs op(i) for i < n with `workers` at a time; a failed item is retried after its own backoff,
 * as the sidecars' work queues do, until every item succeeded.
 */
export async function sidecarQueue(
  n: number,
  workers: number,
  op: (i: number) => Promise<unknown>,
): Promise<Phase> {
  const failures: Failures = {};
  const started = performance.now();
  const ready: number[] = Array.from({ length: n }, (_, i) => i);
  const attempts = new Map<number, number>();
  let pendingRetries = 0;
  const worker = async () => {
    for (;;) {
      const i = ready.shift();
      if (i === undefined) {
        if (pendingRetries === 0) return;
        // An idle worker waits for a retry to come due.
        await sleep(20);
        continue;
      }
      try {
        await op(i);
      } catch (err) {
        const code = status[(err as { code?: number }).code ?? status.UNKNOWN] ?? "UNKNOWN";
        failures[code] = (failures[code] ?? 0) + 1;
        const k = attempts.get(i) ?? 0;
        attempts.set(i, k + 1);
        pendingRetries++;
        void sleep(Math.min(RETRY_MAX_MS, RETRY_START_MS * 2 ** k)).then(() => {
          pendingRetries--;
          ready.push(i);
        });
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  return { ms: performance.now() - started, failures };
}

export interface StartFigures {
  startMs: number;
  idleRssMiB: number;
}

export async function withController<T>(
  factory: ControllerFactory,
  aws: FakeAws,
  work: (plugin: RunningPlugin) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "bench-controller-"));
  const socket = join(dir, "csi.sock");
  try {
    const plugin = await startPlugin(factory.controller(socket, aws), socket);
    try {
      return await work(plugin);
    } finally {
      await plugin.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function controllerStart(factory: ControllerFactory, aws: FakeAws): Promise<StartFigures> {
  return withController(factory, aws, async (plugin) => {
    await sleep(3000);
    return { startMs: plugin.startMs, idleRssMiB: await plugin.rssMiB() };
  });
}

export interface BurstFigures {
  create: Phase;
  attach?: Phase;
  detach?: Phase;
  delete: Phase;
  peakRssMiB: number;
  /** The controller's CPU time over the whole burst, and over its delete phase, ms. */
  cpuMs: number;
  deleteCpuMs: number;
  /** EC2 calls of the whole burst, by action (exact: counted by the fault proxy). */
  calls: Record<string, number>;
}

/**
 * n volumes created through the provisioner's work queue, ATTACHES of them attached to one node
 * and detached again (when `attach`), then all deleted.
 */
export async function burst(
  factory: ControllerFactory,
  aws: FakeAws,
  o: { volumes: number; attach: boolean; prefix: string },
): Promise<BurstFigures> {
  const instanceId = o.attach
    ? await aws.createInstance({ zone: `${aws.region}a`, instanceType: "m5.large" })
    : "";
  return withController(factory, aws, async (plugin) => {
    aws.proxy.resetStats();
    const cpuBefore = await plugin.cpuMs();
    const ids: string[] = new Array(o.volumes);
    const call = (method: string, request: object) =>
      plugin.client.call("Controller", method, request, CALL_TIMEOUT_MS);
    const create = await sidecarQueue(o.volumes, PROVISIONER_WORKERS, async (i) => {
      const reply = await call("CreateVolume", {
        name: `pvc-${o.prefix}-${i}`,
        capacity_range: { required_bytes: GiB },
        volume_capabilities: [capability],
        parameters: { type: "gp3" },
      });
      ids[i] = reply.volume.volume_id;
    });
    let attach: Phase | undefined;
    let detach: Phase | undefined;
    if (o.attach) {
      const n = Math.min(ATTACHES, o.volumes);
      const publish = (method: string) =>
        sidecarQueue(n, n, (i) =>
          call(method, { volume_id: ids[i], node_id: instanceId, volume_capability: capability }),
        );
      attach = await publish("ControllerPublishVolume");
      detach = await publish("ControllerUnpublishVolume");
    }
    const cpuBeforeDelete = await plugin.cpuMs();
    const del = await sidecarQueue(o.volumes, PROVISIONER_WORKERS, (i) =>
      call("DeleteVolume", { volume_id: ids[i] }),
    );
    const cpuAfterDelete = await plugin.cpuMs();
    return {
      create,
      attach,
      detach,
      delete: del,
      peakRssMiB: await plugin.peakRssMiB(),
      cpuMs: cpuAfterDelete - cpuBefore,
      deleteCpuMs: cpuAfterDelete - cpuBeforeDelete,
      calls: aws.proxy.stats(),
    };
  });
}

/** EC2's token buckets as the benchmark sets them: mutating actions and Describe* separately. */
export const BUCKETS = {
  mutating: { capacity: 50, refillPerSecond: 5 },
  describe: { capacity: 100, refillPerSecond: 20 },
};
const MUTATING = [
  "CreateVolume",
  "DeleteVolume",
  "AttachVolume",
  "DetachVolume",
  "CreateTags",
  "ModifyVolume",
];

export function tokenBuckets() {
  return {
    buckets: {
      ...Object.fromEntries(MUTATING.map((a) => [a, BUCKETS.mutating])),
      "*": BUCKETS.describe,
    },
  };
}

/** The least time n creates (or deletes) can take: the bucket's burst, then its refill rate. */
export const bucketFloorMs = (n: number) =>
  (Math.max(0, n - BUCKETS.mutating.capacity) / BUCKETS.mutating.refillPerSecond) * 1000;
