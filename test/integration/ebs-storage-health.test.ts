// NodeGetStorageHealth of the EBS node, in process, against real loop devices and by-id links made
// by the attach simulation: what a stale udev link, a device two links claim and a full node look like.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtemp, realpath, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { linkName } from "../../src/ebs/device-links.ts";
import { EbsNode } from "../../src/ebs/node.ts";
import { KubeletDirs } from "../../src/host/paths.ts";
import { createLogger } from "../../src/log.ts";
import { type AttachSim, createAttachSim } from "../harness/attach-sim.ts";

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root for loop devices";
  if (spawnSync("losetup", ["-V"], { stdio: "ignore" }).error) return "losetup is not installed";
  try {
    execFileSync("losetup", ["--find"], { stdio: "ignore", timeout: 10_000 });
  } catch {
    return "no loop device can be set up here";
  }
  return undefined;
}
const skip = skipReason();
if (skip) console.warn(`[test/integration/ebs-storage-health.test.ts] SKIPPED: ${skip}`);

describe.skipIf(skip !== undefined)("EBS NodeGetStorageHealth (loop devices, by-id links)", () => {
  let root: string;
  let sim: AttachSim;
  let node: EbsNode;

  beforeAll(async () => {
    root = await realpath(await mkdtemp(join(tmpdir(), "ebs-storage-health-")));
    sim = createAttachSim({ byIdDir: join(root, "by-id"), stateDir: join(root, "state") });
    node = new EbsNode(
      {
        deviceDir: join(root, "by-id"),
        deviceWaitMs: 1000,
        maxVolumesPerNode: 2,
        instanceId: "i-0123456789abcdef0",
        zone: "us-east-1a",
        kubeletDirs: await KubeletDirs.open([join(root, "kubelet")]),
      },
      createLogger("silent"),
    );
  });

  afterAll(async () => {
    await sim?.cleanup();
    await rm(root, { recursive: true, force: true });
  });

  const health = async () => (await node.NodeGetStorageHealth({ secrets: {} })).backend_health;

  it("is advertised, and healthy with no volume and with one", async () => {
    const { capabilities } = await node.NodeGetCapabilities();
    const types = capabilities?.map((c) => c.rpc?.type);
    expect(types).toEqual(expect.arrayContaining(["GET_VOLUME_HEALTH", "GET_STORAGE_HEALTH"]));
    expect(types).not.toContain("NODE_INFO_FROM_CONTROLLER");
    expect(await health()).toEqual([]);
    await sim.attach("vol-0aaaaaaaaaaaaaaa1", 1);
    expect(await health()).toEqual([]);
  });

  it("a full node (2 of 2 attached): AttachmentSlotsExhausted", async () => {
    await sim.attach("vol-0aaaaaaaaaaaaaaa2", 1);
    expect(await health()).toEqual([
      {
        status: "STORAGE_DEGRADED",
        reason: "AttachmentSlotsExhausted",
        message: expect.stringMatching(/2 EBS volumes are attached and this node takes 2/),
      },
    ]);
  });

  it("a link whose loop device is gone: DanglingDeviceLink; a device two links claim: ConflictingDeviceLinks", async () => {
    // The device goes away under its link, as when udev misses a detach.
    const device = (await sim.deviceOf("vol-0aaaaaaaaaaaaaaa2"))!;
    execFileSync("losetup", ["--detach", device]);
    const first = (await sim.deviceOf("vol-0aaaaaaaaaaaaaaa1"))!;
    // A third volume's link resolving to the first volume's device.
    await symlink(first, join(root, "by-id", linkName("vol-0aaaaaaaaaaaaaaa3")));

    const issues = (await health()) ?? [];
    // One disk is left attached: a slot is free again.
    expect(issues.map((i) => [i.status, i.reason])).toEqual([
      ["STORAGE_DEGRADED", "DanglingDeviceLink"],
      ["STORAGE_DEGRADED", "ConflictingDeviceLinks"],
    ]);
    expect(issues[0]!.message).toContain(linkName("vol-0aaaaaaaaaaaaaaa2"));
    expect(issues[1]!.message).toContain(`${first} (vol-0aaaaaaaaaaaaaaa1, vol-0aaaaaaaaaaaaaaa3)`);
  });
});
