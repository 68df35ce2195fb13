// EBS snapshots and restore as the snapshotter and provisioner drive them, against the driver
// process (--mode all), moto behind the fault proxy and the attach simulation: a snapshot copies
// the simulated disk, a restore starts from that copy, so the bytes a pod wrote are the bytes the
// restored volume shows. The proxy keeps snapshots pending for a while, as EC2 does, and can lose
// CreateSnapshot's answer after EC2 made the snapshot.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, readFile, realpath, statfs, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DescribeSnapshotsCommand } from "@aws-sdk/client-ec2";
import { type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { defaultFaults } from "../harness/fault-proxy.ts";
import { canGrowExt4Online, loopDeviceSkipReason } from "../harness/host-support.ts";

const GiB = 1024 ** 3;
const DRIVER_NAME = "ebs.csi.aws.com";
const capability = (fsType: string) => ({
  access_mode: { mode: "SINGLE_NODE_WRITER" },
  mount: { fs_type: fsType, mount_flags: [] },
});

const skip = loopDeviceSkipReason(["mkfs.ext4", "resize2fs", "mkfs.xfs", "xfs_growfs", "cp"]);
if (skip) console.warn(`[test/integration/ebs-snapshots.test.ts] SKIPPED: ${skip}`);

describe.skipIf(skip !== undefined)("EBS snapshots and restore (driver process, loop devices)", () => {
  let env: EbsEnv;
  let root: string;
  let cleanups: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    env = await startEbsEnv({ mode: "all" });
    root = await realpath(env.dir);
  }, 120_000);

  afterEach(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    cleanups = [];
    // Not proxy.reset(): that also drops the attach simulation's hooks.
    Object.assign(env.aws.proxy.faults, defaultFaults());
    env.aws.proxy.snapshots.reset();
  });

  afterAll(async () => {
    await env?.stop();
  });

  const controller = (method: string, request: object) => env.client.call("Controller", method, request);
  const node = (method: string, request: object) => env.client.call("Node", method, request);
  const failure = (promise: Promise<unknown>) =>
    promise.then(
      (reply) => {
        throw new Error(`expected a failure, got ${JSON.stringify(reply)}`);
      },
      (err: ServiceError) => err,
    );

  /** Snapshots in moto carrying this CSI name, whatever the driver says. */
  async function snapshotsNamed(name: string) {
    const out = await env.aws.ec2.send(
      new DescribeSnapshotsCommand({ Filters: [{ Name: "tag:CSIVolumeSnapshotName", Values: [name] }] }),
    );
    return out.Snapshots ?? [];
  }

  /** A volume, restored from a snapshot (snap-...) or cloned from a volume (vol-...) when `source` says. */
  async function createVolume(sizeGiB: number, source?: string, fsType = "ext4"): Promise<string> {
    const content = source?.startsWith("vol-")
      ? { volume: { volume_id: source } }
      : source
        ? { snapshot: { snapshot_id: source } }
        : undefined;
    const reply = await controller("CreateVolume", {
      name: `pvc-${randomUUID()}`,
      capacity_range: { required_bytes: sizeGiB * GiB },
      volume_capabilities: [capability(fsType)],
      parameters: { type: "gp3" },
      ...(content ? { volume_content_source: content } : {}),
    });
    const volumeId: string = reply.volume.volume_id;
    cleanups.push(() => controller("DeleteVolume", { volume_id: volumeId }));
    if (content) expect(reply.volume.content_source).toMatchObject(content);
    return volumeId;
  }

  /** Attaches and stages the volume (as the attacher and kubelet do); returns the staging path. */
  async function mountVolume(volumeId: string, fsType = "ext4"): Promise<string> {
    const published = await controller("ControllerPublishVolume", {
      volume_id: volumeId,
      node_id: env.instanceId,
      volume_capability: capability(fsType),
    });
    cleanups.push(() =>
      controller("ControllerUnpublishVolume", { volume_id: volumeId, node_id: env.instanceId }),
    );
    const staging = join(
      root,
      "plugins/kubernetes.io/csi",
      DRIVER_NAME,
      createHash("sha256").update(volumeId).digest("hex"),
      "globalmount",
    );
    await mkdir(staging, { recursive: true });
    cleanups.push(() => node("NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging }));
    await node("NodeStageVolume", {
      volume_id: volumeId,
      publish_context: published.publish_context,
      staging_target_path: staging,
      volume_capability: capability(fsType),
    });
    return staging;
  }

  async function unmountVolume(volumeId: string, staging: string) {
    await node("NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging });
    await controller("ControllerUnpublishVolume", { volume_id: volumeId, node_id: env.instanceId });
  }

  async function createSnapshot(name: string, volumeId: string) {
    const reply = await controller("CreateSnapshot", { name, source_volume_id: volumeId, parameters: {} });
    const snapshotId: string = reply.snapshot.snapshot_id;
    cleanups.push(() => controller("DeleteSnapshot", { snapshot_id: snapshotId }));
    return reply.snapshot;
  }

  // ext4 grows online only with CAP_SYS_RESOURCE, which a privileged node plugin has and this
  // machine may not: then the ext4 restore keeps the snapshot's size, and xfs shows the growth.
  const growExt4 = canGrowExt4Online();
  if (!growExt4) console.warn("[ebs-snapshots.test.ts] no CAP_SYS_RESOURCE: the ext4 restore is not grown");
  it.each([
    ["xfs", 2],
    ["ext4", growExt4 ? 2 : 1],
  ] as const)(
    "%s: what a pod wrote comes back in a volume of %i GiB restored from the snapshot, once it is ready",
    async (fsType, restoredGiB) => {
      const source = await createVolume(1, undefined, fsType);
      const staging = await mountVolume(source, fsType);
      const data = randomBytes(3 * 1024 * 1024 + 17);
      await writeFile(join(staging, "data.bin"), data);
      execFileSync("sync", ["-f", join(staging, "data.bin")]);

      env.aws.proxy.snapshots.pendingMs = 3000;
      const name = `snapshot-${randomUUID()}`;
      const first = await createSnapshot(name, source);
      expect(first).toMatchObject({ source_volume_id: source, size_bytes: GiB, ready_to_use: false });
      // Writes after the snapshot are not in it.
      await writeFile(join(staging, "later.txt"), "after the snapshot");

      // A volume cannot be restored from a snapshot EC2 is still taking: the provisioner retries.
      const early = await failure(createVolume(restoredGiB, first.snapshot_id, fsType));
      expect(early.code).toBe(status.UNAVAILABLE);
      expect(early.details).toMatch(/pending/);

      let ready = first;
      for (let i = 0; i < 40 && !ready.ready_to_use; i++) {
        await sleep(250);
        ready = (await controller("CreateSnapshot", { name, source_volume_id: source, parameters: {} }))
          .snapshot;
      }
      expect(ready).toMatchObject({ snapshot_id: first.snapshot_id, ready_to_use: true });
      expect(
        (await controller("GetSnapshot", { snapshot_id: first.snapshot_id })).snapshot.ready_to_use,
      ).toBe(true);
      expect(await snapshotsNamed(name)).toHaveLength(1);

      const restored = await createVolume(restoredGiB, first.snapshot_id, fsType);
      // Mounted next to its origin on the same node (xfs: same UUID, hence nouuid).
      const restoredStaging = await mountVolume(restored, fsType);
      expect((await readFile(join(restoredStaging, "data.bin"))).equals(data)).toBe(true);
      await expect(readFile(join(restoredStaging, "later.txt"))).rejects.toMatchObject({ code: "ENOENT" });
      // Staging grew the 1 GiB filesystem of the snapshot to the volume's size.
      const fs = await statfs(restoredStaging);
      expect(fs.blocks * fs.bsize).toBeGreaterThan((restoredGiB - 0.5) * GiB);

      await unmountVolume(restored, restoredStaging);
      await unmountVolume(source, staging);
    },
  );

  it("a clone (CopyVolumes) of a mounted volume holds what was written, grown to its size, in the source's zone", async () => {
    const source = await createVolume(1, undefined, "xfs");
    const staging = await mountVolume(source, "xfs");
    const data = randomBytes(2 * 1024 * 1024 + 5);
    await writeFile(join(staging, "data.bin"), data);
    execFileSync("sync", ["-f", join(staging, "data.bin")]);
    const clone = await createVolume(2, source, "xfs");
    const described = await controller("ControllerGetVolume", { volume_id: clone });
    expect(described.volume.accessible_topology[0].segments["topology.kubernetes.io/zone"]).toBe(env.zone);
    const cloneStaging = await mountVolume(clone, "xfs");
    expect((await readFile(join(cloneStaging, "data.bin"))).equals(data)).toBe(true);
    const fs = await statfs(cloneStaging);
    expect(fs.blocks * fs.bsize).toBeGreaterThan(1.5 * GiB);
    // The clone is its own volume: writes to it do not reach the source.
    await writeFile(join(cloneStaging, "clone-only.txt"), "x");
    await expect(readFile(join(staging, "clone-only.txt"))).rejects.toMatchObject({ code: "ENOENT" });
    await unmountVolume(clone, cloneStaging);
    await unmountVolume(source, staging);
  });

  it("a group snapshot of two volumes of one node holds what was written to each; both restore", async () => {
    const [first, second] = [
      await createVolume(1, undefined, "xfs"),
      await createVolume(1, undefined, "xfs"),
    ];
    const [stagingA, stagingB] = [await mountVolume(first, "xfs"), await mountVolume(second, "xfs")];
    // A third volume on the node stays out of the group.
    const outsider = await createVolume(1, undefined, "xfs");
    const stagingC = await mountVolume(outsider, "xfs");
    const [dataA, dataB] = [randomBytes(1024 * 1024), randomBytes(777_777)];
    await writeFile(join(stagingA, "a.bin"), dataA);
    await writeFile(join(stagingB, "b.bin"), dataB);
    execFileSync("sync");

    env.aws.proxy.snapshots.pendingMs = 1500;
    env.aws.proxy.resetStats();
    const name = `group-${randomUUID()}`;
    const request = { name, source_volume_ids: [first, second], parameters: {} };
    let group = (await env.client.call("GroupController", "CreateVolumeGroupSnapshot", request))
      .group_snapshot;
    cleanups.push(() =>
      env.client.call("GroupController", "DeleteVolumeGroupSnapshot", {
        group_snapshot_id: group.group_snapshot_id,
        snapshot_ids: group.snapshots.map((s: { snapshot_id: string }) => s.snapshot_id),
      }),
    );
    expect(group.ready_to_use).toBe(false);
    // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
    expect(group.snapshots.map((s: any) => s.source_volume_id).sort()).toEqual([first, second].sort());
    expect(env.aws.proxy.stats()["CreateSnapshots"]).toBe(1);
    for (let i = 0; i < 40 && !group.ready_to_use; i++) {
      await sleep(250);
      group = (
        await env.client.call("GroupController", "GetVolumeGroupSnapshot", {
          group_snapshot_id: group.group_snapshot_id,
        })
      ).group_snapshot;
    }
    expect(group.ready_to_use).toBe(true);

    const snapshotOf = (volumeId: string): string =>
      group.snapshots.find((s: { source_volume_id: string }) => s.source_volume_id === volumeId).snapshot_id;
    const restoredA = await createVolume(1, snapshotOf(first), "xfs");
    const restoredB = await createVolume(1, snapshotOf(second), "xfs");
    const [rA, rB] = [await mountVolume(restoredA, "xfs"), await mountVolume(restoredB, "xfs")];
    expect((await readFile(join(rA, "a.bin"))).equals(dataA)).toBe(true);
    expect((await readFile(join(rB, "b.bin"))).equals(dataB)).toBe(true);
    for (const [volumeId, staging] of [
      [restoredA, rA],
      [restoredB, rB],
      [outsider, stagingC],
      [first, stagingA],
      [second, stagingB],
    ] as const) {
      await unmountVolume(volumeId, staging);
    }

    // Once the volumes are detached, EC2 can no longer take them together: FAILED_PRECONDITION.
    const refused = await failure(
      env.client.call("GroupController", "CreateVolumeGroupSnapshot", { ...request, name: `${name}-2` }),
    );
    expect(refused.code).toBe(status.FAILED_PRECONDITION);
    expect(refused.details).toMatch(/not attached/);
  });

  it("a restore smaller than the snapshot is OUT_OF_RANGE, of an unknown snapshot NOT_FOUND; nothing is created", async () => {
    const source = await createVolume(2);
    const snapshot = await createSnapshot(`snapshot-${randomUUID()}`, source);
    const small = await failure(createVolume(1, snapshot.snapshot_id));
    expect(small.code).toBe(status.OUT_OF_RANGE);
    expect(small.details).toMatch(/at least as large/);
    const unknown = await failure(createVolume(2, "snap-0123456789abcdef0"));
    expect(unknown.code).toBe(status.NOT_FOUND);
    const listed = await controller("ListVolumes", {});
    // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
    expect(listed.entries.filter((e: any) => e.volume.content_source?.snapshot)).toEqual([]);
  });

  it("CreateSnapshot's answer lost after EC2 made it: exactly one snapshot, the one answered", async () => {
    const source = await createVolume(1);
    const name = `snapshot-${randomUUID()}`;
    env.aws.proxy.resetStats();
    Object.assign(env.aws.proxy.faults, { errorRate: { CreateSnapshot: 1 }, lostAnswerShare: 1 });
    const reply = await controller("CreateSnapshot", { name, source_volume_id: source, parameters: {} });
    cleanups.push(() => controller("DeleteSnapshot", { snapshot_id: reply.snapshot.snapshot_id }));
    const made = await snapshotsNamed(name);
    expect(made.map((s) => s.SnapshotId)).toEqual([reply.snapshot.snapshot_id]);
    // No SDK retry of the create: a retry would have made a second snapshot.
    expect(env.aws.proxy.stats()["CreateSnapshot"]).toBe(1);
  });

  it("the driver killed between EC2's answer and its own: the retry finds the snapshot, no second one", async () => {
    const source = await createVolume(1);
    const name = `snapshot-${randomUUID()}`;
    const copyData = env.aws.proxy.hooks.onSnapshot;
    env.aws.proxy.hooks.onSnapshot = async (volumeId, snapshotId) => {
      await copyData?.(volumeId, snapshotId);
      await env.driver.stop("SIGKILL");
    };
    try {
      await failure(controller("CreateSnapshot", { name, source_volume_id: source, parameters: {} }));
    } finally {
      env.aws.proxy.hooks.onSnapshot = copyData;
      await env.driver.start();
    }
    const retry = await controller("CreateSnapshot", { name, source_volume_id: source, parameters: {} });
    cleanups.push(() => controller("DeleteSnapshot", { snapshot_id: retry.snapshot.snapshot_id }));
    expect((await snapshotsNamed(name)).map((s) => s.SnapshotId)).toEqual([retry.snapshot.snapshot_id]);
  });

  it("fast restore and a lock are asked of EC2 as the class says; a bad zone deletes the snapshot again", async () => {
    const source = await createVolume(1);
    const locked = await controller("CreateSnapshot", {
      name: `snapshot-${randomUUID()}`,
      source_volume_id: source,
      parameters: {
        fastSnapshotRestoreAvailabilityZones: `${env.zone}, us-east-1b`,
        lockMode: "governance",
        lockDuration: "7",
      },
    });
    const id = locked.snapshot.snapshot_id;
    cleanups.push(() => controller("DeleteSnapshot", { snapshot_id: id }));
    expect(env.aws.proxy.snapshots.fastRestores.get(id)).toEqual([env.zone, "us-east-1b"]);
    expect(env.aws.proxy.snapshots.locks.get(id)).toEqual({ LockMode: "governance", LockDuration: "7" });

    const name = `snapshot-${randomUUID()}`;
    const bad = await failure(
      controller("CreateSnapshot", {
        name,
        source_volume_id: source,
        parameters: { fastSnapshotRestoreAvailabilityZones: "us-east-1z" },
      }),
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.details).toMatch(/us-east-1z is not a zone/);
    expect(await snapshotsNamed(name)).toEqual([]);
  });
});
