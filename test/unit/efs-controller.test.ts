// biome-ignore-all lint/suspicious/noTemplateCurlyInString: subPathPattern syntax, not templates
import { status } from "@grpc/grpc-js";
import { beforeEach, describe, expect, it } from "vitest";
import type {
  CreateVolumeRequest,
  DeleteVolumeRequest,
  ValidateVolumeCapabilitiesRequest,
  VolumeCapability,
} from "../../src/csi/types.ts";
import { EfsError } from "../../src/efs/cloud.ts";
import { createEfsController } from "../../src/efs/controller.ts";
import { parseVolumeHandle } from "../../src/efs/handle.ts";
import { PVC_NAME } from "../../src/efs/params.ts";
import { TAG_BASE_PATH, TAG_CAPACITY, TAG_CLUSTER } from "../../src/efs/tags.ts";
import { createLogger } from "../../src/log.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { codeOf } from "./csi-failure.ts";
import { MemoryEfs } from "./fake-efs.ts";

const GiB = 1024 ** 3;
const log = createLogger("silent");
const ctx: RpcContext = { requestId: "test", log, signal: new AbortController().signal };

const mountCap = (mode: string = "MULTI_NODE_MULTI_WRITER"): VolumeCapability =>
  ({
    mount: { fs_type: "", mount_flags: [], volume_mount_group: "" },
    access_mode: { mode },
    access_type: "mount",
  }) as VolumeCapability;

