import { status } from "@grpc/grpc-js";
import { beforeEach, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import type { CreateVolumeRequest } from "../../src/csi/types.ts";
import { CloudError } from "../../src/ebs/cloud.ts";
import { clientTokenFor, EbsController } from "../../src/ebs/controller.ts";
import { createLogger } from "../../src/log.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { FakeEc2 } from "./fake-ec2.ts";

const GiB = 1024 ** 3;
const log = createLogger("silent");
const ctx = (): RpcContext => ({ requestId: "test", log, signal: new AbortController().signal });
const fastWait = { initialMs: 1, factor: 1, maxDelayMs: 1, timeoutMs: 200 };

const mountCap = (mode = "SINGLE_NODE_WRITER") => ({
  access_mode: { mode },
  mount: { fs_type: "ext4", mount_flags: [] },
});

/** A CreateVolumeRequest as the server decodes it: every field present, defaults filled in. */
function createReq(over: Partial<CreateVolumeRequest> = {}): CreateVolumeRequest {
  return {
    name: "pvc-1",
    capacity_range: { required_bytes: 10 * GiB, limit_bytes: 0 },
    volume_capabilities: [mountCap() as never],
    parameters: {},
    secrets: {},
    volume_content_source: null,
    accessibility_requirements: null,
    mutable_parameters: {},
    ...over,
  } as CreateVolumeRequest;
}

async function expectCode(promise: Promise<unknown>, code: status, message?: RegExp): Promise<CsiError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "expected the call to fail").toBeInstanceOf(CsiError);
  const csi = err as CsiError;
  expect(status[csi.code]).toBe(status[code]);
  if (message) expect(csi.message).toMatch(message);
  return csi;
}

