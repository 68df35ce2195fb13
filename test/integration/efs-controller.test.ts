// The EFS controller against moto through the fault proxy (which adds EFS's ClientToken
// idempotency): concurrency, GID allocation, retries and the AWS calls each costs.
import { DescribeAccessPointsCommand } from "@aws-sdk/client-efs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { CsiError } from "../../src/csi/errors.ts";
import type { CreateVolumeRequest, VolumeCapability } from "../../src/csi/types.ts";
import { createEfsController } from "../../src/efs/controller.ts";
import { parseVolumeHandle } from "../../src/efs/handle.ts";
import { createSdkEfs, type SdkEfs } from "../../src/efs/sdk.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { type FakeAws, startFakeAws } from "../harness/fake-aws.ts";

const GiB = 1024 ** 3;
const log = createLogger("silent");
const ctx: RpcContext = { requestId: "it", log, signal: new AbortController().signal };
const cap = {
  mount: { fs_type: "", mount_flags: [], volume_mount_group: "" },
  access_mode: { mode: "MULTI_NODE_MULTI_WRITER" },
  access_type: "mount",
} as VolumeCapability;

let aws: FakeAws;
let efs: SdkEfs;
let fsId: string;

beforeAll(async () => {
  aws = await startFakeAws();
  // The SDK client finds its credentials where the driver's would: in the environment.
  Object.assign(process.env, aws.env);
  efs = createSdkEfs({
    region: aws.region,
    endpoint: aws.endpoint,
    metrics: createMetrics("aws_efs_csi"),
    log,
  });
}, 120_000);

afterAll(async () => {
  efs?.close();
  await aws?.stop();
});

beforeEach(async () => {
  await aws.reset();
  fsId = await aws.createFileSystem();
  aws.proxy.resetStats();
});

const controller = () =>
  createEfsController({
    efs,
    log,
    extraTags: {},
    deleteAccessPointRootDir: false,
    deleteRootDirectory: async () => undefined,
  });

const request = (name: string, parameters: Record<string, string> = {}): CreateVolumeRequest => ({
  name,
  capacity_range: { required_bytes: 10 * GiB, limit_bytes: 0 },
  volume_capabilities: [cap],
  parameters: {
    provisioningMode: "efs-ap",
    fileSystemId: fsId,
    directoryPerms: "700",
    gidRangeStart: "2000",
    gidRangeEnd: "2999",
    basePath: "/dynamic",
    ...parameters,
  },
  secrets: {},
  volume_content_source: null,
  accessibility_requirements: null,
  mutable_parameters: {},
});

async function accessPointsInMoto() {
  const out = await aws.efs.send(new DescribeAccessPointsCommand({ FileSystemId: fsId }));
  return out.AccessPoints ?? [];
}

const names = Array.from({ length: 100 }, (_, i) => `pvc-${String(i).padStart(3, "0")}`);