const blockCap = (): VolumeCapability =>
  ({ block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" }, access_type: "block" }) as VolumeCapability;

let efs: MemoryEfs;
let fsId: string;
let deletedDirs: [string, string][];
let uuids: number;

function controller(o: { deleteAccessPointRootDir?: boolean; extraTags?: Record<string, string> } = {}) {
  return createEfsController({
    efs,
    log,
    extraTags: o.extraTags ?? {},
    deleteAccessPointRootDir: o.deleteAccessPointRootDir ?? false,
    deleteRootDirectory: async (fileSystemId, path) => {
      deletedDirs.push([fileSystemId, path]);
    },
    newUuid: () => `00000000-0000-4000-8000-${String(++uuids).padStart(12, "0")}`,
  });
}

function createRequest(
  name: string,
  parameters: Record<string, string> = {},
  more: Partial<CreateVolumeRequest> = {},
): CreateVolumeRequest {
  return {
    name,
    capacity_range: { required_bytes: 10 * GiB, limit_bytes: 0 },
    volume_capabilities: [mountCap()],
    parameters: { provisioningMode: "efs-ap", fileSystemId: fsId, directoryPerms: "700", ...parameters },
    secrets: {},
    volume_content_source: null,
    accessibility_requirements: null,
    mutable_parameters: {},
    ...more,
  };
}

const deleteRequest = (volume_id: string): DeleteVolumeRequest => ({ volume_id, secrets: {} });

const accessPointOf = (volumeId: string) => efs.accessPoints.get(parseVolumeHandle(volumeId).accessPointId!)!;

beforeEach(() => {
  efs = new MemoryEfs();
  fsId = efs.addFileSystem("fs-0123456789abcdef0");
  deletedDirs = [];
  uuids = 0;
});

describe("ControllerGetCapabilities", () => {
  it("offers create/delete, expansion and volume health (not listed: static volumes cannot be listed)", async () => {
    expect(await controller().ControllerGetCapabilities()).toEqual({
      capabilities: [
        { rpc: { type: "CREATE_DELETE_VOLUME" } },
        { rpc: { type: "EXPAND_VOLUME" } },
        { rpc: { type: "GET_VOLUME_HEALTH" } },
      ],
    });
  });
});

describe("ControllerGetVolumeHealth", () => {
  const health = async (volume_id: string) =>
    (
      await controller().ControllerGetVolumeHealth({ volume_id, secrets: {} })
    ).volume_health!.health_statuses!.map((h) => [h.status, h.reason]);

  it("healthy, then from the file system's, the access point's and the mount targets' states", async () => {
    const { volume } = await controller().CreateVolume(createRequest("pvc-health"), ctx);
    const ap = accessPointOf(volume.volume_id);
    expect(await health(volume.volume_id)).toEqual([]);
    expect(await health(fsId)).toEqual([]);

    efs.mountTargets.set(fsId, [
      { id: "fsmt-a", zone: "us-east-1a", lifeCycleState: "available" },
      { id: "fsmt-b", zone: "us-east-1b", lifeCycleState: "error" },
    ]);
    expect(await health(volume.volume_id)).toEqual([["DEGRADED", "MountTargetUnavailable"]]);
    const message = (await controller().ControllerGetVolumeHealth({ volume_id: fsId, secrets: {} }))
      .volume_health!.health_statuses![0]!.message;
    expect(message).toMatch(/nodes in us-east-1b cannot mount/);

    efs.mountTargets.set(fsId, [{ id: "fsmt-b", zone: "us-east-1b", lifeCycleState: "deleting" }]);
    expect(await health(volume.volume_id)).toEqual([["INACCESSIBLE", "NoMountTarget"]]);
    efs.mountTargets.set(fsId, []);
    expect(await health(fsId)).toEqual([["INACCESSIBLE", "NoMountTarget"]]);
    efs.mountTargets.delete(fsId);

    ap.lifeCycleState = "error";
    efs.fileSystems.get(fsId)!.lifeCycleState = "deleting";
    expect(await health(volume.volume_id)).toEqual([
      ["INACCESSIBLE", "FileSystemUnavailable"],
      ["INACCESSIBLE", "AccessPointUnavailable"],
    ]);
    // A static volume is the file system: the access point's state is not its business.
    expect(await health(`${fsId}:/data`)).toEqual([["INACCESSIBLE", "FileSystemUnavailable"]]);
  });

  it("NOT_FOUND for a volume that does not exist, INVALID_ARGUMENT without an id, UNAVAILABLE when EFS is", async () => {
    const { volume } = await controller().CreateVolume(createRequest("pvc-gone"), ctx);
    await controller().DeleteVolume(deleteRequest(volume.volume_id), ctx);
    expect(
      (await codeOf(controller().ControllerGetVolumeHealth({ volume_id: volume.volume_id, secrets: {} })))
        .code,
    ).toBe(status.NOT_FOUND);
    for (const volume_id of ["fs-00000000000000000", "not-a-handle"]) {
      expect((await codeOf(controller().ControllerGetVolumeHealth({ volume_id, secrets: {} }))).code).toBe(
        status.NOT_FOUND,
      );
    }
    expect((await codeOf(controller().ControllerGetVolumeHealth({ volume_id: "", secrets: {} }))).code).toBe(
      status.INVALID_ARGUMENT,
    );
    efs.beforeCall = (method) => {
      if (method === "describeMountTargets")
        throw new EfsError("Throttled", "ThrottlingException", "slow down");
    };
    expect(
      (await codeOf(controller().ControllerGetVolumeHealth({ volume_id: fsId, secrets: {} }))).code,
    ).toBe(status.UNAVAILABLE);
  });
});

describe("CreateVolume", () => {
  it("creates an access point with its own GID, root directory and tags", async () => {
    const c = controller({ extraTags: { team: "storage" } });
    const res = await c.CreateVolume(
      createRequest("pvc-1", { basePath: "/dynamic", directoryPerms: "750" }),
      ctx,
    );
    const handle = parseVolumeHandle(res.volume.volume_id);
    expect(res.volume.volume_id).toBe(`${fsId}::${handle.accessPointId}`);
    expect(res.volume.capacity_bytes).toBe(10 * GiB);
    expect(res.volume.accessible_topology).toEqual([]);
    const ap = accessPointOf(res.volume.volume_id);
    expect(ap).toMatchObject({
      fileSystemId: fsId,
      clientToken: "pvc-1",
      posixUser: { uid: 50000, gid: 50000 },
      rootDirectory: {
        path: "/dynamic/pvc-1",
        creationInfo: { ownerUid: 50000, ownerGid: 50000, permissions: "750" },
      },
      tags: {
        [TAG_CLUSTER]: "true",
        team: "storage",
        [TAG_CAPACITY]: String(10 * GiB),
        [TAG_BASE_PATH]: "/dynamic",
      },
    });
  });

  it("uses the uid and gid of the StorageClass, allocating none", async () => {
    const res = await controller().CreateVolume(createRequest("pvc-1", { uid: "1000", gid: "2000" }), ctx);
    expect(accessPointOf(res.volume.volume_id).posixUser).toEqual({ uid: 1000, gid: 2000 });
  });

  it("creates no tags with enableTagging=false", async () => {
    const res = await controller().CreateVolume(createRequest("pvc-1", { enableTagging: "false" }), ctx);
    expect(accessPointOf(res.volume.volume_id).tags).toEqual({});
  });

  it("gives 100 concurrent volumes of one file system 100 distinct GIDs with a few listings", async () => {
    const c = controller();
    const range = { gidRangeStart: "7000", gidRangeEnd: "7999" };
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => c.CreateVolume(createRequest(`pvc-${i}`, range), ctx)),
    );
    const gids = results.map((r) => accessPointOf(r.volume.volume_id).posixUser!.gid);
    expect(new Set(gids).size).toBe(100);
    expect(Math.min(...gids)).toBe(7000);
    expect(Math.max(...gids)).toBe(7099);
    expect(efs.calls["createAccessPoint"]).toBe(100);
    // One listing for the first arrivals, one for everyone who arrived while it ran.
    expect(efs.calls["listAccessPoints"]).toBeLessThanOrEqual(2);
  });

  it("keeps GIDs distinct across waves, and reuses those of deleted volumes", async () => {
    const c = controller();
    const range = { gidRangeStart: "7000", gidRangeEnd: "7999" };
    const first = await Promise.all(
      [0, 1, 2].map((i) => c.CreateVolume(createRequest(`a-${i}`, range), ctx)),
    );
    await c.DeleteVolume(deleteRequest(first[1]!.volume.volume_id), ctx);
    const second = await Promise.all([0, 1].map((i) => c.CreateVolume(createRequest(`b-${i}`, range), ctx)));
    const gids = [...first, ...second].map(
      (r) => efs.accessPoints.get(parseVolumeHandle(r.volume.volume_id).accessPointId!)?.posixUser?.gid,
    );
    expect(gids).toEqual([7000, undefined, 7002, 7001, 7003]);
  });

  it("answers RESOURCE_EXHAUSTED, naming the range and file system, once the range is used up", async () => {
    const c = controller();
    const range = { gidRangeStart: "7000", gidRangeEnd: "7049" };
    const settled = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) => c.CreateVolume(createRequest(`pvc-${i}`, range), ctx)),
    );
    const failed = settled
      .filter((s) => s.status === "rejected")
      .map((s) => (s as PromiseRejectedResult).reason);
    expect(settled.length - failed.length).toBe(50);
    expect(efs.accessPoints.size).toBe(50);
    for (const err of failed) {
      expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(err.message).toContain("7000-7049");
      expect(err.message).toContain(fsId);
    }
  });

  it("returns the same volume to a retry, without creating another access point", async () => {
    const c = controller();
    const params = { subPathPattern: "${.PVC.name}", [PVC_NAME]: "data" };
    const first = await c.CreateVolume(createRequest("pvc-1", params), ctx);
    const again = await c.CreateVolume(createRequest("pvc-1", params), ctx);
    expect(again).toEqual(first);
    expect(efs.accessPoints.size).toBe(1);
    expect(accessPointOf(first.volume.volume_id).rootDirectory.path).toBe(
      "/data-00000000-0000-4000-8000-000000000001",
    );
  });

  it("finds an earlier attempt through EFS's client token when the listing does not show it", async () => {
    const c = controller();
    const first = await c.CreateVolume(createRequest("pvc-1"), ctx);
    // A listing without client tokens (or not up to date): the create replays the token and EFS names the access point.
    const list = efs.listAccessPoints.bind(efs);
    efs.listAccessPoints = async (id) => (await list(id)).map(({ clientToken: _, ...ap }) => ap);
    const again = await controller().CreateVolume(createRequest("pvc-1"), ctx);
    expect(again.volume.volume_id).toBe(first.volume.volume_id);
    expect(efs.accessPoints.size).toBe(1);
  });

  it("answers a retry whose first answer was lost with the access point that was created", async () => {
    const c = controller();
    let lose = true;
    efs.beforeCall = () => undefined;
    const create = efs.createAccessPoint.bind(efs);
    efs.createAccessPoint = async (input) => {
      const ap = await create(input);
      if (lose) {
        lose = false;
        throw new EfsError("Unavailable", "ECONNRESET", "answer lost");
      }
      return ap;
    };
    expect((await codeOf(c.CreateVolume(createRequest("pvc-1"), ctx))).code).toBe(status.UNAVAILABLE);
    const again = await c.CreateVolume(createRequest("pvc-1"), ctx);
    expect(efs.accessPoints.size).toBe(1);
    expect(accessPointOf(again.volume.volume_id).clientToken).toBe("pvc-1");
    // Its GID stayed reserved while the outcome was unknown: the next volume gets another one.
    const next = await c.CreateVolume(createRequest("pvc-2"), ctx);
    expect(accessPointOf(next.volume.volume_id).posixUser!.gid).toBe(50001);
  });

  it("frees the GID of a create that AWS refused", async () => {
    const c = controller();
    efs.beforeCall = (method) => {
      if (method === "createAccessPoint" && efs.calls["createAccessPoint"] === 1) {
        throw new EfsError("InvalidParameter", "BadRequest", "bad request");
      }
    };
    expect((await codeOf(c.CreateVolume(createRequest("pvc-1"), ctx))).code).toBe(status.INVALID_ARGUMENT);
    const res = await c.CreateVolume(createRequest("pvc-2"), ctx);
    expect(accessPointOf(res.volume.volume_id).posixUser!.gid).toBe(50000);
  });

  it.each([
    ["capacity", { capacity_range: { required_bytes: 20 * GiB, limit_bytes: 20 * GiB } }, {}, "capacity"],
    ["directoryPerms", {}, { directoryPerms: "777" }, "directoryPerms 700"],
    ["uid", {}, { uid: "1234", gid: "1234" }, "uid 50000"],
    ["basePath", {}, { basePath: "/elsewhere" }, "root directory /pvc-1"],
    ["gid range", {}, { gidRangeStart: "1", gidRangeEnd: "10" }, "uid 50000"],
  ])("answers ALREADY_EXISTS to a retry with another %s", async (_what, more, params, message) => {
    const c = controller();
    await c.CreateVolume(createRequest("pvc-1"), ctx);
    const res = await codeOf(c.CreateVolume(createRequest("pvc-1", params, more), ctx));
    expect(res.code).toBe(status.ALREADY_EXISTS);
    expect(res.message).toContain(message);
    expect(efs.accessPoints.size).toBe(1);
  });

  it("accepts a retry whose capacity range contains the volume's size", async () => {
    const c = controller();
    const first = await c.CreateVolume(createRequest("pvc-1"), ctx);
    const again = await c.CreateVolume(
      createRequest("pvc-1", {}, { capacity_range: { required_bytes: 5 * GiB, limit_bytes: 20 * GiB } }),
      ctx,
    );
    expect(again.volume).toEqual(first.volume);
  });

  it("shares one access point among PVCs of one name with reuseAccessPoint", async () => {
    const c = controller();
    const params = { reuseAccessPoint: "true", [PVC_NAME]: "data" };
    const a = await c.CreateVolume(createRequest("pvc-a", params), ctx);
    const b = await c.CreateVolume(
      createRequest("pvc-b", params, { capacity_range: { required_bytes: GiB, limit_bytes: 0 } }),
      ctx,
    );
    expect(b.volume.volume_id).toBe(a.volume.volume_id);
    expect(b.volume.capacity_bytes).toBe(GiB);
  });

  it("takes volume names of CSI's 128 characters", async () => {
    const name = "n".repeat(128);
    const res = await controller().CreateVolume(createRequest(name), ctx);
    const ap = accessPointOf(res.volume.volume_id);
    expect(ap.clientToken).toMatch(/^[0-9a-f]{64}$/);
    expect(ap.rootDirectory.path.length).toBeLessThanOrEqual(100);
    expect((await controller().CreateVolume(createRequest(name), ctx)).volume.volume_id).toBe(
      res.volume.volume_id,
    );
  });

  it("accepts every access mode, answered with mount access", async () => {
    const modes = [
      "SINGLE_NODE_WRITER",
      "SINGLE_NODE_READER_ONLY",
      "MULTI_NODE_READER_ONLY",
      "MULTI_NODE_SINGLE_WRITER",
    ];
    const res = await controller().CreateVolume(
      createRequest("pvc-1", {}, { volume_capabilities: modes.map((m) => mountCap(m)) }),
      ctx,
    );
    expect(res.volume.volume_id).toMatch(/^fs-/);
  });

  it.each([
    ["no name", createRequestLazy("", {}), status.INVALID_ARGUMENT, "name"],
    [
      "no capabilities",
      createRequestLazy("v", {}, { volume_capabilities: [] }),
      status.INVALID_ARGUMENT,
      "volume_capabilities",
    ],
    [
      "block access",
      createRequestLazy("v", {}, { volume_capabilities: [blockCap()] }),
      status.INVALID_ARGUMENT,
      "block",
    ],
    [
      "an unknown mode",
      createRequestLazy("v", {}, { volume_capabilities: [mountCap("UNKNOWN")] }),
      status.INVALID_ARGUMENT,
      "volume_capabilities[0].access_mode.mode",
    ],
    [
      "a mode the spec does not have",
      createRequestLazy("v", {}, { volume_capabilities: [mountCap(99 as never)] }),
      status.INVALID_ARGUMENT,
      "volume_capabilities[0].access_mode.mode: 99",
    ],
    [
      "fs_type ext4",
      createRequestLazy(
        "v",
        {},
        {
          volume_capabilities: [
            { ...mountCap(), mount: { fs_type: "ext4", mount_flags: [], volume_mount_group: "" } },
          ],
        },
      ),
      status.INVALID_ARGUMENT,
      "ext4",
    ],
    [
      "limit below required",
      createRequestLazy("v", {}, { capacity_range: { required_bytes: 2 * GiB, limit_bytes: GiB } }),
      status.OUT_OF_RANGE,
      "limit_bytes",
    ],
    [
      "a content source",
      createRequestLazy(
        "v",
        {},
        { volume_content_source: { snapshot: { snapshot_id: "snap" }, type: "snapshot" } as never },
      ),
      status.INVALID_ARGUMENT,
      "volume_content_source",
    ],
    [
      "mutable parameters",
      createRequestLazy("v", {}, { mutable_parameters: { a: "b" } }),
      status.INVALID_ARGUMENT,
      "mutable_parameters",
    ],
    [
      "a cross-account role",
      createRequestLazy("v", {}, { secrets: { awsRoleArn: "arn:aws:iam::1:role/x" } }),
      status.INVALID_ARGUMENT,
      "awsRoleArn",
    ],
    [
      "no provisioningMode",
      createRequestLazy("v", { provisioningMode: undefined as never }),
      status.INVALID_ARGUMENT,
      "provisioningMode",
    ],
    [
      "an unknown file system",
      createRequestLazy("v", { fileSystemId: "fs-99999999" }),
      status.INVALID_ARGUMENT,
      "fs-99999999 does not exist",
    ],
  ])("refuses %s", async (_what, request, code, message) => {
    const res = await codeOf(controller().CreateVolume(request(), ctx));
    expect(res.code).toBe(code);
    expect(res.message).toContain(message);
    expect(efs.accessPoints.size).toBe(0);
  });

  it.each([
    ["AccessDenied", status.PERMISSION_DENIED],
    ["Throttled", status.UNAVAILABLE],
    ["Unavailable", status.UNAVAILABLE],
    ["FileSystemNotReady", status.UNAVAILABLE],
    ["AccessPointLimitExceeded", status.RESOURCE_EXHAUSTED],
    ["Other", status.INTERNAL],
  ] as const)("maps EFS %s to %s", async (kind, code) => {
    efs.beforeCall = (method) => {
      if (method === "createAccessPoint") throw new EfsError(kind, kind, `${kind} happened`);
    };
    const res = await codeOf(controller().CreateVolume(createRequest("pvc-1"), ctx));
    expect(res.code).toBe(code);
    expect(res.message).toContain(`${kind} happened`);
  });
});

