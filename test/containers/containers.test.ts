// Smoke test of the container-backed fake AWS (AWS_FAKE=container): testcontainers starts moto's
// and LocalStack's images on the tests' own podman (test/containers/podman.ts), the EBS controller
// makes a volume and a snapshot through the fault proxy in front of the container, reset empties
// the fake, and nothing is left in podman afterwards; containers of killed runs are removed.
// Runs in its own stage of make test (npm run test:containers), after npm run images.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { DescribeSnapshotsCommand, DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { describe, expect, it } from "vitest";
import { startEbsEnv } from "../harness/ebs-env.ts";
import { DOCKER_SOCKET } from "./fake-container.ts";
import { BASE_IMAGE, FAKE_IMAGES, type FakeImageName } from "./images.ts";
import { OWNER_LABEL, podman, podmanMissing, removeLeftoverContainers } from "./podman.ts";

const GiB = 1024 ** 3;
// These tests check the tests' own podman; with a Docker engine, testcontainers would use that.
const skip =
  process.env["DOCKER_HOST"] || existsSync(DOCKER_SOCKET)
    ? `a Docker engine is configured (DOCKER_HOST or ${DOCKER_SOCKET}): these tests check the tests' own podman`
    : await podmanMissing();
if (skip) console.log(`container tests skipped: ${skip}`);

/** The tests' containers in podman, of any owner. */
async function ourContainers(): Promise<string[]> {
  const out = await podman(["ps", "--all", "--filter", `label=${OWNER_LABEL}`, "--format", "{{.ID}}"]);
  return out.split("\n").filter(Boolean);
}

describe.skipIf(skip)("AWS_FAKE=container", () => {
  for (const image of Object.keys(FAKE_IMAGES) as FakeImageName[]) {
    it(`${image} (${FAKE_IMAGES[image].image}): the EBS controller creates, snapshots and deletes through it; reset empties it; stop removes the container`, async () => {
      const before = await ourContainers();
      const env = await startEbsEnv({ mode: "controller", fake: { kind: "container", image } });
      try {
        expect(await ourContainers()).toHaveLength(before.length + 1);
        const created = await env.client.call("Controller", "CreateVolume", {
          name: `pvc-container-${image}`,
          capacity_range: { required_bytes: 2 * GiB },
          volume_capabilities: [{ mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } }],
          parameters: { type: "gp3" },
        });
        const volumeId = created.volume.volume_id as string;
        const { Volumes = [] } = await env.aws.ec2.send(
          new DescribeVolumesCommand({ VolumeIds: [volumeId] }),
        );
        expect(Volumes[0]).toMatchObject({ Size: 2, VolumeType: "gp3" });

        const snapshot = await env.client.call("Controller", "CreateSnapshot", {
          name: `snapshot-container-${image}`,
          source_volume_id: volumeId,
        });
        const snapshotId = snapshot.snapshot.snapshot_id as string;
        // Through the proxy, as the driver sees them: only this account's snapshots.
        const { Snapshots = [] } = await env.aws.ec2.send(
          new DescribeSnapshotsCommand({ SnapshotIds: [snapshotId] }),
        );
        expect(Snapshots[0]?.VolumeId).toBe(volumeId);
        await env.client.call("Controller", "DeleteSnapshot", { snapshot_id: snapshotId });
        await env.client.call("Controller", "DeleteVolume", { volume_id: volumeId });
        const left = await env.aws.ec2.send(
          new DescribeVolumesCommand({ Filters: [{ Name: "volume-id", Values: [volumeId] }] }),
        );
        expect(left.Volumes ?? []).toEqual([]);

        await env.client.call("Controller", "CreateVolume", {
          name: `pvc-container-${image}-reset`,
          capacity_range: { required_bytes: GiB },
          volume_capabilities: [{ mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } }],
        });
        await env.aws.reset();
        expect((await env.aws.ec2.send(new DescribeVolumesCommand({}))).Volumes ?? []).toEqual([]);
      } finally {
        await env.stop();
      }
      expect(await ourContainers()).toEqual(before);
    }, 300_000);
  }

  it("a container whose test process is gone is removed; one whose process runs is kept", async () => {
    const gone = spawn("true");
    await new Promise((resolve) => gone.on("exit", resolve));
    const create = (pid: number) =>
      podman(["create", "--label", `${OWNER_LABEL}=${pid}`, BASE_IMAGE, "true"]).then((id) => id.trim());
    const stale = await create(gone.pid ?? 0);
    const live = await create(process.pid);
    try {
      const removed = await removeLeftoverContainers();
      expect(removed.map((id) => stale.startsWith(id))).toContain(true);
      const remaining = await ourContainers();
      expect(remaining.some((id) => stale.startsWith(id))).toBe(false);
      expect(remaining.some((id) => live.startsWith(id))).toBe(true);
    } finally {
      await podman(["rm", "--force", "--ignore", stale, live]).catch(() => undefined);
    }
  }, 120_000);
});