describe("EFS controller on moto", () => {
  it("gives 100 concurrent volumes of one file system 100 access points with distinct GIDs", async () => {
    const c = controller();
    const results = await Promise.all(names.map((name) => c.CreateVolume(request(name), ctx)));
    const stats = aws.proxy.stats();

    const aps = await accessPointsInMoto();
    expect(aps).toHaveLength(100);
    const gids = aps.map((ap) => ap.PosixUser?.Gid ?? -1);
    expect(new Set(gids).size).toBe(100);
    for (const gid of gids) expect(gid >= 2000 && gid <= 2999).toBe(true);
    expect(Math.max(...gids)).toBe(2099);
    const ids = new Set(results.map((r) => parseVolumeHandle(r.volume.volume_id).accessPointId));
    expect(ids).toEqual(new Set(aps.map((ap) => ap.AccessPointId)));
    for (const ap of aps) {
      expect(ap.RootDirectory?.Path).toBe(`/dynamic/${ap.ClientToken}`);
      expect(ap.RootDirectory?.CreationInfo).toEqual({
        OwnerUid: ap.PosixUser?.Gid,
        OwnerGid: ap.PosixUser?.Gid,
        Permissions: "700",
      });
    }

    // The cost: one CreateAccessPoint each, and a listing (DescribeFileSystems + DescribeAccessPoints
    // pages) shared by all the calls that arrived before it started.
    expect(stats["CreateAccessPoint"]).toBe(100);
    expect(stats["DescribeAccessPoints"]).toBeLessThanOrEqual(2);
    expect(stats["DescribeFileSystems"]).toBeLessThanOrEqual(2);
    const total = Object.values(stats).reduce((a, b) => a + b, 0);
    console.log(`100 concurrent CreateVolume: ${total} AWS calls (${JSON.stringify(stats)})`);
  });

  it("returns the same access points to retries, creating none", async () => {
    const c = controller();
    const first = await Promise.all(names.map((name) => c.CreateVolume(request(name), ctx)));
    aws.proxy.resetStats();
    // A restarted controller knows nothing in memory: only EFS tells it what exists.
    const restarted = controller();
    const again = await Promise.all(names.map((name) => restarted.CreateVolume(request(name), ctx)));
    expect(again.map((r) => r.volume.volume_id)).toEqual(first.map((r) => r.volume.volume_id));
    expect(await accessPointsInMoto()).toHaveLength(100);
    const stats = aws.proxy.stats();
    expect(stats["CreateAccessPoint"]).toBeUndefined();
    console.log(`100 concurrent retries: ${JSON.stringify(stats)}`);

    const other = await restarted.CreateVolume(request("pvc-100"), ctx);
    expect(
      (await accessPointsInMoto()).find(
        (ap) => ap.AccessPointId === parseVolumeHandle(other.volume.volume_id).accessPointId,
      )?.PosixUser?.Gid,
    ).toBe(2100);
  });

  it("finds an earlier attempt through the ClientToken when the listing does not show it yet", async () => {
    const c = controller();
    const first = await c.CreateVolume(request("pvc-late"), ctx);
    // Another controller whose listing predates the first create: EFS answers AccessPointAlreadyExists.
    const stale = createEfsController({
      efs: { ...efs, listAccessPoints: async () => [] },
      log,
      extraTags: {},
      deleteAccessPointRootDir: false,
      deleteRootDirectory: async () => undefined,
    });
    const again = await stale.CreateVolume(request("pvc-late"), ctx);
    expect(again.volume.volume_id).toBe(first.volume.volume_id);
    expect(await accessPointsInMoto()).toHaveLength(1);
  });

  it("answers ALREADY_EXISTS to the same name with another size", async () => {
    const c = controller();
    await c.CreateVolume(request("pvc-size"), ctx);
    const err = (await c
      .CreateVolume(
        { ...request("pvc-size"), capacity_range: { required_bytes: 20 * GiB, limit_bytes: 0 } },
        ctx,
      )
      .catch((e: unknown) => e)) as CsiError;
    expect(err.code).toBe(status.ALREADY_EXISTS);
  });

  it("stays correct when EFS throttles: distinct GIDs, every volume created once", async () => {
    aws.proxy.faults.throttle = { rate: 0.3 };
    const c = controller();
    const settled = await Promise.allSettled(
      names.slice(0, 50).map((name) => c.CreateVolume(request(name), ctx)),
    );
    aws.proxy.faults.throttle = undefined;
    // Those that gave up after the SDK's retries are retried, as the provisioner would.
    const results = await Promise.all(
      settled.map((s, i) => (s.status === "fulfilled" ? s.value : c.CreateVolume(request(names[i]!), ctx))),
    );
    const aps = await accessPointsInMoto();
    expect(aps).toHaveLength(50);
    expect(new Set(aps.map((ap) => ap.PosixUser?.Gid)).size).toBe(50);
    expect(new Set(results.map((r) => r.volume.volume_id)).size).toBe(50);
  });

  it("deletes access points, and answers OK for ones already gone", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(request("pvc-del"), ctx);
    expect(await c.DeleteVolume({ volume_id: volume.volume_id, secrets: {} }, ctx)).toEqual({});
    expect(await accessPointsInMoto()).toHaveLength(0);
    expect(await c.DeleteVolume({ volume_id: volume.volume_id, secrets: {} }, ctx)).toEqual({});
  });

  it("answers NOT_FOUND and INVALID_ARGUMENT for what does not exist", async () => {
    const c = controller();
    const validate = await c
      .ValidateVolumeCapabilities({
        volume_id: `${fsId}::fsap-0123456789abcdef0`,
        volume_context: {},
        volume_capabilities: [cap],
        parameters: {},
        secrets: {},
        mutable_parameters: {},
      })
      .catch((e: unknown) => e as CsiError);
    expect((validate as CsiError).code).toBe(status.NOT_FOUND);
    const create = (await c
      .CreateVolume(request("pvc-nofs", { fileSystemId: "fs-0000000000000dead" }), ctx)
      .catch((e: unknown) => e)) as CsiError;
    expect(create.code).toBe(status.INVALID_ARGUMENT);
    expect(await accessPointsInMoto()).toHaveLength(0);
  });
});