function createRequestLazy(
  name: string,
  parameters: Record<string, string>,
  more: Partial<CreateVolumeRequest> = {},
) {
  return () => {
    const req = createRequest(name, parameters, more);
    for (const [k, v] of Object.entries(req.parameters)) if (v === undefined) delete req.parameters[k];
    return req;
  };
}

describe("DeleteVolume", () => {
  it("deletes the access point of a volume, and answers OK again once it is gone", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    expect(await c.DeleteVolume(deleteRequest(volume.volume_id), ctx)).toEqual({});
    expect(efs.accessPoints.size).toBe(0);
    expect(await c.DeleteVolume(deleteRequest(volume.volume_id), ctx)).toEqual({});
    expect(await c.DeleteVolume(deleteRequest(`efs:${volume.volume_id}`), ctx)).toEqual({});
  });

  it("requires a volume id", async () => {
    expect((await codeOf(controller().DeleteVolume(deleteRequest(""), ctx))).code).toBe(
      status.INVALID_ARGUMENT,
    );
  });

  it("answers OK and deletes nothing for static volumes and handles it did not issue", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    const apId = parseVolumeHandle(volume.volume_id).accessPointId!;
    for (const id of [
      "fake-vol-id",
      fsId,
      `${fsId}:/data`,
      `fs-99999999::${apId}`,
      `${fsId}::fsap-00000000000000099`,
    ]) {
      expect(await c.DeleteVolume(deleteRequest(id), ctx)).toEqual({});
    }
    expect(efs.accessPoints.size).toBe(1);
    expect(efs.calls["deleteAccessPoint"]).toBeUndefined();
  });

  it("uses a given gid as the uid too and takes nothing from the GID range", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-gid", { gid: "1000" }), ctx);
    expect(accessPointOf(volume.volume_id).posixUser).toEqual({ uid: 1000, gid: 1000 });
  });

  it.each([
    [{ name: "x".repeat(129) }, /^name: 129 bytes/],
    [{ parameters: { provisioningMode: "efs-ap", big: "x".repeat(5000) } }, /^parameters: .*4 KiB/],
  ])("refuses %# with INVALID_ARGUMENT naming the field, as for EBS", async (over, message) => {
    const res = await codeOf(
      controller().CreateVolume({ ...createRequest("pvc-limits"), ...over } as never, ctx),
    );
    expect(res.code).toBe(status.INVALID_ARGUMENT);
    expect(res.message).toMatch(message);
  });

  describe("with --delete-access-point-root-dir", () => {
    it("deletes the root directory, then the access point", async () => {
      const c = controller({ deleteAccessPointRootDir: true });
      const { volume } = await c.CreateVolume(createRequest("pvc-1", { basePath: "/dyn" }), ctx);
      await c.DeleteVolume(deleteRequest(volume.volume_id), ctx);
      expect(deletedDirs).toEqual([[fsId, "/dyn/pvc-1"]]);
      expect(efs.accessPoints.size).toBe(0);
    });

    async function staticAccessPoint(path: string, tags: Record<string, string> = {}) {
      const ap = await efs.createAccessPoint({
        clientToken: `static-${path}`,
        fileSystemId: fsId,
        posixUser: { uid: 0, gid: 0 },
        rootDirectory: { path },
        tags,
      });
      return `${fsId}::${ap.id}`;
    }

    it("keeps the directory of an access point no provisioner made (a static volume's), and deletes the access point", async () => {
      const c = controller({ deleteAccessPointRootDir: true });
      const volumeId = await staticAccessPoint("/shared-by-hand");
      expect(await c.DeleteVolume(deleteRequest(volumeId), ctx)).toEqual({});
      expect(deletedDirs).toEqual([]);
      expect(efs.accessPoints.size).toBe(0);
    });

    const provisioned = { [TAG_CLUSTER]: "true" };
    it.each([
      ["/", provisioned, "root of the file system"],
      ["/dyn", { ...provisioned, [TAG_BASE_PATH]: "/dyn" }, "basePath itself"],
      ["/other/x", { ...provisioned, [TAG_BASE_PATH]: "/dyn" }, "outside basePath /dyn"],
    ])("refuses to delete %s with FAILED_PRECONDITION and deletes nothing", async (path, tags, message) => {
      const c = controller({ deleteAccessPointRootDir: true });
      const volumeId = await staticAccessPoint(path, tags);
      const res = await codeOf(c.DeleteVolume(deleteRequest(volumeId), ctx));
      expect(res.code).toBe(status.FAILED_PRECONDITION);
      expect(res.message).toContain(message);
      expect(deletedDirs).toEqual([]);
      expect(efs.accessPoints.size).toBe(1);
    });

    it("keeps a root directory that other access points use, and deletes the access point", async () => {
      const c = controller({ deleteAccessPointRootDir: true });
      const params = { subPathPattern: "shared", ensureUniqueDirectory: "false" };
      const a = await c.CreateVolume(createRequest("pvc-a", params), ctx);
      await c.CreateVolume(createRequest("pvc-b", params), ctx);
      const parent = await staticAccessPoint("/team", provisioned);
      await staticAccessPoint("/team/inner");
      await c.DeleteVolume(deleteRequest(a.volume.volume_id), ctx);
      await c.DeleteVolume(deleteRequest(parent), ctx);
      expect(deletedDirs).toEqual([]);
      expect(efs.accessPoints.size).toBe(2);
    });

    it("answers INTERNAL and keeps the access point when the directory cannot be deleted", async () => {
      const c = createEfsController({
        efs,
        log,
        extraTags: {},
        deleteAccessPointRootDir: true,
        deleteRootDirectory: async () => {
          throw new Error("mount failed");
        },
      });
      const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
      const res = await codeOf(c.DeleteVolume(deleteRequest(volume.volume_id), ctx));
      expect(res.code).toBe(status.INTERNAL);
      expect(res.message).toContain("mount failed");
      expect(efs.accessPoints.size).toBe(1);
    });
  });
});

