import { beforeEach, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { statusName } from "../../src/csi/status.ts";
import { EbsController } from "../../src/ebs/controller.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { FakeEc2 } from "./fake-ec2.ts";

const log = createLogger("silent");
const ctx = (): RpcContext => ({ requestId: "test", log, signal: new AbortController().signal });
const fastWait = { initialMs: 1, factor: 1, maxDelayMs: 1, timeoutMs: 200 };

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "expected the call to fail").toBeInstanceOf(CsiError);
  return statusName((err as CsiError).code);
}

describe("EBS controller, CSI 1.14", () => {
  let ec2: FakeEc2;
  let metrics: ReturnType<typeof createMetrics>;
  let controller: EbsController;

  beforeEach(() => {
    ec2 = new FakeEc2();
    metrics = createMetrics("aws_ebs_csi");
    controller = new EbsController(ec2, log, {
      createWait: fastWait,
      attachWait: fastWait,
      forceDetachAfterMs: 50,
      unpublishReasons: metrics.unpublishReasons,
    });
  });

  async function attachedVolume(node: string): Promise<string> {
    const { volume } = await controller.CreateVolume(
      {
        name: `pvc-${Math.random()}`,
        capacity_range: { required_bytes: 1024 ** 3, limit_bytes: 0 },
        volume_capabilities: [{ access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } }],
        parameters: {},
        secrets: {},
        volume_content_source: null,
        accessibility_requirements: null,
        mutable_parameters: {},
      } as never,
      ctx(),
    );
    const id = volume!.volume_id!;
    await controller.ControllerPublishVolume(
      {
        volume_id: id,
        node_id: node,
        volume_capability: { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } },
        readonly: false,
        secrets: {},
        volume_context: {},
      } as never,
      ctx(),
    );
    return id;
  }

  describe("ControllerGetNodeInfo", () => {
    it("answers limit, both zone keys and every attached volume, root included", async () => {
      const node = ec2.addInstance("us-east-1a");
      const id = await attachedVolume(node);
      const res = await controller.ControllerGetNodeInfo({ node_id: node });
      // 28 shared attachments less one network interface; the root volume is listed, not subtracted.
      expect(res.max_volumes_per_node).toBe(27);
      expect(res.accessible_topology).toEqual({
        segments: {
          "topology.kubernetes.io/zone": "us-east-1a",
          "topology.ebs.csi.aws.com/zone": "us-east-1a",
        },
      });
      expect(res.published_volumes).toEqual([{ volume_id: id }, { volume_id: "vol-root" }]);
    });

    it("excludes a volume once ControllerUnpublishVolume succeeded", async () => {
      const node = ec2.addInstance();
      const id = await attachedVolume(node);
      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "UNKNOWN" } as never,
        ctx(),
      );
      const res = await controller.ControllerGetNodeInfo({ node_id: node });
      expect(res.published_volumes).toEqual([{ volume_id: "vol-root" }]);
    });

    it("falls back to the built-in table when EC2 does not give the type's limit", async () => {
      ec2.ebsLimit = undefined;
      const node = ec2.addInstance("us-east-1a", "m4.large");
      const res = await controller.ControllerGetNodeInfo({ node_id: node });
      expect(res.max_volumes_per_node).toBe(39);
    });

    it("gives INVALID_ARGUMENT without node_id and NOT_FOUND for a malformed or unknown one", async () => {
      expect(await codeOf(controller.ControllerGetNodeInfo({ node_id: "" }))).toBe("INVALID_ARGUMENT");
      expect(await codeOf(controller.ControllerGetNodeInfo({ node_id: "node-1" }))).toBe("NOT_FOUND");
      expect(await codeOf(controller.ControllerGetNodeInfo({ node_id: "i-0123456789abcdef0" }))).toBe(
        "NOT_FOUND",
      );
    });

    it("is not advertised: csi-sanity v5.6.0 fails capabilities newer than CSI 1.13", async () => {
      const { capabilities } = await controller.ControllerGetCapabilities();
      expect(capabilities!.map((c) => c.rpc?.type)).not.toContain("GET_NODE_INFO");
    });
  });

  describe("ControllerUnpublishVolume reason", () => {
    it("forces a stuck detach after the bound when the node is out of service", async () => {
      const node = ec2.addInstance();
      const id = await attachedVolume(node);
      ec2.stuckDetaches.add(id);
      const started = Date.now();
      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "NODE_OUT_OF_SERVICE" } as never,
        ctx(),
      );
      expect(Date.now() - started).toBeGreaterThanOrEqual(45);
      expect(ec2.forcedDetaches).toEqual([id]);
      expect(ec2.disks.get(id)!.attachments).toEqual([]);
      const text = await metrics.registry.getSingleMetricAsString("csi_controller_unpublish_reason_total");
      expect(text).toContain('csi_controller_unpublish_reason_total{reason="NODE_OUT_OF_SERVICE"} 1');
    });

    it("counts the bound from the first call, so CO retries shorter than it still end in a force", async () => {
      controller = new EbsController(ec2, log, {
        createWait: fastWait,
        attachWait: fastWait,
        forceDetachAfterMs: 150,
      });
      const node = ec2.addInstance();
      const id = await attachedVolume(node);
      ec2.stuckDetaches.add(id);
      const req = { volume_id: id, node_id: node, secrets: {}, reason: "NODE_OUT_OF_SERVICE" } as never;
      for (let i = 0; i < 5 && ec2.forcedDetaches.length === 0; i++) {
        const caller = new AbortController();
        setTimeout(() => caller.abort(), 60);
        await controller
          .ControllerUnpublishVolume(req, { ...ctx(), signal: caller.signal })
          .catch(() => undefined);
      }
      expect(ec2.forcedDetaches).toEqual([id]);
    });

    it("does not force a detach that finishes within the bound", async () => {
      const node = ec2.addInstance();
      const id = await attachedVolume(node);
      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "NODE_OUT_OF_SERVICE" } as never,
        ctx(),
      );
      expect(ec2.forcedDetaches).toEqual([]);
    });

    for (const reason of ["NODE_CLEANUP_SUCCEEDED", "UNKNOWN"]) {
      it(`never forces a stuck detach for reason ${reason}: DEADLINE_EXCEEDED as before`, async () => {
        const node = ec2.addInstance();
        const id = await attachedVolume(node);
        ec2.stuckDetaches.add(id);
        const code = await codeOf(
          controller.ControllerUnpublishVolume(
            { volume_id: id, node_id: node, secrets: {}, reason } as never,
            ctx(),
          ),
        );
        expect(code).toBe("DEADLINE_EXCEEDED");
        // The CO's retry finds the volume still detaching and keeps waiting; still not forced.
        expect(
          await codeOf(
            controller.ControllerUnpublishVolume(
              { volume_id: id, node_id: node, secrets: {}, reason } as never,
              ctx(),
            ),
          ),
        ).toBe("DEADLINE_EXCEEDED");
        expect(ec2.forcedDetaches).toEqual([]);
        expect(ec2.disks.get(id)!.attachments[0]?.state).toBe("detaching");
        const text = await metrics.registry.getSingleMetricAsString("csi_controller_unpublish_reason_total");
        expect(text).toContain(`{reason="${reason}"} 2`);
      });
    }

    it("forces on a retry that finds the volume already detaching", async () => {
      const node = ec2.addInstance();
      const id = await attachedVolume(node);
      ec2.stuckDetaches.add(id);
      await codeOf(
        controller.ControllerUnpublishVolume(
          { volume_id: id, node_id: node, secrets: {}, reason: "UNKNOWN" } as never,
          ctx(),
        ),
      );
      await controller.ControllerUnpublishVolume(
        { volume_id: id, node_id: node, secrets: {}, reason: "NODE_OUT_OF_SERVICE" } as never,
        ctx(),
      );
      expect(ec2.forcedDetaches).toEqual([id]);
      expect(ec2.disks.get(id)!.attachments).toEqual([]);
    });
  });
});
