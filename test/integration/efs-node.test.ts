// The EFS node service as kubelet drives it, through the driver process: real `mount -t efs`
// commands, served by the test-only mount helper (fake-mount-efs.ts) from local directories, since
// this machine has no NFS client. Needs root (mounts, /sbin/mount.efs).

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync } from "node:fs";
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CreateAccessPointCommand, DescribeAccessPointsCommand } from "@aws-sdk/client-efs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AccessPoint } from "../../src/efs/cloud.ts";
import { parseVolumeHandle } from "../../src/efs/handle.ts";
import { EfsNode } from "../../src/efs/node.ts";
import { TAG_CAPACITY } from "../../src/efs/tags.ts";
import { findMountsAt } from "../../src/host/mounts.ts";
import { KubeletDirs } from "../../src/host/paths.ts";
import { createLogger } from "../../src/log.ts";
import type { Reply } from "../harness/csi-client.ts";
import { type EfsEnv, MOUNT_EFS_PATH, startEfsEnv } from "../harness/efs-mount-helper.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.log("efs-node integration tests skipped: they mount file systems and need root");

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const capability = (mode = "MULTI_NODE_MULTI_WRITER", mountFlags: string[] = []) => ({
  mount: { fs_type: "", mount_flags: mountFlags },
  access_mode: { mode },
});

