import { mkdir, mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { run } from "../../src/host/exec.ts";
import { listMounts, unmount } from "../../src/host/mounts.ts";
import { releaseUnusedReadOnlyDevices } from "../../src/host/readonly-block.ts";
import { type AttachSim, createAttachSim } from "./attach-sim.ts";
import type { CsiClient } from "./csi-client.ts";
import { type DriverProcess, runAll, startDriverWithClient } from "./driver-process.ts";
import { type FakeAws, type FakeAwsOptions, startFakeAws } from "./fake-aws.ts";
import { type Imds, startImds } from "./imds.ts";

export interface EbsEnvOptions {
  mode: "controller" | "node" | "all";
  /** Simulate EC2's hypervisor with loop devices (needs root). Default: when the node is served. */
  attach?: boolean;
  /** More driver flags, e.g. ["--batching", "false"]. */
  extraArgs?: string[];
  instanceType?: string;
  /** Flags for node itself, e.g. ["--expose-gc"] (memory tests). */
  nodeArgs?: string[];
  /** More environment for the driver process. */
  env?: Record<string, string>;
  /** Which fake AWS (default: AWS_FAKE, else moto). */
  fake?: FakeAwsOptions;
}

/** A whole EBS setup on one machine: fake AWS, fake IMDS, simulated attach, the driver process. */
export interface EbsEnv {
  aws: FakeAws;
  /** The fake EC2 instance the node plugin runs on. */
  instanceId: string;
  zone: string;
  imds: Imds;
  sim: AttachSim | undefined;
  /** A temporary directory for this environment: sockets, volume files, mount points. */
  dir: string;
  socketPath: string;
  driver: DriverProcess;
  client: CsiClient;
  /** Kills the driver (SIGKILL by default, as a crash) and starts it again on the same socket. */
  restart(signal?: NodeJS.Signals): Promise<void>;
  /** Stops everything and removes every mount, loop device and file it made, also after failures. */
  stop(): Promise<void>;
}

export async function startEbsEnv(options: EbsEnvOptions): Promise<EbsEnv> {
  const dir = await mkdtemp(join(tmpdir(), "ebs-env-"));
  const byIdDir = join(dir, "by-id");
  await mkdir(byIdDir);
  const aws = await startFakeAws(options.fake);
  const cleanups: (() => Promise<unknown>)[] = [
    () => aws.stop(),
    () => rm(dir, { recursive: true, force: true }),
  ];
  try {
    const zone = `${aws.region}a`;
    const instanceType = options.instanceType ?? "m5.large";
    const instanceId = await aws.createInstance({ zone, instanceType });
    const imds = await startImds({ instanceId, instanceType, zone, region: aws.region });
    cleanups.unshift(() => imds.stop());

    const simulate = options.attach ?? options.mode !== "controller";
    const sim = simulate ? createAttachSim({ byIdDir, stateDir: join(dir, "volumes") }) : undefined;
    if (sim) {
      cleanups.unshift(
        () => unmountUnder(dir),
        // Read-only views of published block volumes hold the simulated disks open, as on a node.
        () => releaseViewsOfSimDisks(join(dir, "volumes")),
        () => sim.cleanup(),
      );
      wireAttachSimulation(aws, sim, instanceId);
    }

    const { socketPath, driver, client } = await startDriverWithClient(
      {
        dir,
        driver: "ebs",
        mode: options.mode,
        args: ["--device-dir", byIdDir, ...(options.extraArgs ?? [])],
        env: { ...options.env, ...aws.env, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url },
        nodeArgs: options.nodeArgs,
      },
      cleanups,
    );

    return {
      aws,
      instanceId,
      zone,
      imds,
      sim,
      dir,
      socketPath,
      driver,
      client,
      async restart(signal = "SIGKILL") {
        await driver.stop(signal);
        await driver.start();
      },
      stop: () => runAll(cleanups),
    };
  } catch (err) {
    await runAll(cleanups).catch(() => undefined);
    throw err;
  }
}

/** On EC2 a disk appears when AttachVolume succeeds: here a loop device does, and nothing more. */
export function wireAttachSimulation(aws: FakeAws, sim: AttachSim, nodeId: string): void {
  const sizeOf = async (volumeId: string) => {
    const out = await aws.ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }));
    return out.Volumes?.[0]?.Size ?? 1;
  };
  aws.proxy.hooks.onAttach = async (volumeId, instanceId) => {
    if (instanceId === nodeId) await sim.attach(volumeId, await sizeOf(volumeId));
  };
  aws.proxy.hooks.onDetach = async (volumeId, instanceId) => {
    if (instanceId === nodeId) await sim.detach(volumeId);
  };
  aws.proxy.hooks.onModify = async (volumeId, sizeGiB) => {
    await sim.resize(volumeId, sizeGiB ?? (await sizeOf(volumeId)));
  };
  aws.proxy.hooks.onDelete = (volumeId) => sim.remove(volumeId);
  // A snapshot copies the volume's file; a volume restored from it starts as a copy of that.
  aws.proxy.hooks.onSnapshot = (volumeId, snapshotId) => sim.snapshot(volumeId, snapshotId);
  aws.proxy.hooks.onCreateVolume = async (volumeId, snapshotId) => {
    if (snapshotId) await sim.copyInto(volumeId, snapshotId);
  };
  aws.proxy.hooks.onDeleteSnapshot = (snapshotId) => sim.removeSnapshot(snapshotId);
  aws.proxy.hooks.onCopyVolume = (copyId, sourceId) => sim.copyInto(copyId, sourceId);
}

/** Detaches the driver's read-only views (src/host/readonly-block.ts) of the disks the simulation made. */
async function releaseViewsOfSimDisks(stateDir: string): Promise<void> {
  const { stdout } = await run("losetup", ["--list", "--json", "--output", "NAME,BACK-FILE"]);
  if (stdout.trim() === "") return;
  const devices = (JSON.parse(stdout) as { loopdevices: { name: string; "back-file": string | null }[] })
    .loopdevices;
  const real = await realpath(stateDir).catch(() => stateDir);
  for (const disk of devices.filter((d) => d["back-file"]?.startsWith(`${real}/`))) {
    await releaseUnusedReadOnlyDevices(disk.name);
  }
}

/** Unmounts everything below dir, deepest first (publish mounts before their staging mounts). */
export async function unmountUnder(dir: string): Promise<void> {
  const mounts = (await listMounts()).filter((m) => m.mountPoint.startsWith(`${dir}/`));
  for (const m of mounts.sort((a, b) => b.mountPoint.length - a.mountPoint.length || b.id - a.id)) {
    await unmount(m.mountPoint).catch(() => undefined);
  }
}
