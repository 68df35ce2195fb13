// ControllerUnpublishVolume's reason (CSI 1.14) against moto behind the fault proxy: a detach EC2
// never finishes (stuckDetach) is forced only when the CO says the node is out of service.
import { DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { callFailure as failure, type Reply } from "../harness/csi-client.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";

const GiB = 1024 ** 3;
const mountCap = { mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } };
/** The driver's default bound before a NODE_OUT_OF_SERVICE detach is forced. */
const FORCE_AFTER_MS = 30_000;

let env: EbsEnv;

beforeAll(async () => {
  env = await startEbsEnv({ mode: "controller" });
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

let seq = 0;
const controller = (method: string, request: object, timeoutMs?: number): Promise<Reply> =>
  env.client.call("Controller", method, request, timeoutMs);

async function publishedVolume(): Promise<string> {
  const reply = await controller("CreateVolume", {
    name: `pvc-reason-${process.pid}-${++seq}`,
    capacity_range: { required_bytes: GiB },
    volume_capabilities: [mountCap],
  });
  const volumeId = reply.volume.volume_id as string;
  await controller("ControllerPublishVolume", {
    volume_id: volumeId,
    node_id: env.instanceId,
    volume_capability: mountCap,
  });
  return volumeId;
}

async function attachmentState(volumeId: string): Promise<string | undefined> {
  const out = await env.aws.ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }));
  return out.Volumes?.[0]?.Attachments?.[0]?.State;
}

describe("ControllerUnpublishVolume reason", () => {
  it("forces a detach stuck past the bound when the node is out of service", async () => {
    const volumeId = await publishedVolume();
    env.aws.proxy.faults.stuckDetach = true;
    env.aws.proxy.resetStats();
    const started = Date.now();
    await controller("ControllerUnpublishVolume", {
      volume_id: volumeId,
      node_id: env.instanceId,
      reason: "NODE_OUT_OF_SERVICE",
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(FORCE_AFTER_MS - 1000);
    // One plain detach, held back by the proxy, then the forced one that went through.
    expect(env.aws.proxy.stats().DetachVolume).toBe(2);
    expect(await attachmentState(volumeId)).toBeUndefined();
    env.aws.proxy.faults.stuckDetach = false;
  }, 120_000);

  for (const reason of ["NODE_CLEANUP_SUCCEEDED", undefined]) {
    it(`never forces a stuck detach for reason ${reason ?? "unset"}`, async () => {
      const volumeId = await publishedVolume();
      env.aws.proxy.faults.stuckDetach = true;
      env.aws.proxy.resetStats();
      const request = { volume_id: volumeId, node_id: env.instanceId, ...(reason ? { reason } : {}) };
      // Past the force bound: the driver keeps waiting until the CO's deadline.
      const err = await failure(controller("ControllerUnpublishVolume", request, FORCE_AFTER_MS + 5000));
      expect(status[err.code]).toBe(status[status.DEADLINE_EXCEEDED]);
      expect(env.aws.proxy.stats().DetachVolume).toBe(1);
      // moto never received a detach: the plain one was held back and none was forced.
      expect(await attachmentState(volumeId)).toBe("attached");
      env.aws.proxy.faults.stuckDetach = false;
    }, 120_000);
  }
});