describe("ValidateVolumeCapabilities", () => {
  const validate = (volume_id: string, caps: VolumeCapability[]): ValidateVolumeCapabilitiesRequest => ({
    volume_id,
    volume_context: {},
    volume_capabilities: caps,
    parameters: {},
    secrets: {},
    mutable_parameters: {},
  });

  it("confirms mount capabilities of existing volumes, dynamic and static", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    for (const id of [volume.volume_id, fsId, `${fsId}:/data`]) {
      const res = await c.ValidateVolumeCapabilities(validate(id, [mountCap("SINGLE_NODE_WRITER")]));
      expect(res.confirmed?.volume_capabilities).toHaveLength(1);
    }
  });

  it("does not confirm block access", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    const res = await c.ValidateVolumeCapabilities(validate(volume.volume_id, [blockCap()]));
    expect(res.confirmed).toBeNull();
    expect(res.message).toContain("block");
    // A capability the spec does not know is the caller's mistake, as for EBS.
    const malformed = await codeOf(
      c.ValidateVolumeCapabilities(validate(volume.volume_id, [mountCap(99 as never)])),
    );
    expect(malformed.code).toBe(status.INVALID_ARGUMENT);
    expect(malformed.message).toContain("volume_capabilities[0].access_mode.mode");
  });

  it("answers NOT_FOUND for volumes that do not exist", async () => {
    const c = controller();
    for (const id of ["fake-vol-id-1234", "fs-99999999", `${fsId}::fsap-00000000000000099`]) {
      expect((await codeOf(c.ValidateVolumeCapabilities(validate(id, [mountCap()])))).code).toBe(
        status.NOT_FOUND,
      );
    }
  });

  it("requires a volume id and capabilities", async () => {
    const c = controller();
    expect((await codeOf(c.ValidateVolumeCapabilities(validate("", [mountCap()])))).code).toBe(
      status.INVALID_ARGUMENT,
    );
    expect((await codeOf(c.ValidateVolumeCapabilities(validate(fsId, [])))).code).toBe(
      status.INVALID_ARGUMENT,
    );
  });
});

