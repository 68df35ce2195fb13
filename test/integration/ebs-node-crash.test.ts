import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, readFile, realpath, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { loopDeviceSkipReason } from "../harness/host-support.ts";

const GiB = 1024 ** 3;
const DRIVER_NAME = "ebs.csi.aws.com";

const skip = loopDeviceSkipReason(["blkid", "blockdev", "mkfs.ext4"]);
if (skip) console.warn(`[test/integration/ebs-node-crash.test.ts] SKIPPED: ${skip}`);

/** Mount points at or below dir, from /proc/self/mountinfo (our paths hold no escaped characters). */
function mountPointsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => line.split(" ")[4]!)
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

const mountCount = (path: string) => mountPointsUnder(path).filter((p) => p === path).length;
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

describe.skipIf(skip !== undefined)("EBS node plugin killed between kubelet's calls", () => {
  let env: EbsEnv;
  let root: string;
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

  async function ok(service: "Controller" | "Node", method: string, request: object, when: string) {
    return call(service, method, request).catch((err: ServiceError) => {
      throw new Error(`${method} ${when}: ${status[err.code]} ${err.details}`);
    });
  }

  /** SIGKILL, as a crash; the new process serves the same socket. */
  async function crash(): Promise<void> {
    const before = env.driver.child?.pid;
    await env.restart("SIGKILL");
    expect(env.driver.child?.pid).not.toBe(before);
  }

  /** A volume created and attached to the node, torn down by the driver if the test stops early. */
  async function attachedVolume(capability: object) {
    const pv = `pvc-${randomUUID()}`;
    const created = await ok(
      "Controller",
      "CreateVolume",
      { name: pv, capacity_range: { required_bytes: GiB }, volume_capabilities: [capability] },
      "creating the volume",
    );
    const volumeId: string = created.volume.volume_id;
    cleanups.push(async () => {
      await call("Controller", "ControllerUnpublishVolume", { volume_id: volumeId, node_id: env.instanceId });
      await call("Controller", "DeleteVolume", { volume_id: volumeId });
    });
    const published = await ok(
      "Controller",
      "ControllerPublishVolume",
      { volume_id: volumeId, node_id: env.instanceId, volume_capability: capability },
      "attaching the volume",
    );
    return { pv, volumeId, publishContext: published.publish_context as Record<string, string> };
  }

  it("ext4: killed after NodeStage and after NodePublish, every later call works", async () => {
    const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } };
    const { pv, volumeId, publishContext } = await attachedVolume(capability);
    const staging = join(root, "plugins/kubernetes.io/csi", DRIVER_NAME, sha256(volumeId), "globalmount");
    const podA = join(root, "pods", randomUUID(), "volumes/kubernetes.io~csi", pv, "mount");
    const podB = join(root, "pods", randomUUID(), "volumes/kubernetes.io~csi", pv, "mount");
    const node = { volume_id: volumeId, publish_context: publishContext, volume_capability: capability };
    const stageRequest = { ...node, staging_target_path: staging };
    const publishRequest = (target: string) => ({
      ...node,
      staging_target_path: staging,
      target_path: target,
    });
    cleanups.push(() =>
      call("Node", "NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging }),
    );
    for (const target of [podA, podB]) {
      cleanups.push(() => call("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target }));
    }

    await mkdir(staging, { recursive: true });
    await ok("Node", "NodeStageVolume", stageRequest, "the first time");
    await crash();
    await ok("Node", "NodeStageVolume", stageRequest, "repeated after a crash");
    expect(mountCount(staging), "staged once, not mounted again on top").toBe(1);

    await ok("Node", "NodePublishVolume", publishRequest(podA), "the first time");
    await writeFile(join(podA, "before-crash.txt"), "written before the crash\n");
    await crash();
    await ok("Node", "NodePublishVolume", publishRequest(podA), "repeated after a crash");
    expect(mountCount(podA), "published once, not mounted again on top").toBe(1);
    expect(await readFile(join(podA, "before-crash.txt"), "utf8")).toBe("written before the crash\n");

    // The restarted plugin knows the volume only from the mount table.
    const stats = await ok(
      "Node",
      "NodeGetVolumeStats",
      { volume_id: volumeId, volume_path: podA },
      "after a crash",
    );
    const health = await ok(
      "Node",
      "NodeGetVolumeHealth",
      { volume_id: volumeId, volume_publish_path: podA },
      "after a crash",
    );
    expect(health.volume_health).toEqual({ volume_id: volumeId, health_statuses: [] });
    // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
    const bytes = stats.usage.find((u: any) => u.unit === "BYTES");
    expect(bytes.total).toBeGreaterThan(0.85 * GiB);
    expect(bytes.used).toBeGreaterThan(0);
    await ok("Node", "NodeStageVolume", stageRequest, "repeated after the second crash");
    expect(mountCount(staging)).toBe(1);

    await ok("Node", "NodePublishVolume", publishRequest(podB), "for a second pod after a crash");
    expect(await readFile(join(podB, "before-crash.txt"), "utf8")).toBe("written before the crash\n");
    for (const target of [podA, podB]) {
      await ok("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target }, "after a crash");
      expect(mountCount(target)).toBe(0);
      expect(await stat(target).catch(() => undefined), `${target} removed`).toBeUndefined();
    }
    await crash();
    await ok(
      "Node",
      "NodeUnstageVolume",
      { volume_id: volumeId, staging_target_path: staging },
      "after a crash",
    );
    await ok("Node", "NodeUnstageVolume", { volume_id: volumeId, staging_target_path: staging }, "repeated");
    expect(mountPointsUnder(root), "nothing mounted under the environment's directory").toEqual([]);
  });

  it("raw block: killed after NodePublish, stats and teardown still work", async () => {
    const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, block: {} };
    const { pv, volumeId, publishContext } = await attachedVolume(capability);
    const staging = join(root, "plugins/kubernetes.io/csi/volumeDevices/staging", pv);
    const target = join(root, "plugins/kubernetes.io/csi/volumeDevices/publish", pv, randomUUID());
    const node = { volume_id: volumeId, publish_context: publishContext, volume_capability: capability };
    const publishRequest = { ...node, staging_target_path: staging, target_path: target };
    cleanups.push(() => call("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target }));

    await mkdir(staging, { recursive: true });
    await ok("Node", "NodeStageVolume", { ...node, staging_target_path: staging }, "the first time");
    await ok("Node", "NodePublishVolume", publishRequest, "the first time");
    await crash();
    await ok("Node", "NodePublishVolume", publishRequest, "repeated after a crash");
    expect(mountCount(target)).toBe(1);
    expect((await stat(target)).isBlockDevice()).toBe(true);
    const stats = await ok(
      "Node",
      "NodeGetVolumeStats",
      { volume_id: volumeId, volume_path: target },
      "after a crash",
    );
    expect(stats.usage[0]).toMatchObject({ unit: "BYTES", total: GiB });
    const health = await ok(
      "Node",
      "NodeGetVolumeHealth",
      { volume_id: volumeId, volume_publish_path: target },
      "after a crash",
    );
    expect(health.volume_health).toEqual({ volume_id: volumeId, health_statuses: [] });

    await ok("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target }, "after a crash");
    expect(await stat(target).catch(() => undefined), `${target} removed`).toBeUndefined();
    await ok(
      "Node",
      "NodeUnstageVolume",
      { volume_id: volumeId, staging_target_path: staging },
      "after a crash",
    );
    expect(mountPointsUnder(root), "nothing mounted under the environment's directory").toEqual([]);
  });
});