describe("ControllerGetVolumeHealth", () => {
  const health = async (volume_id: string) =>
    (await controller().ControllerGetVolumeHealth({ volume_id, secrets: {} })).volume_health!
      .health_statuses!;
  const conditions = async (volumeId: string) => (await health(volumeId)).map((h) => [h.status, h.reason]);

  it("reports what EFS says of the file system, the access point and the mount targets", async () => {
    const { volume } = await controller().CreateVolume(request("pvc-health"), ctx);
    const accessPointId = parseVolumeHandle(volume.volume_id).accessPointId!;
    const mountTargets = (await efs.describeMountTargets(fsId)).sort((a, b) => a.zone.localeCompare(b.zone));
    expect(mountTargets.map((mt) => mt.zone)).toEqual([`${aws.region}a`, `${aws.region}b`]);
    expect(await conditions(volume.volume_id)).toEqual([]);

    aws.proxy.efsStates.set(mountTargets[1]!.id, "error");
    const degraded = await health(volume.volume_id);
    expect(degraded.map((h) => [h.status, h.reason])).toEqual([["DEGRADED", "MountTargetUnavailable"]]);
    expect(degraded[0]!.message).toContain(`nodes in ${aws.region}b cannot mount`);

    aws.proxy.efsStates.set(mountTargets[0]!.id, "deleting");
    expect(await conditions(volume.volume_id)).toEqual([["INACCESSIBLE", "NoMountTarget"]]);
    aws.proxy.efsStates.clear();

    aws.proxy.efsStates.set(accessPointId, "error");
    expect(await conditions(volume.volume_id)).toEqual([["INACCESSIBLE", "AccessPointUnavailable"]]);
    aws.proxy.efsStates.set(fsId, "error");
    expect(await conditions(fsId)).toEqual([["INACCESSIBLE", "FileSystemUnavailable"]]);
    aws.proxy.efsStates.clear();
    expect(await conditions(volume.volume_id)).toEqual([]);
  });

  it("a file system without mount targets cannot be mounted; a deleted volume is NOT_FOUND", async () => {
    const bare = await aws.createFileSystem({ mountTargetZones: [] });
    expect(await conditions(bare)).toEqual([["INACCESSIBLE", "NoMountTarget"]]);
    const { volume } = await controller().CreateVolume(request("pvc-deleted"), ctx);
    await controller().DeleteVolume({ volume_id: volume.volume_id, secrets: {} }, ctx);
    const err = (await controller()
      .ControllerGetVolumeHealth({ volume_id: volume.volume_id, secrets: {} })
      .catch((e: unknown) => e)) as CsiError;
    expect(err.code).toBe(status.NOT_FOUND);
  });
});
