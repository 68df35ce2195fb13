// The EBS node service as kubelet drives it, against the driver process (--mode all), moto and the
// attach simulation: every attached volume is a real loop device, so the filesystems, mounts,
// statfs numbers and block devices checked here are the ones a pod would see.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import {
  mkdir,
  mkdtemp,
  open,
  readFile,
  realpath,
  rm,
  rmdir,
  stat,
  statfs,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { linkName } from "../../src/ebs/device-links.ts";
import { EbsNode } from "../../src/ebs/node.ts";
import { KubeletDirs } from "../../src/host/paths.ts";
import { createLogger } from "../../src/log.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { canGrowExt4Online, loopDeviceSkipReason } from "../harness/host-support.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const DRIVER_NAME = "ebs.csi.aws.com";
/** A well-formed EBS volume id that no fake AWS ever hands out. */
const UNKNOWN_VOLUME = "vol-0123456789abcdef0";

const skip = loopDeviceSkipReason(["blkid", "blockdev", "mkfs.ext4", "mkfs.xfs", "xfs_growfs", "resize2fs"]);
if (skip) console.warn(`[test/integration/ebs-node.test.ts] SKIPPED: ${skip}`);

// --- what the host shows, read independently of the driver's own helpers ---

interface Mounted {
  devNumber: string;
  mountPoint: string;
  mountOptions: string[];
  fsType: string;
  source: string;
  superOptions: string[];
}

/** Every mount stacked at path, from /proc/self/mountinfo (our paths hold no escaped characters). */
function mountsAt(path: string): Mounted[] {
  return mountTable().filter((m) => m.mountPoint === path);
}

function mountTable(): Mounted[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const f = line.split(" ");
      const sep = f.indexOf("-", 6);
      return {
        devNumber: f[2]!,
        mountPoint: f[4]!,
        mountOptions: f[5]!.split(","),
        fsType: f[sep + 1]!,
        source: f[sep + 2]!,
        superOptions: (f[sep + 3] ?? "").split(","),
      };
    });
}

