/**
 * Node plugin figures, this driver (EBS and EFS) against the official EBS driver: start-up to the
 * first ready Probe, idle memory, and NodeGetVolumeStats latency and throughput on a mounted ext4
 * loop device (the plugin kubelet polls for every volume, every minute).
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createAttachSim } from "../test/harness/attach-sim.ts";
import type { Imds } from "../test/harness/imds.ts";
import { type PluginCommand, type RunningPlugin, startPlugin } from "./plugin-process.ts";

/** How long a plugin sits idle before its memory is read. */
const IDLE_MS = 3000;
export const STATS_CONCURRENCY = 8;
const STATS_SECONDS = Number(process.env.BENCH_STATS_SECONDS ?? 5);
const VOLUME = "vol-0123456789abcdef0";

export interface PluginFactory {
  label: string;
  /** The command for a node plugin serving `socket`, its kubelet directory `dir`. */
  node(socket: string, dir: string): PluginCommand;
}

export interface StartFigures {
  startMs: number;
  idleRssMiB: number;
}

/** Starts a node plugin, waits IDLE_MS, reads its memory, stops it. */
export async function nodeStart(factory: PluginFactory): Promise<StartFigures> {
  const dir = await mkdtemp(join(tmpdir(), "bench-node-"));
  try {
    const socket = join(dir, "csi.sock");
    const plugin = await startPlugin(factory.node(socket, dir), socket);
    try {
      await sleep(IDLE_MS);
      return { startMs: plugin.startMs, idleRssMiB: await plugin.rssMiB() };
    } finally {
      await plugin.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface StatsFigures {
  p50Ms: number;
  p99Ms: number;
  callsPerSecond: number;
}

/**
 * A published ext4 volume on a loop device, staged and published by this driver's EBS node plugin
 * (the real NodeStage/NodePublish), in a kubelet directory both drivers are pointed at.
 */
export interface MountedVolume {
  dir: string;
  byIdDir: string;
  volumeId: string;
  targetPath: string;
  /** Unpublishes, unstages and detaches with the plugin that published it. */
  release(): Promise<void>;
}

export async function mountVolume(
  ours: PluginFactory & { nodeWithDevices(socket: string, dir: string, byIdDir: string): PluginCommand },
): Promise<MountedVolume> {
  const dir = await mkdtemp(join(tmpdir(), "bench-stats-"));
  const byIdDir = join(dir, "by-id");
  await mkdir(byIdDir);
  const sim = createAttachSim({ byIdDir, stateDir: join(dir, "volumes") });
  const socket = join(dir, "publisher.sock");
  const staging = join(dir, "plugins/kubernetes.io/csi/ebs.csi.aws.com/staging");
  const targetPath = join(dir, "pods/bench/volumes/kubernetes.io~csi/pv-bench/mount");
  const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } };
  let plugin: RunningPlugin | undefined;
  try {
    await sim.attach(VOLUME, 1);
    plugin = await startPlugin(ours.nodeWithDevices(socket, dir, byIdDir), socket);
    const publishContext = { devicePath: "/dev/xvdba" };
    await plugin.client.call("Node", "NodeStageVolume", {
      volume_id: VOLUME,
      staging_target_path: staging,
      volume_capability: capability,
      publish_context: publishContext,
    });
    await plugin.client.call("Node", "NodePublishVolume", {
      volume_id: VOLUME,
      staging_target_path: staging,
      target_path: targetPath,
      volume_capability: capability,
      publish_context: publishContext,
    });
  } catch (err) {
    await plugin?.stop();
    await sim.cleanup();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const publisher = plugin;
  return {
    dir,
    byIdDir,
    volumeId: VOLUME,
    targetPath,
    async release() {
      try {
        await publisher.client.call("Node", "NodeUnpublishVolume", {
          volume_id: VOLUME,
          target_path: targetPath,
        });
        await publisher.client.call("Node", "NodeUnstageVolume", {
          volume_id: VOLUME,
          staging_target_path: staging,
        });
      } finally {
        await publisher.stop();
        await sim.cleanup();
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** STATS_CONCURRENCY callers call NodeGetVolumeStats back to back for STATS_SECONDS (after a 1 s warm-up). */
export async function statsLoad(plugin: RunningPlugin, volume: MountedVolume): Promise<StatsFigures> {
  const request = { volume_id: volume.volumeId, volume_path: volume.targetPath };
  const run = async (ms: number, latencies?: number[]) => {
    const until = performance.now() + ms;
    await Promise.all(
      Array.from({ length: STATS_CONCURRENCY }, async () => {
        while (performance.now() < until) {
          const started = performance.now();
          const reply = await plugin.client.call("Node", "NodeGetVolumeStats", request, 10_000);
          if (!reply.usage?.length) throw new Error("NodeGetVolumeStats answered without usage");
          latencies?.push(performance.now() - started);
        }
      }),
    );
  };
  await run(1000);
  const latencies: number[] = [];
  const started = performance.now();
  await run(STATS_SECONDS * 1000, latencies);
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;
  return { p50Ms: at(0.5), p99Ms: at(0.99), callsPerSecond: latencies.length / seconds };
}

/** Starts a node plugin on the mounted volume's kubelet directory and measures stats. */
export async function nodeStats(
  factory: PluginFactory & { nodeWithDevices?(socket: string, dir: string, byIdDir: string): PluginCommand },
  volume: MountedVolume,
): Promise<StatsFigures> {
  const socket = join(volume.dir, `stats-${Math.random().toString(36).slice(2, 8)}.sock`);
  const command = factory.nodeWithDevices
    ? factory.nodeWithDevices(socket, volume.dir, volume.byIdDir)
    : factory.node(socket, volume.dir);
  const plugin = await startPlugin(command, socket);
  try {
    return await statsLoad(plugin, volume);
  } finally {
    await plugin.stop();
  }
}

export type { Imds };