describe("ControllerExpandVolume", () => {
  const expand = (volume_id: string, required_bytes: number, limit_bytes = 0) => ({
    volume_id,
    capacity_range: { required_bytes, limit_bytes },
    secrets: {},
    volume_capability: null,
  });

  it("records the new size in the access point's capacity tag", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    let tagged: unknown;
    efs.beforeCall = (method, arg) => {
      if (method === "tagResource") tagged = arg;
    };
    expect(await c.ControllerExpandVolume(expand(volume.volume_id, 15 * GiB), ctx)).toEqual({
      capacity_bytes: 15 * GiB,
      node_expansion_required: false,
    });
    const ap = accessPointOf(volume.volume_id);
    expect(ap.tags[TAG_CAPACITY]).toBe(String(15 * GiB));
    expect(tagged).toEqual({ resourceId: ap.id, tags: { [TAG_CAPACITY]: String(15 * GiB) } });
    expect(ap.tags[TAG_CLUSTER]).toBe("true");
  });

  it("is idempotent and never shrinks: a size at or below the recorded one changes nothing", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    await c.ControllerExpandVolume(expand(volume.volume_id, 15 * GiB), ctx);
    const tags = efs.calls["tagResource"];
    for (const size of [15 * GiB, 12 * GiB]) {
      expect(await c.ControllerExpandVolume(expand(volume.volume_id, size), ctx)).toEqual({
        capacity_bytes: 15 * GiB,
        node_expansion_required: false,
      });
    }
    expect(efs.calls["tagResource"]).toBe(tags);
    expect(accessPointOf(volume.volume_id).tags[TAG_CAPACITY]).toBe(String(15 * GiB));
    const res = await codeOf(c.ControllerExpandVolume(expand(volume.volume_id, 12 * GiB, 12 * GiB), ctx));
    expect(res.code).toBe(status.OUT_OF_RANGE);
  });

  it("keeps a retried CreateVolume working after an expansion: the larger size fits the original range", async () => {
    const c = controller();
    const first = await c.CreateVolume(createRequest("pvc-1"), ctx);
    await c.ControllerExpandVolume(expand(first.volume.volume_id, 15 * GiB), ctx);
    // The original request (10 GiB, no limit): OK, answered with the volume's capacity now.
    const again = await c.CreateVolume(createRequest("pvc-1"), ctx);
    expect(again.volume).toEqual({ ...first.volume, capacity_bytes: 15 * GiB });
    // A limit below the expanded size: the existing volume is no longer compatible.
    const limited = createRequest(
      "pvc-1",
      {},
      { capacity_range: { required_bytes: 10 * GiB, limit_bytes: 10 * GiB } },
    );
    const res = await codeOf(c.CreateVolume(limited, ctx));
    expect(res.code).toBe(status.ALREADY_EXISTS);
    expect(res.message).toContain(`capacity ${15 * GiB} bytes`);
    expect(efs.accessPoints.size).toBe(1);
  });

  it("answers a static volume, or an access point without a capacity tag, with the new size and tags nothing", async () => {
    const c = controller();
    expect(await c.ControllerExpandVolume(expand(fsId, 11 * GiB), ctx)).toEqual({
      capacity_bytes: 11 * GiB,
      node_expansion_required: false,
    });
    const untagged = await c.CreateVolume(createRequest("pvc-1", { enableTagging: "false" }), ctx);
    expect(await c.ControllerExpandVolume(expand(untagged.volume.volume_id, 11 * GiB), ctx)).toEqual({
      capacity_bytes: 11 * GiB,
      node_expansion_required: false,
    });
    expect(efs.calls["tagResource"]).toBeUndefined();
    expect(accessPointOf(untagged.volume.volume_id).tags).toEqual({});
  });

  it("answers PERMISSION_DENIED naming the permission when AWS refuses TagResource", async () => {
    const c = controller();
    const { volume } = await c.CreateVolume(createRequest("pvc-1"), ctx);
    efs.beforeCall = (method) => {
      if (method === "tagResource")
        throw new EfsError("AccessDenied", "AccessDeniedException", "no TagResource");
    };
    const res = await codeOf(c.ControllerExpandVolume(expand(volume.volume_id, 15 * GiB), ctx));
    expect(res.code).toBe(status.PERMISSION_DENIED);
    expect(res.message).toContain("elasticfilesystem:TagResource");
    expect(accessPointOf(volume.volume_id).tags[TAG_CAPACITY]).toBe(String(10 * GiB));
  });

  it("answers NOT_FOUND for a volume that does not exist, INVALID_ARGUMENT without id or size", async () => {
    const c = controller();
    expect(
      (await codeOf(c.ControllerExpandVolume(expand(`${fsId}::fsap-00000000000000099`, GiB), ctx))).code,
    ).toBe(status.NOT_FOUND);
    expect((await codeOf(c.ControllerExpandVolume(expand("fs-0000000000000000f", GiB), ctx))).code).toBe(
      status.NOT_FOUND,
    );
    expect((await codeOf(c.ControllerExpandVolume(expand("", GiB), ctx))).code).toBe(status.INVALID_ARGUMENT);
    expect(
      (await codeOf(c.ControllerExpandVolume({ ...expand(fsId, GiB), capacity_range: null }, ctx))).code,
    ).toBe(status.INVALID_ARGUMENT);
  });
});
