// What the node plugin will and will not touch: every path a caller sends must lie below the
// kubelet directory (here the environment's directory, passed as --kubelet-dir), without a symlink
// leading out of it; anything else is refused before any filesystem call, and nothing hangs.
import { randomBytes } from "node:crypto";
import { lstat, mkdir, mkdtemp, readFile, rm, rmdir, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_PATH_BYTES } from "../../src/host/paths.ts";
import { type CsiClient, callFailure } from "../harness/csi-client.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { type EfsEnv, startEfsEnv } from "../harness/efs-mount-helper.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.log("node-safety: skipped, needs root (loop devices and mounts)");

const exists = (p: string) =>
  lstat(p).then(
    () => true,
    () => false,
  );
const mountTable = () => readFile("/proc/self/mountinfo", "utf8");
const VOLUME = "vol-0123456789abcdef0";
const mountCap = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "xfs" } };
const blockCap = { access_mode: { mode: "SINGLE_NODE_WRITER" }, block: {} };
const name = () => `aws-storage-csi-test-${randomBytes(6).toString("hex")}`;

/** A path of exactly `bytes` bytes below dir. */
function pathOfLength(dir: string, bytes: number): string {
  let p = dir;
  while (Buffer.byteLength(p) + 1 + 200 < bytes) p = join(p, "d".repeat(200));
  return join(p, "x".repeat(bytes - Buffer.byteLength(p) - 1));
}

describe.skipIf(!isRoot)("node plugin path confinement (EBS)", () => {
  let env: EbsEnv;
  let client: CsiClient;
  let outside: string;
  beforeAll(async () => {
    env = await startEbsEnv({ mode: "node" });
    client = env.client;
    outside = await mkdtemp(join(tmpdir(), "outside-kubelet-"));
  });
  afterAll(async () => {
    await env?.stop();
    if (outside) await rm(outside, { recursive: true, force: true });
  });

  const stage = (staging: string, cap: object = mountCap) =>
    client.call(
      "Node",
      "NodeStageVolume",
      { volume_id: VOLUME, staging_target_path: staging, volume_capability: cap },
      10_000,
    );
  const publish = (target: string, cap: object = mountCap) =>
    client.call(
      "Node",
      "NodePublishVolume",
      {
        volume_id: VOLUME,
        staging_target_path: join(env.dir, "staging", "x"),
        target_path: target,
        volume_capability: cap,
        publish_context: { devicePath: "/dev/xvdba" },
      },
      10_000,
    );
  const unpublish = (target: string) =>
    client.call("Node", "NodeUnpublishVolume", { volume_id: VOLUME, target_path: target }, 10_000);

  async function expectInvalid(call: Promise<unknown>, field: RegExp, rule: RegExp): Promise<void> {
    const err = await callFailure(call);
    expect(err.code, err.details).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(field);
    expect(err.details).toMatch(rule);
  }

  it("/proc: refused at once, and the next call for the volume is not ABORTED (no hang)", async () => {
    for (let i = 0; i < 6; i++) {
      await expectInvalid(stage(`/proc/${name()}/globalmount`), /staging_target_path/, /kubelet directory/);
      await expectInvalid(publish(`/proc/${name()}`), /target_path/, /kubelet directory/);
    }
    // More than the default thread pool's 4 threads were asked for: the plugin still answers.
    const probe = await client.call("Identity", "Probe", {}, 5_000);
    expect(probe.ready?.value ?? probe.ready).toBeTruthy();
  });

  it.each(["/sys", "/etc", "/dev"])(
    "%s: INVALID_ARGUMENT naming the field, nothing created or mounted",
    async (top) => {
      const target = join(top, name());
      const before = await mountTable();
      await expectInvalid(publish(target), /target_path/, /kubelet directory/);
      await expectInvalid(publish(target, blockCap), /target_path/, /kubelet directory/);
      await expectInvalid(stage(target), /staging_target_path/, /kubelet directory/);
      expect(await exists(target), `${target} was not created`).toBe(false);
      expect(await mountTable()).toBe(before);
    },
  );

  it("NodeUnpublishVolume never deletes a file or an empty directory outside the kubelet directory", async () => {
    const file = join("/etc", name());
    const dir = join("/etc", name());
    await writeFile(file, "keep me\n");
    await mkdir(dir);
    try {
      await expectInvalid(unpublish(file), /target_path/, /kubelet directory/);
      await expectInvalid(unpublish(dir), /target_path/, /kubelet directory/);
      await expectInvalid(
        client.call("Node", "NodeUnstageVolume", { volume_id: VOLUME, staging_target_path: dir }),
        /staging_target_path/,
        /kubelet directory/,
      );
      expect(await readFile(file, "utf8")).toBe("keep me\n");
      expect(await exists(dir)).toBe(true);
    } finally {
      await rm(file, { force: true });
      await rmdir(dir).catch(() => undefined);
    }
  });

  it("a symlink in the pod's volume directory pointing outside is not followed", async () => {
    const volumes = join(env.dir, "pods", name(), "volumes", "kubernetes.io~csi");
    await mkdir(volumes, { recursive: true });
    // The target itself a link to the outside, and a parent directory that is one.
    await symlink(outside, join(volumes, "pv-link", ""));
    await expectInvalid(publish(join(volumes, "pv-link")), /target_path/, /symbolic link/);
    await mkdir(join(volumes, "pv-parent"));
    await symlink(outside, join(volumes, "pv-parent", "escape"));
    await expectInvalid(
      publish(join(volumes, "pv-parent", "escape", "mount")),
      /target_path/,
      /symbolic link/,
    );
    await expectInvalid(
      stage(join(volumes, "pv-parent", "escape", "globalmount")),
      /staging_target_path/,
      /symbolic link/,
    );
    await expectInvalid(
      unpublish(join(volumes, "pv-parent", "escape", "mount")),
      /target_path/,
      /symbolic link/,
    );
    // A link leading nowhere is refused too: mkdir below it would create its target.
    await symlink(join(outside, "not-yet"), join(volumes, "pv-parent", "dangling"));
    await expectInvalid(
      publish(join(volumes, "pv-parent", "dangling", "mount")),
      /target_path/,
      /symbolic link/,
    );
    expect(await exists(join(outside, "not-yet")), "nothing created at the link's destination").toBe(false);
    expect(await exists(join(outside, "mount"))).toBe(false);
  });

  it("PATH_MAX: a 4,096-byte path is INVALID_ARGUMENT, a 4,095-byte one passes validation", async () => {
    const tooLong = pathOfLength(env.dir, MAX_PATH_BYTES + 1);
    expect(Buffer.byteLength(tooLong)).toBe(4096);
    await expectInvalid(publish(tooLong), /target_path/, /limit is 4095/);
    const longest = pathOfLength(env.dir, MAX_PATH_BYTES);
    // Nothing is published there: an unpublish of it is a successful no-op, not INTERNAL.
    await expect(unpublish(longest)).resolves.toEqual({});
  });

  it("NodeGetVolumeStats and NodeExpandVolume of a path outside the kubelet directory: NOT_FOUND", async () => {
    for (const volumePath of ["/etc", "/proc/self", "/sys", "/dev/null", "relative/path"]) {
      for (const method of ["NodeGetVolumeStats", "NodeExpandVolume"]) {
        const err = await callFailure(
          client.call("Node", method, { volume_id: VOLUME, volume_path: volumePath }, 10_000),
        );
        expect(err.code, `${method} ${volumePath}: ${err.details}`).toBe(status.NOT_FOUND);
      }
    }
  });
});