describe("EBS controller", () => {
  let ec2: FakeEc2;
  let controller: EbsController;

  beforeEach(() => {
    ec2 = new FakeEc2();
    controller = new EbsController(ec2, log, { createWait: fastWait, attachWait: fastWait, clusterId: "c1" });
  });

  describe("CreateVolume", () => {
    it("creates a tagged volume with both zone keys and rounds the size up to GiB", async () => {
      const res = await controller.CreateVolume(
        createReq({ capacity_range: { required_bytes: 5 * GiB + 1, limit_bytes: 0 } }),
        ctx(),
      );
      const volume = res.volume!;
      expect(volume.capacity_bytes).toBe(6 * GiB);
      expect(volume.accessible_topology).toEqual([
        {
          segments: {
            "topology.kubernetes.io/zone": "us-east-1a",
            "topology.ebs.csi.aws.com/zone": "us-east-1a",
          },
        },
      ]);
      const disk = ec2.disks.get(volume.volume_id!)!;
      expect(disk.tags).toMatchObject({
        CSIVolumeName: "pvc-1",
        "ebs.csi.aws.com/cluster": "true",
        "kubernetes.io/cluster/c1": "owned",
      });
      expect(disk.type).toBe("gp3");
      expect(ec2.tokens.has(clientTokenFor("pvc-1"))).toBe(true);
    });

    it("returns the same volume for the same name and makes no second volume", async () => {
      const a = await controller.CreateVolume(createReq(), ctx());
      const b = await controller.CreateVolume(createReq(), ctx());
      expect(b.volume!.volume_id).toBe(a.volume!.volume_id);
      expect(ec2.disks.size).toBe(1);
      expect(ec2.calls.createVolume).toBe(1);
    });

    it("gives ALREADY_EXISTS for the same name with another size", async () => {
      await controller.CreateVolume(createReq(), ctx());
      await expectCode(
        controller.CreateVolume(
          createReq({ capacity_range: { required_bytes: 20 * GiB, limit_bytes: 0 } }),
          ctx(),
        ),
        status.ALREADY_EXISTS,
        /size 10 GiB, not 20 GiB/,
      );
    });

    it("returns the same volume on retry where the account encrypts every volume by default", async () => {
      ec2.encryptByDefault = true;
      const a = await controller.CreateVolume(createReq(), ctx());
      const b = await controller.CreateVolume(createReq(), ctx());
      expect(b.volume!.volume_id).toBe(a.volume!.volume_id);
      expect(ec2.disks.get(a.volume!.volume_id!)!.encrypted).toBe(true);
    });

    it("gives ALREADY_EXISTS when EC2 reports a ClientToken mismatch", async () => {
      // A volume made with the same token but without the name tag, e.g. by an earlier version.
      const other = { zone: "us-east-1a", sizeGiB: 1, type: "gp2" as const, encrypted: false, tags: {} };
      await ec2.createVolume({ ...other, clientToken: clientTokenFor("pvc-1") });
      await expectCode(controller.CreateVolume(createReq(), ctx()), status.ALREADY_EXISTS, /token/);
    });

    it("creates in a requisite zone, preferring the preferred one", async () => {
      const zone = (z: string) => ({ segments: { "topology.kubernetes.io/zone": z } });
      const res = await controller.CreateVolume(
        createReq({
          accessibility_requirements: {
            requisite: [zone("us-east-1a"), zone("us-east-1b")],
            preferred: [zone("us-east-1b")],
          },
        }),
        ctx(),
      );
      expect(ec2.disks.get(res.volume!.volume_id!)!.zone).toBe("us-east-1b");
    });

    it("refuses requests that name no usable zone key", async () => {
      await expectCode(
        controller.CreateVolume(
          createReq({
            accessibility_requirements: { requisite: [{ segments: { rack: "r1" } }], preferred: [] },
          }),
          ctx(),
        ),
        status.INVALID_ARGUMENT,
        /accessibility_requirements\.requisite\[0\]/,
      );
    });

    it.each([
      [{ name: "" }, /^name: required/],
      [{ name: "x".repeat(129) }, /^name: 129 bytes/],
      [{ volume_capabilities: [] }, /^volume_capabilities: at least one/],
      [
        { volume_capabilities: [{ access_mode: { mode: 99 } }] },
        /volume_capabilities\[0\]\.access_mode\.mode: 99/,
      ],
      [
        { volume_capabilities: [{ access_mode: { mode: "SINGLE_NODE_WRITER" } }] },
        /volume_capabilities\[0\]: access_type/,
      ],
      [
        { volume_capabilities: [{ access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "zfs" } }] },
        /fs_type/,
      ],
      [{ volume_capabilities: [mountCap("MULTI_NODE_MULTI_WRITER")] }, /only supported for raw block/],
      [{ capacity_range: { required_bytes: 2 * GiB, limit_bytes: GiB } }, /capacity_range\.limit_bytes/],
      [{ parameters: { bogus: "1" } }, /parameters\.bogus/],
      [{ parameters: { big: "x".repeat(5000) } }, /^parameters: .*4 KiB/],
      [
        { volume_content_source: { volume: { volume_id: "" } } },
        /volume_content_source\.volume\.volume_id: required/,
      ],
      [{ volume_content_source: {} }, /volume_content_source: names neither/],
    ] as [Partial<CreateVolumeRequest>, RegExp][])(
      "refuses %j with INVALID_ARGUMENT naming the field",
      async (over, message) => {
        await expectCode(controller.CreateVolume(createReq(over), ctx()), status.INVALID_ARGUMENT, message);
        expect(ec2.disks.size).toBe(0);
      },
    );

    it("turns multi-attach on for a multi-node raw block io2 volume, and refuses it for gp3", async () => {
      const multi = { access_mode: { mode: "MULTI_NODE_MULTI_WRITER" }, block: {} };
      const res = await controller.CreateVolume(
        createReq({ volume_capabilities: [multi as never], parameters: { type: "io2", iops: "1000" } }),
        ctx(),
      );
      expect(ec2.disks.get(res.volume!.volume_id!)!.multiAttach).toBe(true);
      await expectCode(
        controller.CreateVolume(
          createReq({ name: "gp3-multi", volume_capabilities: [multi as never] }),
          ctx(),
        ),
        status.INVALID_ARGUMENT,
        /volume_capabilities\[0\]: .*io1 or io2.*not gp3/,
      );
    });

    it("gives OUT_OF_RANGE when no size fits the type", async () => {
      await expectCode(
        controller.CreateVolume(
          createReq({ capacity_range: { required_bytes: 100_000 * GiB, limit_bytes: 0 } }),
          ctx(),
        ),
        status.OUT_OF_RANGE,
      );
    });

    it("deletes a volume that EC2 puts in the error state instead of leaking it", async () => {
      const original = ec2.createVolume.bind(ec2);
      ec2.createVolume = async (input) => {
        const disk = await original(input);
        ec2.disks.get(disk.id)!.state = "error";
        return { ...disk, state: "creating" };
      };
      await expectCode(
        controller.CreateVolume(createReq(), ctx()),
        status.INTERNAL,
        /state "error".*deleted/,
      );
      expect(ec2.disks.size).toBe(0);
    });
  });

  describe("DeleteVolume", () => {
    it("deletes, and answers OK for unknown and malformed ids", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      await controller.DeleteVolume({ volume_id: volume!.volume_id!, secrets: {} }, ctx());
      expect(ec2.disks.size).toBe(0);
      await controller.DeleteVolume({ volume_id: volume!.volume_id!, secrets: {} }, ctx());
      await controller.DeleteVolume({ volume_id: "not-a-volume", secrets: {} }, ctx());
    });

    it("gives FAILED_PRECONDITION for an attached volume", async () => {
      const node = ec2.addInstance();
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      await controller.ControllerPublishVolume(publishReq(volume!.volume_id!, node), ctx());
      await expectCode(
        controller.DeleteVolume({ volume_id: volume!.volume_id!, secrets: {} }, ctx()),
        status.FAILED_PRECONDITION,
        /attached/,
      );
    });
  });

  const publishReq = (volumeId: string, nodeId: string, mode = "SINGLE_NODE_WRITER") =>
    ({
      volume_id: volumeId,
      node_id: nodeId,
      volume_capability: mountCap(mode),
      readonly: false,
      secrets: {},
      volume_context: {},
    }) as never;

  describe("ControllerPublishVolume / ControllerUnpublishVolume", () => {
    it("attaches, answers the same device again, and detaches idempotently", async () => {
      const node = ec2.addInstance();
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const id = volume!.volume_id!;
      const first = await controller.ControllerPublishVolume(publishReq(id, node), ctx());
      expect(first.publish_context!.devicePath).toBe("/dev/xvdaa");
      const again = await controller.ControllerPublishVolume(publishReq(id, node), ctx());
      expect(again.publish_context).toEqual(first.publish_context);
      expect(ec2.calls.attachVolume).toBe(1);

      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "NODE_CLEANUP_SUCCEEDED" },
        ctx(),
      );
      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "NODE_CLEANUP_SUCCEEDED" },
        ctx(),
      );
      expect(ec2.disks.get(id)!.attachments).toEqual([]);
      expect(ec2.calls.detachVolume).toBe(1);
    });

    it("gives NOT_FOUND for an unknown volume or node, naming the field", async () => {
      const node = ec2.addInstance();
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      await expectCode(
        controller.ControllerPublishVolume(publishReq("vol-00000000000000099", node), ctx()),
        status.NOT_FOUND,
        /volume_id/,
      );
      await expectCode(
        controller.ControllerPublishVolume(publishReq(volume!.volume_id!, "i-00000000000000099"), ctx()),
        status.NOT_FOUND,
        /node_id/,
      );
      await expectCode(
        controller.ControllerPublishVolume(publishReq(volume!.volume_id!, "fake-node"), ctx()),
        status.NOT_FOUND,
        /node_id/,
      );
    });

    it("gives FAILED_PRECONDITION when the volume is attached to another node", async () => {
      const a = ec2.addInstance();
      const b = ec2.addInstance();
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      await controller.ControllerPublishVolume(publishReq(volume!.volume_id!, a), ctx());
      await expectCode(
        controller.ControllerPublishVolume(publishReq(volume!.volume_id!, b), ctx()),
        status.FAILED_PRECONDITION,
        new RegExp(a),
      );
    });

    it("gives FAILED_PRECONDITION when volume and node are in different zones", async () => {
      const node = ec2.addInstance("us-east-1b");
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      await expectCode(
        controller.ControllerPublishVolume(publishReq(volume!.volume_id!, node), ctx()),
        status.FAILED_PRECONDITION,
        /us-east-1b/,
      );
    });

    it("never hands out a device name twice under 50 concurrent attaches to one node", async () => {
      ec2.ebsLimit = 100;
      const node = ec2.addInstance();
      const ids = await Promise.all(
        Array.from({ length: 50 }, (_, i) => controller.CreateVolume(createReq({ name: `pvc-${i}` }), ctx())),
      );
      const results = await Promise.all(
        ids.map((r) => controller.ControllerPublishVolume(publishReq(r.volume!.volume_id!, node), ctx())),
      );
      const devices = results.map((r) => r.publish_context!.devicePath);
      expect(new Set(devices).size).toBe(50);
      expect(devices).not.toContain("/dev/xvda");
      expect(ec2.instances.get(node)!.devices.size).toBe(51);
    });

    it("gives RESOURCE_EXHAUSTED at the node's attachment limit (root volume and network interface count)", async () => {
      ec2.ebsLimit = 4;
      const node = ec2.addInstance();
      const vols = [];
      for (let i = 0; i < 3; i++)
        vols.push((await controller.CreateVolume(createReq({ name: `v${i}` }), ctx())).volume!.volume_id!);
      await controller.ControllerPublishVolume(publishReq(vols[0]!, node), ctx());
      await controller.ControllerPublishVolume(publishReq(vols[1]!, node), ctx());
      await expectCode(
        controller.ControllerPublishVolume(publishReq(vols[2]!, node), ctx()),
        status.RESOURCE_EXHAUSTED,
        /limit 3/,
      );
      expect(ec2.disks.get(vols[2]!)!.attachments).toEqual([]);
    });

    it("frees a device name even when an earlier call did the detach", async () => {
      const node = ec2.addInstance();
      const first = (await controller.CreateVolume(createReq({ name: "a" }), ctx())).volume!.volume_id!;
      const second = (await controller.CreateVolume(createReq({ name: "b" }), ctx())).volume!.volume_id!;
      expect(
        (await controller.ControllerPublishVolume(publishReq(first, node), ctx())).publish_context!
          .devicePath,
      ).toBe("/dev/xvdaa");
      // The first ControllerUnpublish timed out after EC2 detached: its retry finds nothing attached.
      await ec2.detachVolume(first, node);
      await controller.ControllerUnpublishVolume(
        { volume_id: first, node_id: node, secrets: {}, reason: "NODE_CLEANUP_SUCCEEDED" },
        ctx(),
      );
      expect(
        (await controller.ControllerPublishVolume(publishReq(second, node), ctx())).publish_context!
          .devicePath,
      ).toBe("/dev/xvdaa");
    });

    it("picks another device name when EC2 says one is in use", async () => {
      const node = ec2.addInstance();
      ec2.instances.get(node)!.devices.set("/dev/xvdaa", "vol-foreign");
      const hidden = ec2.getInstances.bind(ec2);
      // EC2's describe lags behind: the name in use is not reported yet.
      ec2.getInstances = async (ids) => {
        const found = await hidden(ids);
        found.get(node)?.devices.delete("/dev/xvdaa");
        return found;
      };
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const res = await controller.ControllerPublishVolume(publishReq(volume!.volume_id!, node), ctx());
      expect(res.publish_context!.devicePath).toBe("/dev/xvdab");
    });
  });

  describe("expand, modify, list, get, validate", () => {
    it("expands to the rounded size and asks for node expansion of filesystems only", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const id = volume!.volume_id!;
      const res = await controller.ControllerExpandVolume(
        {
          volume_id: id,
          capacity_range: { required_bytes: 20 * GiB - 5, limit_bytes: 0 },
          secrets: {},
          volume_capability: null,
        },
        ctx(),
      );
      expect(res).toEqual({ capacity_bytes: 20 * GiB, node_expansion_required: true });
      expect(ec2.disks.get(id)!.sizeGiB).toBe(20);
      const block = await controller.ControllerExpandVolume(
        {
          volume_id: id,
          capacity_range: { required_bytes: 20 * GiB, limit_bytes: 0 },
          secrets: {},
          volume_capability: { access_mode: { mode: "SINGLE_NODE_WRITER" }, block: {} } as never,
        },
        ctx(),
      );
      expect(block.node_expansion_required).toBe(false);
      expect(ec2.calls.modifyVolume).toBe(1);
    });

    it("refuses expansion past limit_bytes or the type maximum with OUT_OF_RANGE", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const expand = (required: number, limit: number) =>
        controller.ControllerExpandVolume(
          {
            volume_id: volume!.volume_id!,
            capacity_range: { required_bytes: required, limit_bytes: limit },
            secrets: {},
            volume_capability: null,
          },
          ctx(),
        );
      await expectCode(expand(20 * GiB + 1, 20 * GiB + 2), status.OUT_OF_RANGE, /limit_bytes/);
      await expectCode(expand(1_000_000 * GiB, 0), status.OUT_OF_RANGE, /maximum/);
      await expectCode(
        controller.ControllerExpandVolume(
          {
            volume_id: "vol-00000000000000099",
            capacity_range: { required_bytes: GiB, limit_bytes: 0 },
            secrets: {},
            volume_capability: null,
          },
          ctx(),
        ),
        status.NOT_FOUND,
      );
    });

    it("modifies iops and type, refuses unknown keys with nothing applied", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const id = volume!.volume_id!;
      await expectCode(
        controller.ControllerModifyVolume(
          { volume_id: id, mutable_parameters: { XXX_FakeKey: "1" }, secrets: {} },
          ctx(),
        ),
        status.INVALID_ARGUMENT,
        /XXX_FakeKey/i,
      );
      expect(ec2.calls.modifyVolume ?? 0).toBe(0);
      await controller.ControllerModifyVolume(
        { volume_id: id, mutable_parameters: { iops: "5000" }, secrets: {} },
        ctx(),
      );
      expect(ec2.disks.get(id)!.iops).toBe(5000);
      await expectCode(
        controller.ControllerModifyVolume(
          { volume_id: "non-existing-volume-id", mutable_parameters: {}, secrets: {} },
          ctx(),
        ),
        status.NOT_FOUND,
      );
    });

    it("does not ask EC2 again for what a volume has or what a running modification will give it", async () => {
      const { volume } = await controller.CreateVolume(createReq({ parameters: { iops: "4000" } }), ctx());
      const id = volume!.volume_id!;
      // Already has 4000 IOPS: nothing to modify.
      await controller.ControllerModifyVolume(
        { volume_id: id, mutable_parameters: { iops: "4000" }, secrets: {} },
        ctx(),
      );
      expect(ec2.calls.modifyVolume ?? 0).toBe(0);
      // A retry while the first call's modification still runs: EC2 would refuse a second one.
      ec2.modifications.set(id, { state: "optimizing", targetIops: 4500 });
      await controller.ControllerModifyVolume(
        { volume_id: id, mutable_parameters: { iops: "4500" }, secrets: {} },
        ctx(),
      );
      expect(ec2.calls.modifyVolume ?? 0).toBe(0);
      ec2.modifications.set(id, { state: "optimizing", targetSizeGiB: 30 });
      await controller
        .ControllerExpandVolume(
          {
            volume_id: id,
            capacity_range: { required_bytes: 30 * GiB, limit_bytes: 0 },
            secrets: {},
            volume_capability: null,
          },
          ctx(),
        )
        .catch(() => undefined);
      expect(ec2.calls.modifyVolume ?? 0).toBe(0);
    });

    it("lists volumes page by page with their nodes, and refuses a bad token with ABORTED", async () => {
      const node = ec2.addInstance();
      const ids = [];
      for (let i = 0; i < 5; i++)
        ids.push((await controller.CreateVolume(createReq({ name: `v${i}` }), ctx())).volume!.volume_id!);
      await controller.ControllerPublishVolume(publishReq(ids[0]!, node), ctx());
      const seen: string[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await controller.ListVolumes({ max_entries: 2, starting_token: token });
        for (const e of page.entries!) {
          seen.push(e.volume!.volume_id!);
          if (e.volume!.volume_id === ids[0]) expect(e.status!.published_node_ids).toEqual([node]);
        }
        token = page.next_token ?? "";
        pages++;
      } while (token);
      expect(pages).toBe(3);
      expect(seen.sort()).toEqual([...ids].sort());
      await expectCode(
        controller.ListVolumes({ max_entries: 0, starting_token: "invalid-token" }),
        status.ABORTED,
      );
    });

    it("gets a volume with its status, NOT_FOUND when it is gone", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const got = await controller.ControllerGetVolume({ volume_id: volume!.volume_id! });
      expect(got.volume!.capacity_bytes).toBe(10 * GiB);
      expect(got.status).toEqual({ published_node_ids: [] });
      await expectCode(
        controller.ControllerGetVolume({ volume_id: "vol-00000000000000099" }),
        status.NOT_FOUND,
      );
    });

    it("advertises GET_VOLUME_HEALTH and LIST_VOLUME_HEALTH, and nothing csi-sanity v5.6.0 does not know (GET_NODE_INFO)", async () => {
      const types = (await controller.ControllerGetCapabilities()).capabilities!.map((c) => c.rpc!.type);
      expect(types).toEqual(expect.arrayContaining(["GET_VOLUME_HEALTH", "LIST_VOLUME_HEALTH"]));
      expect(types).not.toContain("GET_NODE_INFO");
    });

    it("ControllerListVolumeHealth lists only volumes in trouble, pages by max_entries, ABORTED for a bad token", async () => {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++)
        ids.push((await controller.CreateVolume(createReq({ name: `h${i}` }), ctx())).volume!.volume_id!);
      expect(
        (await controller.ControllerListVolumeHealth({ max_entries: 0, starting_token: "", secrets: {} }))
          .entries,
      ).toEqual([]);
      ec2.disks.get(ids[1]!)!.state = "error";
      ec2.disks.get(ids[4]!)!.state = "error";
      const seen: string[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await controller.ControllerListVolumeHealth({
          max_entries: 2,
          starting_token: token,
          secrets: {},
        });
        expect(page.entries!.length).toBeLessThanOrEqual(2);
        for (const e of page.entries!) {
          seen.push(e.volume_id!);
          expect(e.health_statuses!.map((h) => h.status)).toEqual(["INACCESSIBLE", "DATA_LOSS"]);
        }
        token = page.next_token ?? "";
        pages++;
      } while (token);
      expect(pages).toBe(3);
      expect(seen.sort()).toEqual([ids[1]!, ids[4]!].sort());
      await expectCode(
        controller.ControllerListVolumeHealth({
          max_entries: 0,
          starting_token: "invalid-token",
          secrets: {},
        }),
        status.ABORTED,
      );
      await expectCode(
        controller.ControllerListVolumeHealth({ max_entries: -1, starting_token: "", secrets: {} }),
        status.INVALID_ARGUMENT,
      );
    });

    it("ControllerGetVolumeHealth: healthy, then INACCESSIBLE and DATA_LOSS once EC2 says error; NOT_FOUND, INVALID_ARGUMENT", async () => {
      const id = (await controller.CreateVolume(createReq(), ctx())).volume!.volume_id!;
      expect(await controller.ControllerGetVolumeHealth({ volume_id: id, secrets: {} })).toEqual({
        volume_health: { volume_id: id, health_statuses: [] },
      });
      // What EC2 shows when the volume's hardware failed.
      ec2.disks.get(id)!.state = "error";
      const health = (await controller.ControllerGetVolumeHealth({ volume_id: id, secrets: {} }))
        .volume_health!;
      expect(health.volume_id).toBe(id);
      expect(health.health_statuses!.map((h) => [h.status, h.reason])).toEqual([
        ["INACCESSIBLE", "VolumeError"],
        ["DATA_LOSS", "VolumeError"],
      ]);
      expect(health.health_statuses![0]!.message).toMatch(/state "error"/);
      await expectCode(
        controller.ControllerGetVolumeHealth({ volume_id: "vol-00000000000000099", secrets: {} }),
        status.NOT_FOUND,
      );
      await expectCode(
        controller.ControllerGetVolumeHealth({ volume_id: "", secrets: {} }),
        status.INVALID_ARGUMENT,
      );
    });

    it("health from EC2's status checks: one DescribeVolumeStatus per listed page, never one per volume", async () => {
      const ids: string[] = [];
      for (let i = 0; i < 6; i++)
        ids.push((await controller.CreateVolume(createReq({ name: `s${i}` }), ctx())).volume!.volume_id!);
      ec2.statuses.set(ids[0]!, {
        status: "impaired",
        ioEnabled: "failed",
        events: [{ type: "potential-data-inconsistency", description: "writes may be lost" }],
      });
      ec2.statuses.set(ids[3]!, { status: "warning", ioPerformance: "severely-degraded", events: [] });
      // Checks not finished add nothing to what the volume state says.
      ec2.disks.get(ids[5]!)!.state = "error";
      ec2.statuses.set(ids[5]!, { status: "insufficient-data", events: [] });
      const before = ec2.calls["getVolumeStatuses"] ?? 0;
      const seen = new Map<string, unknown>();
      let token = "";
      let pages = 0;
      do {
        const page = await controller.ControllerListVolumeHealth({
          max_entries: 3,
          starting_token: token,
          secrets: {},
        });
        for (const e of page.entries!)
          seen.set(
            e.volume_id!,
            e.health_statuses!.map((h) => [h.status, h.reason]),
          );
        token = page.next_token ?? "";
        pages++;
      } while (token);
      expect(ec2.calls["getVolumeStatuses"]! - before).toBe(pages);
      expect(seen).toEqual(
        new Map<string, unknown>([
          [
            ids[0]!,
            [
              ["INACCESSIBLE", "IoDisabled"],
              ["DATA_LOSS", "PotentialDataInconsistency"],
            ],
          ],
          [ids[3]!, [["DEGRADED", "IoPerformanceSeverelyDegraded"]]],
          [
            ids[5]!,
            [
              ["INACCESSIBLE", "VolumeError"],
              ["DATA_LOSS", "VolumeError"],
            ],
          ],
        ]),
      );
      // EC2's status API failing is the caller's to retry, with the cause named.
      ec2.failNext.getVolumeStatuses = new CloudError("Throttled", "RequestLimitExceeded", "slow down");
      await expectCode(
        controller.ControllerGetVolumeHealth({ volume_id: ids[0]!, secrets: {} }),
        status.UNAVAILABLE,
      );
      // The managed IAM policy of the official driver does not allow DescribeVolumeStatus: the
      // volume state still answers.
      ec2.failNext.getVolumeStatuses = new CloudError("Unauthorized", "UnauthorizedOperation", "not allowed");
      const denied = await controller.ControllerGetVolumeHealth({ volume_id: ids[5]!, secrets: {} });
      expect(denied.volume_health!.health_statuses!.map((h) => h.reason)).toEqual([
        "VolumeError",
        "VolumeError",
      ]);
    });

    it("clones a volume with CopyVolumes in its zone, at least its size, with its encryption; retries get the same clone", async () => {
      const source = (
        await controller.CreateVolume(
          createReq({ name: "src", parameters: { encrypted: "true", kmsKeyId: "key-1" } }),
          ctx(),
        )
      ).volume!;
      const clone = (name: string, over: Partial<CreateVolumeRequest> = {}) =>
        controller.CreateVolume(
          createReq({ name, volume_content_source: { volume: { volume_id: source.volume_id! } }, ...over }),
          ctx(),
        );
      const first = (await clone("copy", { capacity_range: null })).volume!;
      expect(first.content_source).toEqual({ volume: { volume_id: source.volume_id } });
      expect(first.capacity_bytes).toBe(source.capacity_bytes);
      const disk = ec2.disks.get(first.volume_id!)!;
      expect(disk).toMatchObject({
        sourceVolumeId: source.volume_id,
        zone: ec2.disks.get(source.volume_id!)!.zone,
        encrypted: true,
        kmsKeyId: "key-1",
      });
      expect((await clone("copy", { capacity_range: null })).volume!.volume_id).toBe(first.volume_id);
      expect(ec2.calls["copyVolume"]).toBe(1);

      const cases: [Partial<CreateVolumeRequest>, status, RegExp][] = [
        [{ capacity_range: { required_bytes: 1, limit_bytes: 1 } }, status.OUT_OF_RANGE, /at least as large/],
        [{ parameters: { encrypted: "false" } }, status.INVALID_ARGUMENT, /parameters\.encrypted/],
        [{ parameters: { kmsKeyId: "key-2" } }, status.INVALID_ARGUMENT, /parameters\.kmsKeyId/],
        [
          { parameters: { volumeInitializationRate: "200" } },
          status.INVALID_ARGUMENT,
          /restored from a snapshot/,
        ],
        [
          {
            accessibility_requirements: {
              requisite: [{ segments: { "topology.kubernetes.io/zone": "us-east-1b" } }],
              preferred: [],
            },
          },
          status.RESOURCE_EXHAUSTED,
          /stays in its source's zone/,
        ],
        [
          { volume_content_source: { volume: { volume_id: "vol-00000000000000099" } } },
          status.NOT_FOUND,
          /no volume/,
        ],
      ];
      for (const [i, [over, code, message]] of cases.entries()) {
        await expectCode(clone(`bad-${i}`, over), code, message);
      }
      // Same name, no source: ALREADY_EXISTS.
      await expectCode(
        controller.CreateVolume(createReq({ name: "copy" }), ctx()),
        status.ALREADY_EXISTS,
        /content from volume/,
      );
    });

    it("confirms supported capabilities and explains unsupported ones", async () => {
      const { volume } = await controller.CreateVolume(createReq(), ctx());
      const req = (caps: unknown[]) =>
        ({
          volume_id: volume!.volume_id!,
          volume_capabilities: caps,
          volume_context: {},
          parameters: {},
          mutable_parameters: {},
          secrets: {},
        }) as never;
      expect((await controller.ValidateVolumeCapabilities(req([mountCap()]))).confirmed).toBeTruthy();
      const refused = await controller.ValidateVolumeCapabilities(req([mountCap("MULTI_NODE_MULTI_WRITER")]));
      expect(refused.confirmed).toBeUndefined();
      expect(refused.message).toMatch(/raw block/);
      // A capability the spec does not know is the caller's mistake, not an unsupported one.
      await expectCode(
        controller.ValidateVolumeCapabilities(req([{ access_mode: { mode: 99 }, mount: {} }])),
        status.INVALID_ARGUMENT,
        /volume_capabilities\[0\]\.access_mode\.mode/,
      );
    });
  });
});