/** What `blkid -p` finds on a device (empty when nothing). */
function blkid(device: string): Record<string, string> {
  const out = spawnSync("blkid", ["-p", "-o", "export", "--", device], { encoding: "utf8" });
  return Object.fromEntries(
    out.stdout
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

/** The loop devices set up over `device` now (a read-only view of it is one). */
const loopsOver = (device: string): string[] =>
  execFileSync("losetup", ["--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"], {
    encoding: "utf8",
  })
    .split("\n")
    .filter((line) => line.split(" ")[1] === device);

const blockdevSize = (path: string): number =>
  Number(execFileSync("blockdev", ["--getsize64", path], { encoding: "utf8" }).trim());

async function statfsBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.blocks * s.bsize;
}

async function pathExists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

/** Writes bytes at an offset of a file or block device and flushes them to the device. */
async function pwrite(path: string, position: number, data: Buffer): Promise<void> {
  const handle = await open(path, "r+");
  try {
    await handle.write(data, 0, data.length, position);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function pread(path: string, position: number, length: number): Promise<Buffer> {
  const handle = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buf, 0, length, position);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** A file of `bytes` non-zero bytes, fsynced, so the filesystem really allocates them. */
async function writeFilled(path: string, bytes: number): Promise<void> {
  const handle = await open(path, "w");
  try {
    const chunk = Buffer.alloc(MiB, 0xa5);
    for (let done = 0; done < bytes; done += chunk.length) await handle.write(chunk);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

// --- CSI requests ---

type Capability = Record<string, unknown>;
const mountCapability = (fsType: string, mountFlags: string[] = []): Capability => ({
  access_mode: { mode: "SINGLE_NODE_WRITER" },
  mount: { fs_type: fsType, mount_flags: mountFlags },
});
const blockCapability = (): Capability => ({ access_mode: { mode: "SINGLE_NODE_WRITER" }, block: {} });

interface Usage {
  bytes: { total: number; available: number; used: number };
  inodes?: { total: number; available: number; used: number };
}

// biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
function usageOf(reply: any): Usage {
  // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
  const find = (unit: string) => reply.usage.find((u: any) => u.unit === unit);
  return { bytes: find("BYTES"), inodes: find("INODES") };
}

describe.skipIf(skip !== undefined)("EBS node service (driver process, loop devices)", () => {
  let env: EbsEnv;
  /** env.dir with symlinks resolved: the mount table shows real paths. */
  let root: string;
  /** Best-effort teardown of what a test left through the driver; env.stop() is the backstop. */
  let cleanups: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    env = await startEbsEnv({ mode: "all" });
    root = await realpath(env.dir);
  });

  afterEach(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    cleanups = [];
  });

  afterAll(async () => {
    await env?.stop();
  });

  const call = (service: "Controller" | "Node", method: string, request: object) =>
    env.client.call(service, method, request);

  /** Calls twice, as a retrying CO does: both must succeed with the same answer. */
  async function idempotent(service: "Controller" | "Node", method: string, request: object) {
    const first = await call(service, method, request);
    const again = await call(service, method, request).catch((err: ServiceError) => {
      throw new Error(`${method} failed when repeated: ${status[err.code]} ${err.details}`);
    });
    expect(again, `${method} repeated`).toEqual(first);
    return first;
  }

  async function expectCsiError(
    promise: Promise<unknown>,
    codes: status | status[],
    pattern: RegExp,
  ): Promise<ServiceError> {
    const err = await promise.then(
      (res) => {
        throw new Error(`expected ${[codes].flat().map((c) => status[c])}, got OK: ${JSON.stringify(res)}`);
      },
      (e: ServiceError) => e,
    );
    expect([codes].flat().map((c) => status[c])).toContain(status[err.code]);
    expect(err.details).toMatch(pattern);
    return err;
  }

  const stagingPathOf = (volumeId: string) =>
    join(root, "plugins/kubernetes.io/csi", DRIVER_NAME, sha256(volumeId), "globalmount");
  const podTargetOf = (pv: string) =>
    join(root, "pods", randomUUID(), "volumes/kubernetes.io~csi", pv, "mount");
  const blockStagingOf = (pv: string) => join(root, "plugins/kubernetes.io/csi/volumeDevices/staging", pv);
  const blockTargetOf = (pv: string) =>
    join(root, "plugins/kubernetes.io/csi/volumeDevices/publish", pv, randomUUID());

  interface Volume {
    pv: string;
    volumeId: string;
    capability: Capability;
  }

  /** CreateVolume, with a cleanup that detaches and deletes it if the test does not get there. */
  async function createVolume(capability: Capability, sizeGiB = 1): Promise<Volume> {
    const pv = `pvc-${randomUUID()}`;
    const created = await idempotent("Controller", "CreateVolume", {
      name: pv,
      capacity_range: { required_bytes: sizeGiB * GiB },
      volume_capabilities: [capability],
      parameters: { type: "gp3" },
    });
    const volumeId: string = created.volume.volume_id;
    expect(created.volume.capacity_bytes).toBe(sizeGiB * GiB);
    cleanups.push(async () => {
      await call("Controller", "ControllerUnpublishVolume", { volume_id: volumeId, node_id: env.instanceId });
      await call("Controller", "DeleteVolume", { volume_id: volumeId });
    });
    return { pv, volumeId, capability };
  }

  /** ControllerPublishVolume to the fake instance: the volume's loop device appears. */
  async function attach(volume: Volume): Promise<{ publishContext: Record<string, string>; device: string }> {
    const reply = await idempotent("Controller", "ControllerPublishVolume", {
      volume_id: volume.volumeId,
      node_id: env.instanceId,
      volume_capability: volume.capability,
      readonly: false,
    });
    expect(reply.publish_context.devicePath).toMatch(/^\/dev\/xvd[a-z]{2}$/);
    const device = await env.sim!.deviceOf(volume.volumeId);
    expect(device, "the attached volume's loop device").toMatch(/^\/dev\/loop\d+$/);
    return { publishContext: reply.publish_context, device: device! };
  }

  /** Stages a mount volume at its kubelet staging path (created first, as the CO does). */
  async function stage(volume: Volume, publishContext: Record<string, string>): Promise<string> {
    const staging = stagingPathOf(volume.volumeId);
    await mkdir(staging, { recursive: true });
    cleanups.push(() =>
      call("Node", "NodeUnstageVolume", { volume_id: volume.volumeId, staging_target_path: staging }),
    );
    await idempotent("Node", "NodeStageVolume", {
      volume_id: volume.volumeId,
      publish_context: publishContext,
      staging_target_path: staging,
      volume_capability: volume.capability,
    });
    return staging;
  }

  async function publish(
    volume: Volume,
    publishContext: Record<string, string>,
    staging: string,
    target: string,
    readonly = false,
  ): Promise<void> {
    cleanups.push(() =>
      call("Node", "NodeUnpublishVolume", { volume_id: volume.volumeId, target_path: target }),
    );
    await idempotent("Node", "NodePublishVolume", {
      volume_id: volume.volumeId,
      publish_context: publishContext,
      staging_target_path: staging,
      target_path: target,
      volume_capability: volume.capability,
      readonly,
    });
  }

  async function unpublish(volume: Volume, target: string): Promise<void> {
    await idempotent("Node", "NodeUnpublishVolume", { volume_id: volume.volumeId, target_path: target });
    expect(mountsAt(target), `nothing mounted at ${target}`).toEqual([]);
    expect(await pathExists(target), `NodeUnpublishVolume removed ${target}`).toBe(false);
  }

  async function unstage(volume: Volume, staging: string): Promise<void> {
    await idempotent("Node", "NodeUnstageVolume", {
      volume_id: volume.volumeId,
      staging_target_path: staging,
    });
    expect(mountsAt(staging), `nothing mounted at ${staging}`).toEqual([]);
  }

  async function detachAndDelete(volume: Volume): Promise<void> {
    await idempotent("Controller", "ControllerUnpublishVolume", {
      volume_id: volume.volumeId,
      node_id: env.instanceId,
    });
    expect(await env.sim!.deviceOf(volume.volumeId), "loop device after detach").toBeUndefined();
    expect(await pathExists(env.sim!.linkPath(volume.volumeId)), "by-id link after detach").toBe(false);
    await idempotent("Controller", "DeleteVolume", { volume_id: volume.volumeId });
  }

  const stats = async (volume: Volume, volumePath: string, staging?: string) =>
    usageOf(
      await call("Node", "NodeGetVolumeStats", {
        volume_id: volume.volumeId,
        volume_path: volumePath,
        staging_target_path: staging ?? "",
      }),
    );

  /** NodeGetVolumeHealth as kubelet calls it (both paths), or as csi-sanity does (no path). */
  const health = async (volume: Volume, publishPath = "", staging = "") => {
    // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
    const reply: any = await call("Node", "NodeGetVolumeHealth", {
      volume_id: volume.volumeId,
      volume_publish_path: publishPath,
      staging_target_path: staging,
    });
    expect(reply.volume_health.volume_id).toBe(volume.volumeId);
    return reply.volume_health.health_statuses as { status: string; reason: string; message: string }[];
  };

  describe("the kubelet sequence", () => {
    it.each(["ext4", "xfs"])(
      "%s: create, attach, stage, publish to two pods, stats, expand, tear down",
      async (fsType) => {
        const volume = await createVolume(mountCapability(fsType));
        const { volumeId } = volume;
        const { publishContext, device } = await attach(volume);

        const staging = await stage(volume, publishContext);
        const staged = mountsAt(staging);
        expect(staged, "one mount at the staging path, also after a repeated NodeStageVolume").toHaveLength(
          1,
        );
        expect(staged[0]).toMatchObject({ fsType, source: device });
        expect(blkid(device).TYPE).toBe(fsType);

        const podA = podTargetOf(volume.pv);
        const podB = podTargetOf(volume.pv);
        for (const target of [podA, podB]) {
          await publish(volume, publishContext, staging, target);
          const published = mountsAt(target);
          expect(published, `one mount at ${target}`).toHaveLength(1);
          expect(published[0]!.devNumber).toBe(staged[0]!.devNumber);
          expect(published[0]!.mountOptions).toContain("rw");
        }
        await writeFile(join(podA, "hello.txt"), "written through pod A\n");
        expect(await readFile(join(podB, "hello.txt"), "utf8")).toBe("written through pod A\n");

        const before = await stats(volume, podA, staging);
        expect(await health(volume, podA, staging)).toEqual([]);
        expect(before.bytes.total, "BYTES total = what statfs (df) shows").toBe(await statfsBytes(podA));
        expect(before.bytes.total).toBeGreaterThan(0.85 * GiB);
        expect(before.bytes.total).toBeLessThanOrEqual(GiB);
        expect(before.inodes?.total).toBeGreaterThan(0);
        expect(before.inodes?.used).toBeGreaterThan(0);
        await writeFilled(join(podA, "50MiB.bin"), 50 * MiB);
        const after = await stats(volume, podB, staging);
        expect(after.bytes.used - before.bytes.used).toBeGreaterThanOrEqual(49 * MiB);
        expect(before.bytes.available - after.bytes.available).toBeGreaterThanOrEqual(49 * MiB);
        expect(after.inodes!.used).toBeGreaterThan(before.inodes!.used);

        const expanded = await idempotent("Controller", "ControllerExpandVolume", {
          volume_id: volumeId,
          capacity_range: { required_bytes: 2 * GiB },
          volume_capability: volume.capability,
        });
        expect(expanded).toEqual({ capacity_bytes: 2 * GiB, node_expansion_required: true });
        expect(blockdevSize(device), "the attached device grew").toBe(2 * GiB);
        const expandRequest = {
          volume_id: volumeId,
          volume_path: podA,
          staging_target_path: staging,
          capacity_range: { required_bytes: 2 * GiB },
          volume_capability: volume.capability,
        };
        if (fsType === "ext4" && !canGrowExt4Online()) {
          console.warn(
            "[ebs-node.test.ts] ext4 cannot grow online here (no CAP_SYS_RESOURCE in CapBnd): " +
              "checking that NodeExpandVolume fails with a clear error instead",
          );
          await expectCsiError(
            call("Node", "NodeExpandVolume", expandRequest),
            [status.INTERNAL, status.FAILED_PRECONDITION],
            /CAP_SYS_RESOURCE/,
          );
          expect(await statfsBytes(podA), "the filesystem is untouched").toBe(before.bytes.total);
        } else {
          const grown = await idempotent("Node", "NodeExpandVolume", expandRequest);
          expect(grown.capacity_bytes).toBe(2 * GiB);
          const total = await statfsBytes(podA);
          expect(total, "statfs: the mounted filesystem grew").toBeGreaterThan(1.85 * GiB);
          expect(await statfsBytes(podB)).toBe(total);
          expect((await stats(volume, podA, staging)).bytes.total).toBe(total);
        }
        expect(await readFile(join(podB, "hello.txt"), "utf8")).toBe("written through pod A\n");
        expect((await stat(join(podA, "50MiB.bin"))).size).toBe(50 * MiB);

        await unpublish(volume, podA);
        await unpublish(volume, podB);
        await unstage(volume, staging);
        // The CO removes the staging directory; a retried NodeUnstageVolume still succeeds.
        await rmdir(staging);
        await call("Node", "NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging });
        await detachAndDelete(volume);
      },
    );

    it.each(["ext4", "xfs"])(
      "%s: expanded while detached, the next NodeStageVolume grows the filesystem",
      async (fsType) => {
        const volume = await createVolume(mountCapability(fsType));
        const staging = await stage(volume, (await attach(volume)).publishContext);
        await writeFile(join(staging, "kept.txt"), "from before the expansion\n");
        const sizeBefore = await statfsBytes(staging);
        await unstage(volume, staging);
        await idempotent("Controller", "ControllerUnpublishVolume", {
          volume_id: volume.volumeId,
          node_id: env.instanceId,
        });

        const expanded = await idempotent("Controller", "ControllerExpandVolume", {
          volume_id: volume.volumeId,
          capacity_range: { required_bytes: 2 * GiB },
          volume_capability: volume.capability,
        });
        expect(expanded).toEqual({ capacity_bytes: 2 * GiB, node_expansion_required: true });
        const { publishContext, device } = await attach(volume);
        expect(blockdevSize(device)).toBe(2 * GiB);

        const stageRequest = {
          volume_id: volume.volumeId,
          publish_context: publishContext,
          staging_target_path: staging,
          volume_capability: volume.capability,
        };
        if (fsType === "ext4" && !canGrowExt4Online()) {
          console.warn(
            "[ebs-node.test.ts] ext4 cannot grow online here (no CAP_SYS_RESOURCE in CapBnd): " +
              "checking that NodeStageVolume of the expanded volume fails with a clear error instead",
          );
          await expectCsiError(
            call("Node", "NodeStageVolume", stageRequest),
            [status.INTERNAL, status.FAILED_PRECONDITION],
            /CAP_SYS_RESOURCE/,
          );
        } else {
          await idempotent("Node", "NodeStageVolume", stageRequest);
          expect(await statfsBytes(staging), "statfs: grown at stage time").toBeGreaterThan(
            sizeBefore + 0.9 * GiB,
          );
        }
        expect(blkid(device).TYPE).toBe(fsType);
        if (mountsAt(staging).length > 0) {
          expect(await readFile(join(staging, "kept.txt"), "utf8")).toBe("from before the expansion\n");
        }
        await unstage(volume, staging);
        await detachAndDelete(volume);
      },
    );

    it("raw block: publish the device to two files, bytes through one are read through the other, expand", async () => {
      const volume = await createVolume(blockCapability());
      const { volumeId } = volume;
      const { publishContext, device } = await attach(volume);

      // kubelet creates the block staging directory and calls NodeStageVolume; nothing is mounted.
      const staging = blockStagingOf(volume.pv);
      await mkdir(staging, { recursive: true });
      await idempotent("Node", "NodeStageVolume", {
        volume_id: volumeId,
        publish_context: publishContext,
        staging_target_path: staging,
        volume_capability: volume.capability,
      });
      expect(mountsAt(staging)).toEqual([]);
      expect(blkid(device), "a raw block volume is never formatted").toEqual({});

      const targetA = blockTargetOf(volume.pv);
      const targetB = blockTargetOf(volume.pv);
      const deviceInfo = await stat(device);
      for (const target of [targetA, targetB]) {
        await publish(volume, publishContext, staging, target);
        const info = await stat(target);
        expect(info.isBlockDevice(), `${target} is a block device`).toBe(true);
        expect(info.rdev).toBe(deviceInfo.rdev);
        expect(blockdevSize(target)).toBe(GiB);
        expect(mountsAt(target)).toHaveLength(1);
      }

      const offset = 300 * MiB + 3 * 4096 + 17;
      const data = Buffer.from(`raw bytes written through ${targetA} at ${offset}`);
      await pwrite(targetA, offset, data);
      expect(await pread(targetB, offset, data.length)).toEqual(data);

      const usage = await stats(volume, targetA, staging);
      expect(usage.bytes.total).toBe(GiB);
      expect(await health(volume, targetA, staging)).toEqual([]);
      expect(await health(volume), "found from the device, no path given").toEqual([]);

      const expanded = await idempotent("Controller", "ControllerExpandVolume", {
        volume_id: volumeId,
        capacity_range: { required_bytes: 2 * GiB },
        volume_capability: volume.capability,
      });
      expect(expanded).toEqual({ capacity_bytes: 2 * GiB, node_expansion_required: false });
      expect(blockdevSize(targetA), "the published block device grew").toBe(2 * GiB);
      const grown = await idempotent("Node", "NodeExpandVolume", {
        volume_id: volumeId,
        volume_path: targetA,
        staging_target_path: staging,
        capacity_range: { required_bytes: 2 * GiB },
        volume_capability: volume.capability,
      });
      expect(grown.capacity_bytes).toBe(2 * GiB);
      expect((await stats(volume, targetB, staging)).bytes.total).toBe(2 * GiB);
      const beyond = Buffer.from("written past the old end of the volume");
      await pwrite(targetB, 1.5 * GiB, beyond);
      expect(await pread(targetA, 1.5 * GiB, beyond.length)).toEqual(beyond);
      expect(await pread(targetA, offset, data.length)).toEqual(data);

      // Read-only: the same bytes, but a write through the target fails. A read-only bind mount
      // alone would not stop it (device nodes ignore it): the driver publishes a read-only view.
      const targetRo = blockTargetOf(volume.pv);
      await publish(volume, publishContext, staging, targetRo, true);
      expect(loopsOver(device), "one read-only view of the device").toHaveLength(1);
      expect(await pread(targetRo, offset, data.length)).toEqual(data);
      const write = pwrite(targetRo, offset, Buffer.from("must not land"));
      await expect(write, "a write through a read-only block publication").rejects.toMatchObject({
        code: expect.stringMatching(/^(EPERM|EROFS|EACCES)$/),
      });
      expect(await pread(targetA, offset, data.length), "the volume's bytes are unchanged").toEqual(data);
      await unpublish(volume, targetRo);
      // The kernel lets go of a detached loop device a moment after its last user closed it.
      for (let i = 0; i < 50 && loopsOver(device).length > 0; i++)
        await new Promise((r) => setTimeout(r, 100));
      expect(loopsOver(device), "the read-only view is gone after NodeUnpublishVolume").toEqual([]);

      await unpublish(volume, targetA);
      await unpublish(volume, targetB);
      await idempotent("Node", "NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging });
      await detachAndDelete(volume);
    });
  });

  describe("errors", () => {
    let volume: Volume;
    let publishContext: Record<string, string>;
    let staging: string;
    let target: string;
    let sharedCleanups: (() => Promise<unknown>)[] = [];

    // One ext4 volume staged and published read-write at `target`, shared by these tests.
    beforeAll(async () => {
      volume = await createVolume(mountCapability("ext4"));
      ({ publishContext } = await attach(volume));
      staging = await stage(volume, publishContext);
      target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      await writeFile(join(target, "data.txt"), "pod data\n");
      // Torn down after the last test here, not by the afterEach of the first one.
      sharedCleanups = cleanups;
      cleanups = [];
    });
    afterAll(async () => {
      for (const cleanup of sharedCleanups.reverse()) await cleanup().catch(() => undefined);
    });

    const publishRequest = (targetPath: string, readonly: boolean) => ({
      volume_id: volume.volumeId,
      publish_context: publishContext,
      staging_target_path: staging,
      target_path: targetPath,
      volume_capability: volume.capability,
      readonly,
    });

    it("NodePublishVolume to a published target with the other readonly: ALREADY_EXISTS, mount unchanged", async () => {
      await expectCsiError(
        call("Node", "NodePublishVolume", publishRequest(target, true)),
        status.ALREADY_EXISTS,
        /target_path/,
      );
      expect(mountsAt(target)).toHaveLength(1);
      expect(mountsAt(target)[0]!.mountOptions).toContain("rw");
      await writeFile(join(target, "still-writable.txt"), "yes\n");

      const readOnlyTarget = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, readOnlyTarget, true);
      expect(mountsAt(readOnlyTarget)[0]!.mountOptions).toContain("ro");
      expect(await readFile(join(readOnlyTarget, "data.txt"), "utf8")).toBe("pod data\n");
      await expect(writeFile(join(readOnlyTarget, "nope.txt"), "x")).rejects.toMatchObject({ code: "EROFS" });
      await expectCsiError(
        call("Node", "NodePublishVolume", publishRequest(readOnlyTarget, false)),
        status.ALREADY_EXISTS,
        /target_path/,
      );
      expect(mountsAt(readOnlyTarget)[0]!.mountOptions).toContain("ro");
      await unpublish(volume, readOnlyTarget);
    });

    it("NodePublishVolume to a published mount target as a raw block volume: ALREADY_EXISTS", async () => {
      await expectCsiError(
        call("Node", "NodePublishVolume", {
          ...publishRequest(target, false),
          volume_capability: blockCapability(),
        }),
        status.ALREADY_EXISTS,
        /target_path/,
      );
      expect(mountsAt(target)).toHaveLength(1);
      expect((await stat(target)).isDirectory()).toBe(true);
    });

    it("NodeStageVolume at a staged path with another fs type or another volume: ALREADY_EXISTS", async () => {
      await expectCsiError(
        call("Node", "NodeStageVolume", {
          volume_id: volume.volumeId,
          publish_context: publishContext,
          staging_target_path: staging,
          volume_capability: mountCapability("xfs"),
        }),
        status.ALREADY_EXISTS,
        /staging_target_path/,
      );
      const other = await createVolume(mountCapability("ext4"));
      const attached = await attach(other);
      await expectCsiError(
        call("Node", "NodeStageVolume", {
          volume_id: other.volumeId,
          publish_context: attached.publishContext,
          staging_target_path: staging,
          volume_capability: other.capability,
        }),
        status.ALREADY_EXISTS,
        /staging_target_path/,
      );
      expect(mountsAt(staging)).toHaveLength(1);
      expect(blkid(attached.device), "the other volume was not formatted").toEqual({});
      expect(await readFile(join(target, "data.txt"), "utf8")).toBe("pod data\n");
    });

    it("NodeExpandVolume beyond the device's size: an error, the filesystem untouched", async () => {
      const before = await statfsBytes(target);
      await expectCsiError(
        call("Node", "NodeExpandVolume", {
          volume_id: volume.volumeId,
          volume_path: target,
          capacity_range: { required_bytes: 10 * GiB },
          volume_capability: volume.capability,
        }),
        [status.UNAVAILABLE, status.OUT_OF_RANGE],
        new RegExp(volume.volumeId),
      );
      expect(await statfsBytes(target)).toBe(before);
    });

    it("NodePublishVolume before NodeStageVolume: FAILED_PRECONDITION, nothing mounted or created", async () => {
      const other = await createVolume(mountCapability("ext4"));
      const attached = await attach(other);
      const otherStaging = stagingPathOf(other.volumeId);
      await mkdir(otherStaging, { recursive: true });
      const otherTarget = podTargetOf(other.pv);
      await expectCsiError(
        call("Node", "NodePublishVolume", {
          volume_id: other.volumeId,
          publish_context: attached.publishContext,
          staging_target_path: otherStaging,
          target_path: otherTarget,
          volume_capability: other.capability,
        }),
        status.FAILED_PRECONDITION,
        /staging_target_path/,
      );
      expect(mountsAt(otherTarget)).toEqual([]);
      expect(await pathExists(otherTarget)).toBe(false);
      expect(blkid(attached.device), "the device was not formatted").toEqual({});
    });

    it("NodeStageVolume of a volume that is not attached: NOT_FOUND naming the volume (after ~10 s)", async () => {
      const detached = await createVolume(mountCapability("ext4"));
      const detachedStaging = stagingPathOf(detached.volumeId);
      await mkdir(detachedStaging, { recursive: true });
      const started = Date.now();
      await expectCsiError(
        call("Node", "NodeStageVolume", {
          volume_id: detached.volumeId,
          staging_target_path: detachedStaging,
          volume_capability: detached.capability,
        }),
        status.NOT_FOUND,
        new RegExp(detached.volumeId),
      );
      console.log(
        `[ebs-node.test.ts] NodeStageVolume of an unattached volume: NOT_FOUND after ${Date.now() - started} ms`,
      );
      expect(mountsAt(detachedStaging)).toEqual([]);
    });

    const BAD_PATHS = ["a/b", "/a/../b", "/a//b", "/a/b\0c"];

    it.each(BAD_PATHS)("path %j: INVALID_ARGUMENT naming the field", async (bad) => {
      const fresh = podTargetOf(volume.pv);
      const cases: [string, object, string][] = [
        [
          "NodeStageVolume",
          {
            volume_id: volume.volumeId,
            publish_context: publishContext,
            staging_target_path: bad,
            volume_capability: volume.capability,
          },
          "staging_target_path",
        ],
        [
          "NodeUnstageVolume",
          { volume_id: volume.volumeId, staging_target_path: bad },
          "staging_target_path",
        ],
        ["NodePublishVolume", publishRequest(bad, false), "target_path"],
        [
          "NodePublishVolume",
          { ...publishRequest(fresh, false), staging_target_path: bad },
          "staging_target_path",
        ],
        ["NodeUnpublishVolume", { volume_id: volume.volumeId, target_path: bad }, "target_path"],
      ];
      for (const [method, request, field] of cases) {
        const outcome = await call("Node", method, request).then(
          () => "OK",
          (err: ServiceError) => `${status[err.code]} ${err.details}`,
        );
        expect(outcome, `${method} with ${field} ${JSON.stringify(bad)}`).toMatch(
          new RegExp(`^INVALID_ARGUMENT ${field}\\b`),
        );
      }
      expect(await pathExists(fresh)).toBe(false);
      expect(mountsAt(target), "the published volume is untouched").toHaveLength(1);
      expect(mountsAt(staging)).toHaveLength(1);
    });

    it("NodeGetVolumeStats and NodeExpandVolume on an unknown path: NOT_FOUND", async () => {
      const emptyDir = join(root, "pods", randomUUID(), "not-a-mount");
      await mkdir(emptyDir, { recursive: true });
      for (const volumePath of [join(root, "no-such-path"), emptyDir]) {
        await expectCsiError(
          call("Node", "NodeGetVolumeStats", { volume_id: volume.volumeId, volume_path: volumePath }),
          status.NOT_FOUND,
          /volume_path/,
        );
        await expectCsiError(
          call("Node", "NodeExpandVolume", {
            volume_id: volume.volumeId,
            volume_path: volumePath,
            capacity_range: { required_bytes: GiB },
          }),
          status.NOT_FOUND,
          /volume_path/,
        );
      }
    });

    it("NodeGetVolumeStats and NodeExpandVolume with a volume id that is not the one at volume_path: NOT_FOUND", async () => {
      // Another volume, created but not attached here, and an id no volume has.
      const other = await createVolume(mountCapability("ext4"));
      for (const volumeId of [other.volumeId, UNKNOWN_VOLUME]) {
        await expectCsiError(
          call("Node", "NodeExpandVolume", {
            volume_id: volumeId,
            volume_path: target,
            capacity_range: { required_bytes: GiB },
          }),
          status.NOT_FOUND,
          new RegExp(volumeId),
        );
        await expectCsiError(
          call("Node", "NodeGetVolumeStats", { volume_id: volumeId, volume_path: target }),
          status.NOT_FOUND,
          new RegExp(volumeId),
        );
      }
    });
  });

  describe("data safety", () => {
    it("a device holding xfs is not staged as ext4: FAILED_PRECONDITION naming both, the file survives", async () => {
      const volume = await createVolume(mountCapability("xfs"));
      const { publishContext, device } = await attach(volume);
      const staging = await stage(volume, publishContext);
      const target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      await writeFile(join(target, "precious.txt"), "must survive\n");
      await unpublish(volume, target);
      await unstage(volume, staging);

      await expectCsiError(
        call("Node", "NodeStageVolume", {
          volume_id: volume.volumeId,
          publish_context: publishContext,
          staging_target_path: staging,
          volume_capability: mountCapability("ext4"),
        }),
        status.FAILED_PRECONDITION,
        /(?=.*\bxfs\b)(?=.*\bext4\b)/,
      );
      expect(mountsAt(staging)).toEqual([]);
      expect(blkid(device).TYPE).toBe("xfs");

      await stage(volume, publishContext);
      expect(await readFile(join(staging, "precious.txt"), "utf8")).toBe("must survive\n");
      await unstage(volume, staging);
      await detachAndDelete(volume);
    });

    it("a device with a partition table is never formatted: NodeStageVolume fails, the table stays", async () => {
      const volume = await createVolume(mountCapability("ext4"));
      const { publishContext, device } = await attach(volume);
      // A DOS partition table: one Linux partition from sector 2048, and the 0x55AA signature.
      const mbr = Buffer.alloc(512);
      mbr.set([0x00, 0, 0, 0, 0x83, 0, 0, 0], 446);
      mbr.writeUInt32LE(2048, 454);
      mbr.writeUInt32LE(100_000, 458);
      mbr.set([0x55, 0xaa], 510);
      await pwrite(device, 0, mbr);
      expect(blkid(device).PTTYPE, "precondition: blkid sees the table").toBe("dos");

      const staging = stagingPathOf(volume.volumeId);
      await mkdir(staging, { recursive: true });
      for (const fsType of ["ext4", "xfs"]) {
        await expectCsiError(
          call("Node", "NodeStageVolume", {
            volume_id: volume.volumeId,
            publish_context: publishContext,
            staging_target_path: staging,
            volume_capability: mountCapability(fsType),
          }),
          status.FAILED_PRECONDITION,
          /partition table/,
        );
        expect(mountsAt(staging)).toEqual([]);
        expect(blkid(device)).toMatchObject({ PTTYPE: "dos" });
        expect(blkid(device).TYPE).toBeUndefined();
        expect(await pread(device, 0, 512)).toEqual(mbr);
      }
      await detachAndDelete(volume);
    });
    it("NodeUnpublishVolume never deletes what lies below target_path (a mount inside it)", async () => {
      const volume = await createVolume(mountCapability("ext4"));
      const { publishContext } = await attach(volume);
      const staging = await stage(volume, publishContext);
      await writeFile(join(staging, "keep.txt"), "volume data\n");
      // A target that is not itself a mount point, with the volume mounted below it.
      const target = podTargetOf(volume.pv);
      const nested = join(target, "nested");
      await mkdir(nested, { recursive: true });
      execFileSync("mount", ["--bind", "--", staging, nested]);
      cleanups.push(async () => execFileSync("umount", ["--", nested]));

      const outcome = await call("Node", "NodeUnpublishVolume", {
        volume_id: volume.volumeId,
        target_path: target,
      }).then(
        () => "OK",
        (err: ServiceError) => `${status[err.code]}: ${err.details}`,
      );
      console.log(`[ebs-node.test.ts] NodeUnpublishVolume over a nested mount: ${outcome}`);
      expect(await readFile(join(staging, "keep.txt"), "utf8").catch(() => "<deleted>")).toBe(
        "volume data\n",
      );
    });
  });

  describe("NodeGetVolumeHealth", () => {
    it("ext4 made read-only by a filesystem error (errors=remount-ro): DEGRADED, errors recorded", async (ctx) => {
      const volume = await createVolume(mountCapability("ext4", ["errors=remount-ro"]));
      const { publishContext, device } = await attach(volume);
      const trigger = `/sys/fs/ext4/${basename(device)}/trigger_fs_error`;
      const staging = await stage(volume, publishContext);
      expect(mountsAt(staging)[0]!.superOptions).toContain("errors=remount-ro");
      const target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      expect(await health(volume, target, staging)).toEqual([]);
      if (!existsSync(trigger)) {
        console.warn(
          `[ebs-node.test.ts] ${trigger} does not exist on this kernel: cannot provoke an ext4 error`,
        );
        ctx.skip();
      }

      await writeFile(trigger, "1");
      await expect(writeFile(join(target, "after-error.txt"), "x")).rejects.toMatchObject({ code: "EROFS" });
      for (const issues of [await health(volume, target, staging), await health(volume)]) {
        expect(issues.map((i) => [i.status, i.reason])).toEqual([
          ["DEGRADED", "ReadOnlyAfterError"],
          ["DEGRADED", "FilesystemErrorsRecorded"],
        ]);
        expect(issues[0]!.message).toMatch(/read-only after a filesystem error/);
      }
      // Still readable: the figures are still reported.
      expect((await stats(volume, target, staging)).bytes.total).toBeGreaterThan(0);

      await unpublish(volume, target);
      await unstage(volume, staging);
      await detachAndDelete(volume);
    });

    it("xfs shut down (xfs_io -x -c shutdown): INACCESSIBLE, with or without paths", async () => {
      const volume = await createVolume(mountCapability("xfs"));
      const { publishContext } = await attach(volume);
      const staging = await stage(volume, publishContext);
      const target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      expect(await health(volume, target, staging)).toEqual([]);

      execFileSync("xfs_io", ["-x", "-c", "shutdown", staging]);
      await expect(stat(join(target, "."))).rejects.toMatchObject({ code: "EIO" });
      for (const issues of [
        await health(volume, target, staging),
        await health(volume, "", staging),
        await health(volume),
      ]) {
        expect(issues).toEqual([
          { status: "INACCESSIBLE", reason: "FilesystemShutDown", message: expect.stringMatching(/EIO/) },
        ]);
      }

      await unpublish(volume, target);
      await unstage(volume, staging);
      await detachAndDelete(volume);
    });

    it("the disk is lost while mounted (by-id link gone, loop device detached): INACCESSIBLE; teardown still works", async () => {
      const volume = await createVolume(mountCapability("ext4"));
      const { publishContext, device } = await attach(volume);
      const staging = await stage(volume, publishContext);
      const target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      expect(await health(volume, target, staging)).toEqual([]);

      await stat(env.sim!.linkPath(volume.volumeId)); // exists until now
      execFileSync("rm", ["--", env.sim!.linkPath(volume.volumeId)]);
      // Still mounted, so the kernel only marks it for autoclear: it goes away at the last unmount.
      execFileSync("losetup", ["--detach", device]);
      expect(await health(volume, target, staging)).toEqual([
        {
          status: "INACCESSIBLE",
          reason: "DeviceGone",
          message: expect.stringMatching(new RegExp(volume.volumeId)),
        },
      ]);
      // Without a path nothing on this node names the volume any more.
      await expectCsiError(
        call("Node", "NodeGetVolumeHealth", { volume_id: volume.volumeId }),
        status.NOT_FOUND,
        /not attached/,
      );

      await unpublish(volume, target);
      await unstage(volume, staging);
      expect(await env.sim!.deviceOf(volume.volumeId), "autoclear freed the loop device").toBeUndefined();
      await detachAndDelete(volume);
    });

    it("refuses what is not a volume here: no id, a path outside the kubelet directory, another volume's path, an unknown volume", async () => {
      const volume = await createVolume(mountCapability("ext4"));
      const { publishContext } = await attach(volume);
      const staging = await stage(volume, publishContext);
      const target = podTargetOf(volume.pv);
      await publish(volume, publishContext, staging, target);
      const other = await createVolume(mountCapability("ext4"));

      await expectCsiError(
        call("Node", "NodeGetVolumeHealth", { volume_publish_path: target }),
        status.INVALID_ARGUMENT,
        /volume_id/,
      );
      for (const outside of ["/etc", "relative/path", staging.replace(root, "/tmp")]) {
        await expectCsiError(
          call("Node", "NodeGetVolumeHealth", { volume_id: volume.volumeId, volume_publish_path: outside }),
          status.NOT_FOUND,
          /volume_publish_path/,
        );
      }
      for (const volumeId of [other.volumeId, UNKNOWN_VOLUME]) {
        await expectCsiError(
          call("Node", "NodeGetVolumeHealth", { volume_id: volumeId, volume_publish_path: target }),
          status.NOT_FOUND,
          new RegExp(volumeId),
        );
        await expectCsiError(
          call("Node", "NodeGetVolumeHealth", { volume_id: volumeId }),
          status.NOT_FOUND,
          new RegExp(volumeId),
        );
      }
      // Attached, not yet staged: nothing adverse known.
      await unpublish(volume, target);
      await unstage(volume, staging);
      expect(await health(volume, target, staging)).toEqual([]);

      await detachAndDelete(volume);
      await call("Controller", "DeleteVolume", { volume_id: other.volumeId });
    });
  });
});

/**
 * NodeGetVolumeStats remembers what it found at a path and checks it cheaply on later calls (the
 * path's device and inode numbers, the volume's by-id link). In process, against loop devices and
 * links made here, so that each way the path can change under a remembered answer is made exactly.
 */
describe.skipIf(skip !== undefined)("EBS node stats: a remembered path is checked again (in process)", () => {
  const VOLUME_A = "vol-0aaaaaaaaaaaaaaaa";
  const VOLUME_B = "vol-0bbbbbbbbbbbbbbbb";
  let work: string;
  let byId: string;
  let target: string;
  let blockTarget: string;
  let node: EbsNode;
  const loops: string[] = [];

  const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8" }).trim();
  const mounted = (path: string) => mountsAt(path).length > 0;
  const unmountAllAt = (path: string) => {
    while (mounted(path)) run("umount", ["--", path]);
  };
  const link = async (volumeId: string, device: string | undefined) => {
    const path = join(byId, linkName(volumeId));
    await rm(path, { force: true });
    if (device) await symlink(device, path);
  };
  const stats = (volumeId: string, path: string) =>
    node.NodeGetVolumeStats({ volume_id: volumeId, volume_path: path, staging_target_path: "" });
  const codeOf = (p: Promise<unknown>) =>
    p.then(
      () => "OK",
      (err: unknown) => (err instanceof CsiError ? status[err.code] : Promise.reject(err)),
    );
  // biome-ignore lint/suspicious/noExplicitAny: the stats reply.
  const inodesOf = (reply: any): number => reply.usage.find((u: any) => u.unit === "INODES").total;

  beforeAll(async () => {
    work = await realpath(await mkdtemp(join(tmpdir(), "ebs-stats-cache-")));
    const kubelet = join(work, "kubelet");
    byId = join(work, "by-id");
    target = join(kubelet, "pods", "p", "volumes", "kubernetes.io~csi", "pv", "mount");
    blockTarget = join(kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "publish", "pv", "pod");
    await mkdir(target, { recursive: true });
    await mkdir(join(blockTarget, ".."), { recursive: true });
    await writeFile(blockTarget, "");
    await mkdir(byId);
    // Two filesystems told apart by their inode counts.
    for (const [name, inodes] of [
      ["a.img", "4096"],
      ["b.img", "8192"],
    ] as const) {
      const image = join(work, name);
      run("truncate", ["-s", "64M", image]);
      run("mkfs.ext4", ["-q", "-F", "-N", inodes, image]);
      loops.push(run("losetup", ["--find", "--show", "--", image]));
    }
    node = new EbsNode(
      {
        deviceDir: byId,
        deviceWaitMs: 0,
        maxVolumesPerNode: 25,
        instanceId: "i-0123456789abcdef0",
        zone: "us-east-1a",
        kubeletDirs: await KubeletDirs.open([kubelet]),
      },
      createLogger("silent"),
    );
  });

  afterAll(async () => {
    if (target) unmountAllAt(target);
    if (blockTarget) unmountAllAt(blockTarget);
    for (const loop of loops) spawnSync("losetup", ["--detach", loop]);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it("after an unmount, or another filesystem mounted there, the path is NOT_FOUND for the volume", async () => {
    const [loopA, loopB] = loops as [string, string];
    await link(VOLUME_A, loopA);
    run("mount", ["-t", "ext4", "--", loopA, target]);
    const expected = (await statfs(target)).files;
    expect(inodesOf(await stats(VOLUME_A, target))).toBe(expected);
    // Answered again from what the first call found.
    expect(inodesOf(await stats(VOLUME_A, target))).toBe(expected);

    unmountAllAt(target);
    expect(await codeOf(stats(VOLUME_A, target))).toBe("NOT_FOUND");

    // Another ext4 there: its root has the same inode number, only the device number differs.
    for (const other of [
      ["-t", "ext4", "--", loopB, target],
      ["-t", "tmpfs", "-o", "size=1m,nr_inodes=77", "other", target],
    ]) {
      run("mount", ["-t", "ext4", "--", loopA, target]);
      expect(inodesOf(await stats(VOLUME_A, target))).toBe(expected);
      unmountAllAt(target);
      run("mount", other);
      expect(await codeOf(stats(VOLUME_A, target))).toBe("NOT_FOUND");
      unmountAllAt(target);
    }
  });

  it("another volume on the device the volume had (a reused device name) is not reported as the volume", async () => {
    const [loopA, loopB] = loops as [string, string];
    await link(VOLUME_A, loopA);
    await link(VOLUME_B, undefined);
    run("mount", ["-t", "ext4", "--", loopA, target]);
    const expected = (await statfs(target)).files;
    expect(inodesOf(await stats(VOLUME_A, target))).toBe(expected);

    // Volume A detached, volume B attached as the same device, mounted at the same path: as the
    // node sees it, only the links changed (the path shows the very same device and inode numbers).
    await link(VOLUME_A, undefined);
    await link(VOLUME_B, loopA);
    expect(await codeOf(stats(VOLUME_A, target))).toBe("NOT_FOUND");
    expect(inodesOf(await stats(VOLUME_B, target))).toBe(expected);

    // And A's link now leading to another device: A is still not the volume at this path.
    await link(VOLUME_A, loopB);
    expect(await codeOf(stats(VOLUME_A, target))).toBe("NOT_FOUND");
    unmountAllAt(target);
    expect(await codeOf(stats(VOLUME_B, target))).toBe("NOT_FOUND");
  });

  it("a block volume reports its device's size until its device node is unmounted", async () => {
    const [loopA] = loops as [string, string];
    await link(VOLUME_A, loopA);
    run("mount", ["--bind", "--", loopA, blockTarget]);
    for (let i = 0; i < 2; i++) {
      expect(await stats(VOLUME_A, blockTarget)).toEqual({
        usage: [{ unit: "BYTES", total: 64 * MiB, available: 0, used: 0 }],
      });
    }
    unmountAllAt(blockTarget);
    expect(await codeOf(stats(VOLUME_A, blockTarget))).toBe("NOT_FOUND");
  });
});
