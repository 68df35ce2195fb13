// The EFS node service as kubelet drives it, through the driver process: real `mount -t efs`
// commands, served by the test-only mount helper (fake-mount-efs.ts) from local directories, since
// this machine has no NFS client. Needs root (mounts, /sbin/mount.efs).
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, stat, statfs, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CreateAccessPointCommand, DescribeAccessPointsCommand } from "@aws-sdk/client-efs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findMountsAt } from "../../src/host/mounts.ts";
import type { Reply } from "../harness/csi-client.ts";
import { type EfsEnv, MOUNT_EFS_PATH, startEfsEnv } from "../harness/efs-mount-helper.ts";

const isRoot = process.getuid?.() === 0;
const helperBefore = existsSync(MOUNT_EFS_PATH);
if (!isRoot) console.log("efs-node integration tests skipped: they mount file systems and need root");

const GiB = 1024 ** 3;
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
  }, 120_000);

  afterAll(async () => {
    await env?.stop();
    // Whatever was at /sbin/mount.efs before is back (on this machine: nothing).
    expect(existsSync(MOUNT_EFS_PATH)).toBe(helperBefore);
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

  it("reports the file system's statfs figures and its condition; NOT_FOUND where nothing is published", async () => {
    const target = newTarget();
    await publish(env.fileSystemId, target);
    const reply = await env.client.call("Node", "NodeGetVolumeStats", {
      volume_id: env.fileSystemId,
      volume_path: target,
    });
    const local = await statfs(fsDir);
    const bytes = reply.usage.find((u: { unit: string }) => u.unit === "BYTES");
    const inodes = reply.usage.find((u: { unit: string }) => u.unit === "INODES");
    // The capacity is the file system's own (EFS answers 8 EiB; the fake, the local disk's size).
    expect(Number(bytes.total)).toBe(local.blocks * local.bsize);
    expect(Number(bytes.used)).toBeGreaterThan(0);
    expect(Number(bytes.available)).toBeLessThanOrEqual(Number(bytes.total));
    expect(Number(inodes.total)).toBe(local.files);
    expect(reply.volume_condition).toEqual({ abnormal: false, message: "" });

    const stats = (volumeId: string, path: string) =>
      codeOf(env.client.call("Node", "NodeGetVolumeStats", { volume_id: volumeId, volume_path: path }));
    expect(await stats(env.fileSystemId, "some/path")).toBe("NOT_FOUND");
    expect(await stats("not-a-volume", target)).toBe("NOT_FOUND");
    expect(await stats(env.fileSystemId, join(env.dir, "nothing-here"))).toBe("NOT_FOUND");
    await unpublish(env.fileSystemId, target);
    expect(await stats(env.fileSystemId, target)).toBe("NOT_FOUND");
  });

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