describe.skipIf(!isRoot)("EFS node (driver process, fake mount.efs)", () => {
  let env: EfsEnv;
  let fsDir: string;
  let targets = 0;
  const newTarget = () =>
    join(env.dir, "pods", `pod-${++targets}`, "volumes", "kubernetes.io~csi", "pv", "mount");

  beforeAll(async () => {
    env = await startEfsEnv({ extraArgs: ["--delete-access-point-root-dir"] });
    fsDir = env.helper!.fileSystemDir(env.fileSystemId);
    // Long: the one mount.efs path may be another test file's (the fuzz test's) for minutes.
  }, 900_000);

  afterAll(async () => {
    await env?.stop();
    // Our fake mount.efs is gone. (Whether a file is there at all is not ours to say: another test
    // file, the fuzz test, may hold the path now with its own fake, and did when this file started.)
    const now = await readFile(MOUNT_EFS_PATH, "utf8").catch(() => "");
    expect(now).not.toContain(`owner-pid=${process.pid}`);
    expect(await readFile(`${MOUNT_EFS_PATH}.aws-storage-csi-lock`, "utf8").catch(() => "")).not.toBe(
      String(process.pid),
    );
  });

  const publish = (volumeId: string, target: string, more: Record<string, unknown> = {}) =>
    env.client.call("Node", "NodePublishVolume", {
      volume_id: volumeId,
      target_path: target,
      volume_capability: capability(),
      ...more,
    });
  const unpublish = (volumeId: string, target: string) =>
    env.client.call("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target });
  const codeOf = (p: Promise<Reply>) =>
    p.then(
      () => "OK",
      (err: { code: number }) => status[err.code],
    );

  async function createAccessPoint(path: string, uid: number, gid: number, permissions: string) {
    const out = await env.aws.efs.send(
      new CreateAccessPointCommand({
        FileSystemId: env.fileSystemId,
        PosixUser: { Uid: uid, Gid: gid },
        RootDirectory: {
          Path: path,
          CreationInfo: { OwnerUid: uid, OwnerGid: gid, Permissions: permissions },
        },
      }),
    );
    return out.AccessPointId!;
  }

  async function expectPublishedThenGone(
    volumeId: string,
    target: string,
    expected: { source: string; options: string[] },
  ) {
    await publish(volumeId, target);
    expect(await findMountsAt(target)).toHaveLength(1);
    const call = (await env.helper!.calls()).at(-1)!;
    expect(call.source).toBe(expected.source);
    expect(call.target).toBe(target);
    expect(call.options).toEqual(expect.arrayContaining(expected.options));
    await unpublish(volumeId, target);
    expect(await findMountsAt(target)).toHaveLength(0);
    expect(existsSync(target)).toBe(false);
    // Unpublishing again is fine: kubelet retries.
    await unpublish(volumeId, target);
  }

  it("mounts and unmounts static volumes of all four handle forms", async () => {
    const fs = env.fileSystemId;
    await mkdir(join(fsDir, "shared", "data"), { recursive: true });
    await writeFile(join(fsDir, "at-root.txt"), "root");

    const whole = newTarget();
    await publish(fs, whole);
    expect(await readFile(join(whole, "at-root.txt"), "utf8")).toBe("root");
    await unpublish(fs, whole);
    await expectPublishedThenGone(fs, newTarget(), { source: `${fs}:/`, options: ["tls"] });
    await expectPublishedThenGone(`${fs}:/shared/data`, newTarget(), {
      source: `${fs}:/shared/data`,
      options: ["tls"],
    });

    // An access point: EFS creates its root directory at the first mount, from CreationInfo.
    const ap = await createAccessPoint("/static/app", 1234, 5678, "750");
    await expectPublishedThenGone(`${fs}::${ap}`, newTarget(), {
      source: `${fs}:/`,
      options: ["tls", `accesspoint=${ap}`],
    });
    const root = await stat(join(fsDir, "static", "app"));
    expect({ uid: root.uid, gid: root.gid, mode: (root.mode & 0o7777).toString(8) }).toEqual({
      uid: 1234,
      gid: 5678,
      mode: "750",
    });

    await mkdir(join(fsDir, "static", "app", "logs"));
    await expectPublishedThenGone(`efs:${fs}:/logs:${ap}`, newTarget(), {
      source: `${fs}:/logs`,
      options: ["tls", `accesspoint=${ap}`],
    });
  });

  it("answers NOT_FOUND for a directory the file system does not have, and leaves no target behind", async () => {
    const target = newTarget();
    expect(await codeOf(publish(`${env.fileSystemId}:/no/such/dir`, target))).toBe("NOT_FOUND");
    expect(existsSync(target)).toBe(false);
    expect(await codeOf(publish("fs-0000000000000000f", target))).toBe("NOT_FOUND");
  });

  it("lets two pods share one volume, each seeing the other's files", async () => {
    const volumeId = `${env.fileSystemId}:/shared`;
    const [a, b] = [newTarget(), newTarget()];
    await Promise.all([publish(volumeId, a), publish(volumeId, b)]);
    await writeFile(join(a, "from-a.txt"), "hello from a");
    await writeFile(join(b, "from-b.txt"), "hello from b");
    expect(await readFile(join(b, "from-a.txt"), "utf8")).toBe("hello from a");
    expect(await readFile(join(a, "from-b.txt"), "utf8")).toBe("hello from b");
    // The same publish again is fine; one pod's unpublish leaves the other's mount alone.
    await publish(volumeId, a);
    expect(await findMountsAt(a)).toHaveLength(1);
    await unpublish(volumeId, a);
    expect(await readFile(join(b, "from-a.txt"), "utf8")).toBe("hello from a");
    await unpublish(volumeId, b);
  });

  it("publishes read-only: writes fail, and a read-write publish at the same target is ALREADY_EXISTS", async () => {
    const volumeId = `${env.fileSystemId}:/shared`;
    const target = newTarget();
    await publish(volumeId, target, { readonly: true });
    expect((await env.helper!.calls()).at(-1)!.options).toContain("ro");
    expect(await readFile(join(target, "from-a.txt"), "utf8")).toBe("hello from a");
    await expect(writeFile(join(target, "nope.txt"), "x")).rejects.toMatchObject({ code: "EROFS" });
    expect(await codeOf(publish(volumeId, target, { readonly: true }))).toBe("OK");
    expect(await codeOf(publish(volumeId, target))).toBe("ALREADY_EXISTS");
    await unpublish(volumeId, target);

    // A reader-only access mode mounts read-only too.
    await publish(volumeId, target, { volume_capability: capability("MULTI_NODE_READER_ONLY") });
    await expect(writeFile(join(target, "nope.txt"), "x")).rejects.toMatchObject({ code: "EROFS" });
    await unpublish(volumeId, target);
    expect(existsSync(join(fsDir, "shared", "nope.txt"))).toBe(false);
  });

  it("refuses conflicting mount flags with INVALID_ARGUMENT naming the flag", async () => {
    const target = newTarget();
    const err = await publish(env.fileSystemId, target, {
      readonly: true,
      volume_capability: capability("MULTI_NODE_MULTI_WRITER", ["rw"]),
    }).catch((e: { code: number; details: string }) => e);
    expect(err).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect((err as { details: string }).details).toContain("mount flag rw");
    expect(existsSync(target)).toBe(false);
  });

  it("reports a static volume's total from statfs, and its health; NOT_FOUND where nothing is published", async () => {
    const target = newTarget();
    await publish(env.fileSystemId, target);
    const reply = await env.client.call("Node", "NodeGetVolumeStats", {
      volume_id: env.fileSystemId,
      volume_path: target,
    });
    const local = await statfs(fsDir);
    const { bytes, inodes } = usageOf(reply);
    // No access point, no recorded size: the total is the file system's (EFS answers 8 EiB; the
    // fake, the local disk's size).
    expect(bytes.total).toBe(local.blocks * local.bsize);
    expect(bytes.available).toBe(bytes.total - bytes.used);
    expect(inodes.total).toBe(local.files);
    for (const publishPath of [target, ""]) {
      expect(
        await env.client.call("Node", "NodeGetVolumeHealth", {
          volume_id: env.fileSystemId,
          volume_publish_path: publishPath,
        }),
      ).toEqual({ volume_health: { volume_id: env.fileSystemId, health_statuses: [] } });
    }

    const stats = (volumeId: string, path: string) =>
      codeOf(env.client.call("Node", "NodeGetVolumeStats", { volume_id: volumeId, volume_path: path }));
    expect(await stats(env.fileSystemId, "some/path")).toBe("NOT_FOUND");
    expect(await stats("not-a-volume", target)).toBe("NOT_FOUND");
    expect(await stats(env.fileSystemId, join(env.dir, "nothing-here"))).toBe("NOT_FOUND");
    await unpublish(env.fileSystemId, target);
    expect(await stats(env.fileSystemId, target)).toBe("NOT_FOUND");
  });

  const statsParams = () => ({
    provisioningMode: "efs-ap",
    fileSystemId: env.fileSystemId,
    directoryPerms: "700",
    basePath: "/stats",
  });
  const createVolume = async (name: string, bytes: number): Promise<string> => {
    const reply = await env.client.call("Controller", "CreateVolume", {
      name,
      capacity_range: { required_bytes: bytes },
      volume_capabilities: [capability()],
      parameters: statsParams(),
    });
    return reply.volume.volume_id;
  };
  const stats = async (volumeId: string, target: string, node?: EfsNode) => {
    const request = { volume_id: volumeId, volume_path: target, staging_target_path: "" };
    return usageOf(
      node
        ? await node.NodeGetVolumeStats(request)
        : await env.client.call("Node", "NodeGetVolumeStats", request),
    );
  };
  /** Asks for stats until they satisfy done: the walk and the capacity lookup run in the background. */
  async function statsUntil(
    ask: () => ReturnType<typeof stats>,
    done: (s: Awaited<ReturnType<typeof stats>>) => boolean,
  ) {
    // A time limit, not a count: on a busy machine (the fuzz test runs alongside) the walk is slow.
    let last: Awaited<ReturnType<typeof stats>> | undefined;
    const until = Date.now() + 60_000;
    while (Date.now() < until) {
      last = await ask();
      if (done(last)) return last;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`stats never got there within 60 s; last: ${JSON.stringify(last)}`);
  }
  async function writeData(path: string, bytes: number): Promise<void> {
    const file = await open(path, "w");
    try {
      for (let written = 0; written < bytes; written += MiB) await file.write(randomBytes(MiB));
      await file.sync();
    } finally {
      await file.close();
    }
  }

  it("reports the PV's capacity as the total and the volume's own usage, walked in the background", async () => {
    const [volumeId, neighbourId] = await Promise.all([
      createVolume("pvc-usage", 5 * GiB),
      createVolume("pvc-neighbour", 5 * GiB),
    ]);
    const [target, neighbour] = [newTarget(), newTarget()];
    await publish(volumeId, target);
    await publish(neighbourId, neighbour);
    try {
      expect((await stats(volumeId, target)).bytes.total).toBe(5 * GiB);
      await writeData(join(target, "data.bin"), 20 * MiB);
      // Another volume of the same file system: statfs counts it, this volume's usage must not.
      await writeData(join(neighbour, "other.bin"), 50 * MiB);

      // A restarted plugin remembers nothing: its first stats call starts the walk, and reads the
      // capacity from the access point again.
      await env.driver.stop("SIGTERM");
      await env.driver.start();
      const first = await stats(volumeId, target);
      expect(first.bytes.total).toBe(5 * GiB);
      const { bytes, inodes } = await statsUntil(
        () => stats(volumeId, target),
        (s) => s.bytes.used >= 20 * MiB,
      );
      expect(bytes.total).toBe(5 * GiB);
      expect(bytes.used).toBeLessThan(21 * MiB);
      expect(bytes.available).toBe(5 * GiB - bytes.used);
      // The root directory and data.bin.
      expect(inodes.used).toBe(2);
      const local = await statfs(fsDir);
      expect(inodes.total).toBe(local.files);
      expect(inodes.available).toBe(inodes.total - 2);
      // statfs, what the node reported as used before, counts the neighbour's 50 MiB too.
      expect((local.blocks - local.bfree) * local.bsize).toBeGreaterThan(bytes.used + 50 * MiB);
    } finally {
      await unpublish(volumeId, target);
      await unpublish(neighbourId, neighbour);
    }
    await env.client.call("Controller", "DeleteVolume", { volume_id: volumeId });
    await env.client.call("Controller", "DeleteVolume", { volume_id: neighbourId });
  });

  it("reports an expansion once the capacity TTL ran out (TTL 0), and keeps re-walking the volume", async () => {
    const volumeId = await createVolume("pvc-expand", 5 * GiB);
    const accessPointId = parseVolumeHandle(volumeId).accessPointId!;
    const target = newTarget();
    await publish(volumeId, target);
    // A node service in this process, with the options the driver process has no flags for yet.
    const node = new EfsNode({
      instanceId: env.instanceId,
      zone: env.zone,
      region: env.aws.region,
      kubeletDirs: await KubeletDirs.open([env.dir]),
      log: createLogger("silent"),
      efs: { describeAccessPoint: describeAccessPointDirectly },
      capacityTtlMs: 0,
      usageRefreshMs: 100,
    });
    try {
      expect((await stats(volumeId, target, node)).bytes.total).toBe(5 * GiB);

      const expanded = await env.client.call("Controller", "ControllerExpandVolume", {
        volume_id: volumeId,
        capacity_range: { required_bytes: 8 * GiB },
      });
      expect(Number(expanded.capacity_bytes)).toBe(8 * GiB);
      expect((await describeAccessPointDirectly(accessPointId)).tags[TAG_CAPACITY]).toBe(String(8 * GiB));
      // The expired value answers once more while the lookup runs; the next call has the new one.
      await statsUntil(
        () => stats(volumeId, target, node),
        (s) => s.bytes.total === 8 * GiB,
      );
      // A retried CreateVolume with the original size still finds its volume, now 8 GiB.
      const again = await env.client.call("Controller", "CreateVolume", {
        name: "pvc-expand",
        capacity_range: { required_bytes: 5 * GiB },
        volume_capabilities: [capability()],
        parameters: statsParams(),
      });
      expect(again.volume.volume_id).toBe(volumeId);
      expect(Number(again.volume.capacity_bytes)).toBe(8 * GiB);

      // Data written after the first walk shows up at a later one.
      await statsUntil(
        () => stats(volumeId, target, node),
        (s) => s.inodes.used === 1,
      );
      await writeData(join(target, "later.bin"), 20 * MiB);
      const { bytes } = await statsUntil(
        () => stats(volumeId, target, node),
        (s) => s.bytes.used >= 20 * MiB,
      );
      expect(bytes).toEqual({ total: 8 * GiB, used: bytes.used, available: 8 * GiB - bytes.used });
    } finally {
      // Stops its walks first: one could keep the mount busy.
      await node.close();
      await unpublish(volumeId, target);
    }
    await env.client.call("Controller", "DeleteVolume", { volume_id: volumeId });
  });

  async function describeAccessPointDirectly(accessPointId: string): Promise<AccessPoint> {
    const out = await env.aws.efs.send(new DescribeAccessPointsCommand({ AccessPointId: accessPointId }));
    const ap = out.AccessPoints![0]!;
    return {
      id: ap.AccessPointId!,
      fileSystemId: ap.FileSystemId!,
      rootDirectory: { path: ap.RootDirectory?.Path ?? "/" },
      tags: Object.fromEntries((ap.Tags ?? []).map((t) => [t.Key!, t.Value ?? ""])),
    };
  }

  it("deletes exactly the access point's root directory with the volume", async () => {
    const params = {
      provisioningMode: "efs-ap",
      fileSystemId: env.fileSystemId,
      directoryPerms: "700",
      basePath: "/dynamic",
    };
    const create = (name: string) =>
      env.client.call("Controller", "CreateVolume", {
        name,
        capacity_range: { required_bytes: 5 * GiB },
        volume_capabilities: [capability()],
        parameters: params,
      });
    const [doomed, kept] = await Promise.all([create("pvc-doomed"), create("pvc-kept")]);
    const ids = [doomed.volume.volume_id, kept.volume.volume_id] as string[];
    // Publishing creates each root directory (EFS does at the first mount); give each some data.
    for (const volumeId of ids) {
      const target = newTarget();
      await publish(volumeId, target);
      await mkdir(join(target, "nested", "deeper"), { recursive: true });
      await writeFile(join(target, "nested", "deeper", "data.txt"), volumeId);
      await unpublish(volumeId, target);
    }
    await writeFile(join(fsDir, "dynamic", "not-a-volume.txt"), "keep me");
    expect((await readdir(join(fsDir, "dynamic"))).sort()).toEqual([
      "not-a-volume.txt",
      "pvc-doomed",
      "pvc-kept",
    ]);

    await env.client.call("Controller", "DeleteVolume", { volume_id: ids[0] });

    expect((await readdir(join(fsDir, "dynamic"))).sort()).toEqual(["not-a-volume.txt", "pvc-kept"]);
    expect(await readFile(join(fsDir, "dynamic", "pvc-kept", "nested", "deeper", "data.txt"), "utf8")).toBe(
      ids[1],
    );
    expect(await readFile(join(fsDir, "at-root.txt"), "utf8")).toBe("root");
    const left = await env.aws.efs.send(new DescribeAccessPointsCommand({ FileSystemId: env.fileSystemId }));
    expect(left.AccessPoints?.map((ap) => ap.RootDirectory?.Path)).not.toContain("/dynamic/pvc-doomed");
    // The controller's temporary mount of the file system root is gone, and so is its directory.
    expect((await readdir(join(env.dir, "tmp"))).filter((d) => d.startsWith("efs-root-"))).toEqual([]);
    expect(env.driver.stderr).toContain("deleted root directory");
    // Deleting again is fine (the access point is gone).
    await env.client.call("Controller", "DeleteVolume", { volume_id: ids[0] });
  });
});

interface Usage {
  total: number;
  used: number;
  available: number;
}

/** The BYTES and INODES entries of a NodeGetVolumeStats reply, as numbers. */
function usageOf(reply: { usage: { unit: string; total: unknown; used: unknown; available: unknown }[] }): {
  bytes: Usage;
  inodes: Usage;
} {
  const entry = (unit: string): Usage => {
    const u = reply.usage.find((x) => x.unit === unit);
    if (!u) throw new Error(`no ${unit} in ${JSON.stringify(reply)}`);
    return { total: Number(u.total), used: Number(u.used), available: Number(u.available) };
  };
  return { bytes: entry("BYTES"), inodes: entry("INODES") };
}

/**
 * A file system whose server never answers, for real: a FUSE mount whose daemon never reads
 * /dev/fuse. Every statfs on it blocks, as on an NFS mount of an EFS server that went away.
 */
async function mountDeadServer(target: string): Promise<() => Promise<void>> {
  const fuse = openSync("/dev/fuse", "r+");
  const mount = spawnSync(
    "mount",
    // -i: the kernel itself, not a mount.fuse helper (fuse3 installs one that would run the source).
    ["-i", "-t", "fuse", "-o", "fd=3,rootmode=40000,user_id=0,group_id=0", "dead-efs-server", target],
    { stdio: ["ignore", "pipe", "pipe", fuse], timeout: 10_000 },
  );
  if (mount.status !== 0) {
    closeSync(fuse);
    throw new Error(`mounting a FUSE file system failed: ${mount.stderr}`);
  }
  return async () => {
    spawnSync("umount", ["--lazy", "--", target], { timeout: 10_000 });
    closeSync(fuse); // aborts the connection: anything still waiting on it fails
  };
}

/** An EFS node service in this process, on kubelet directory `kubelet`, without efs-utils or AWS. */
async function inProcessNode(kubelet: string, extra: { statsTimeoutMs?: number } = {}): Promise<EfsNode> {
  return new EfsNode({
    instanceId: "i-0123456789abcdef0",
    zone: "us-east-1a",
    region: "us-east-1",
    kubeletDirs: await KubeletDirs.open([kubelet]),
    log: createLogger("silent"),
    efsHelperPath: "/nonexistent/mount.efs",
    ...extra,
  });
}

/** Where kubelet publishes a pod's volume below `kubelet`. */
const podVolumePath = (kubelet: string) =>
  join(kubelet, "pods", "p", "volumes", "kubernetes.io~csi", "pv", "mount");

describe.skipIf(!isRoot || !existsSync("/dev/fuse"))(
  "EFS node health (in process, a FUSE mount that never answers)",
  () => {
    it("NodeGetVolumeHealth: INACCESSIBLE within the statfs deadline; stats UNAVAILABLE; NOT_FOUND and INVALID_ARGUMENT where due", async () => {
      const kubelet = await mkdtemp(join(tmpdir(), "efs-health-"));
      const node = await inProcessNode(kubelet, { statsTimeoutMs: 1000 });
      const FS = "fs-0123456789abcdef0";
      const target = podVolumePath(kubelet);
      await mkdir(target, { recursive: true });
      const codeOf = (p: Promise<unknown>) =>
        p.then(
          () => "OK",
          (err: { code: number }) => status[err.code],
        );
      try {
        // Nothing mounted yet, nothing else known: healthy.
        expect(
          await node.NodeGetVolumeHealth({
            volume_id: FS,
            volume_publish_path: target,
            staging_target_path: "",
          }),
        ).toEqual({
          volume_health: { volume_id: FS, health_statuses: [] },
        });
        const release = await mountDeadServer(target);
        try {
          const started = Date.now();
          const reply = await node.NodeGetVolumeHealth({
            volume_id: FS,
            volume_publish_path: target,
            staging_target_path: "",
          });
          const tookMs = Date.now() - started;
          expect(reply.volume_health?.health_statuses).toEqual([
            {
              status: "INACCESSIBLE",
              reason: "ServerNotResponding",
              message: expect.stringMatching(/did not answer statfs within 1 s/),
            },
          ]);
          expect(tookMs, "answered within the statfs deadline").toBeLessThan(5000);
          expect(
            await codeOf(
              node.NodeGetVolumeStats({ volume_id: FS, volume_path: target, staging_target_path: "" }),
            ),
          ).toBe("UNAVAILABLE");
        } finally {
          await release();
        }
        expect(
          await codeOf(
            node.NodeGetVolumeHealth({ volume_id: "", volume_publish_path: "", staging_target_path: "" }),
          ),
        ).toBe("INVALID_ARGUMENT");
        expect(
          await codeOf(
            node.NodeGetVolumeHealth({
              volume_id: "not-a-handle",
              volume_publish_path: "",
              staging_target_path: "",
            }),
          ),
        ).toBe("NOT_FOUND");
        expect(
          await codeOf(
            node.NodeGetVolumeHealth({ volume_id: FS, volume_publish_path: "/etc", staging_target_path: "" }),
          ),
        ).toBe("NOT_FOUND");
      } finally {
        await node.close();
        await rm(kubelet, { recursive: true, force: true });
      }
    });
  },
);

describe.skipIf(!isRoot)("EFS node stats (in process): reused figures follow the mount at the path", () => {
  it("another mount at the path is measured anew, and a path with nothing mounted is NOT_FOUND", async () => {
    const kubelet = await mkdtemp(join(tmpdir(), "efs-stats-"));
    const node = await inProcessNode(kubelet);
    const FS = "fs-0123456789abcdef0";
    const target = podVolumePath(kubelet);
    await mkdir(target, { recursive: true });
    // tmpfs stands in for the NFS mount: its inode total (nr_inodes) tells two mounts apart.
    const mountTmpfs = (inodes: number) => {
      const out = spawnSync("mount", [
        "-t",
        "tmpfs",
        "-o",
        `size=1m,nr_inodes=${inodes}`,
        "efs-stats",
        target,
      ]);
      expect(out.status, String(out.stderr)).toBe(0);
    };
    // Lazy: a usage walk of the target may still hold it open.
    const unmount = () => spawnSync("umount", ["--lazy", "--", target]);
    const stats = async (): Promise<Reply> =>
      node.NodeGetVolumeStats({ volume_id: FS, volume_path: target, staging_target_path: "" });
    const code = () =>
      stats().then(
        () => "OK",
        (err: { code: number }) => status[err.code],
      );
    try {
      mountTmpfs(1000);
      expect(usageOf(await stats()).inodes.total).toBe(1000);
      expect(usageOf(await stats()).inodes.total).toBe(1000);
      unmount();
      expect(await code()).toBe("NOT_FOUND");
      mountTmpfs(2000);
      expect(usageOf(await stats()).inodes.total).toBe(2000);
      unmount();
      expect(await code()).toBe("NOT_FOUND");
    } finally {
      while ((await findMountsAt(target)).length > 0) unmount();
      await node.close();
      await rm(kubelet, { recursive: true, force: true });
    }
  });
});