describe.skipIf(!isRoot)("node plugin path confinement (EFS)", () => {
  let env: EfsEnv;
  beforeAll(async () => {
    // Every call here is refused before any mount: no mount helper (another test file may hold its path).
    env = await startEfsEnv({ mode: "node", mountHelper: false });
  });
  afterAll(async () => {
    await env?.stop();
  });

  it.each(["/proc", "/sys", "/etc", "/dev"])(
    "NodePublishVolume to %s: INVALID_ARGUMENT, nothing mounted",
    async (top) => {
      const target = join(top, name());
      const before = await mountTable();
      const err = await callFailure(
        env.client.call(
          "Node",
          "NodePublishVolume",
          {
            volume_id: env.fileSystemId,
            target_path: target,
            volume_capability: { access_mode: { mode: "MULTI_NODE_MULTI_WRITER" }, mount: {} },
          },
          10_000,
        ),
      );
      expect(err.code, err.details).toBe(status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/target_path.*kubelet directory/);
      expect(await exists(target)).toBe(false);
      expect(await mountTable()).toBe(before);
    },
  );

  it("NodeGetVolumeStats outside the kubelet directory: NOT_FOUND", async () => {
    const err = await callFailure(
      env.client.call("Node", "NodeGetVolumeStats", { volume_id: env.fileSystemId, volume_path: "/etc" }),
    );
    expect(err.code).toBe(status.NOT_FOUND);
  });
});
