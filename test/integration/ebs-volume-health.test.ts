// EBS controller health from real causes: EC2's status checks as DescribeVolumeStatus reports them
// (moto lacks that API; the fault proxy answers it from moto's volumes, each "ok" unless a test
// impairs it), through the driver process on its socket and the AWS SDK.
import { CreateVolumeCommand, EC2Client } from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { awsClientConfig } from "../../src/aws/sdk.ts";
import { SdkEc2 } from "../../src/ebs/ec2.ts";
import { createLogger } from "../../src/log.ts";
import type { Reply } from "../harness/csi-client.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { FAKE_CREDENTIALS } from "../harness/fake-aws.ts";

let env: EbsEnv;

beforeAll(async () => {
  env = await startEbsEnv({ mode: "controller" });
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

const controller = (method: string, request: object): Promise<Reply> =>
  env.client.call("Controller", method, request);

let seq = 0;

/** A volume as the driver tags it, made in moto directly (faster than CreateVolume for hundreds). */
async function motoVolume(): Promise<string> {
  const out = await env.aws.ec2.send(
    new CreateVolumeCommand({
      AvailabilityZone: env.zone,
      Size: 1,
      VolumeType: "gp3",
      TagSpecifications: [
        {
          ResourceType: "volume",
          Tags: [{ Key: "CSIVolumeName", Value: `pvc-health-${process.pid}-${++seq}` }],
        },
      ],
    }),
  );
  return out.VolumeId ?? "";
}

/** Every entry of ControllerListVolumeHealth, following next_token; with the number of pages. */
async function sweep(maxEntries = 0) {
  // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
  const entries: any[] = [];
  let token = "";
  let pages = 0;
  do {
    const page = await controller("ControllerListVolumeHealth", {
      max_entries: maxEntries,
      starting_token: token,
    });
    entries.push(...page.entries);
    token = page.next_token;
    pages++;
  } while (token);
  return { entries, pages };
}

// biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
const conditions = (health: any) => health.health_statuses.map((h: any) => [h.status, h.reason]);

describe("EC2 status checks", () => {
  it("disabled I/O with a potential data inconsistency, degraded and stalled I/O, insufficient data", async () => {
    const [disabled, degraded, stalled, pending, fine] = await Promise.all(
      Array.from({ length: 5 }, motoVolume),
    );
    env.aws.proxy.volumeStatuses.set(disabled!, {
      status: "impaired",
      ioEnabled: "failed",
      events: [
        {
          type: "potential-data-inconsistency",
          description: "I/O disabled because of a potential inconsistency",
        },
      ],
    });
    env.aws.proxy.volumeStatuses.set(degraded!, { status: "warning", ioPerformance: "degraded" });
    env.aws.proxy.volumeStatuses.set(stalled!, { status: "impaired", ioPerformance: "stalled" });
    env.aws.proxy.volumeStatuses.set(pending!, { status: "insufficient-data" });
    try {
      const get = async (id: string) =>
        (await controller("ControllerGetVolumeHealth", { volume_id: id })).volume_health;

      const health = await get(disabled!);
      expect(health.volume_id).toBe(disabled);
      expect(conditions(health)).toEqual([
        ["INACCESSIBLE", "IoDisabled"],
        ["DATA_LOSS", "PotentialDataInconsistency"],
      ]);
      expect(health.health_statuses[0].message).toMatch(/EnableVolumeIO/);
      expect(health.health_statuses[1].message).toMatch(/potential inconsistency/);
      expect(conditions(await get(degraded!))).toEqual([["DEGRADED", "IoPerformanceDegraded"]]);
      expect(conditions(await get(stalled!))).toEqual([["INACCESSIBLE", "IoStalled"]]);
      // Checks not finished is no condition, and neither is "ok".
      expect(conditions(await get(pending!))).toEqual([]);
      expect(conditions(await get(fine!))).toEqual([]);

      const listed = new Map((await sweep(2)).entries.map((e) => [e.volume_id, conditions(e)]));
      expect([...listed.keys()].sort()).toEqual([disabled, degraded, stalled].sort());
      expect(listed.get(degraded)).toEqual([["DEGRADED", "IoPerformanceDegraded"]]);

      // Once EC2's checks pass again the condition is gone.
      env.aws.proxy.volumeStatuses.delete(disabled!);
      expect(conditions(await get(disabled!))).toEqual([]);
    } finally {
      env.aws.proxy.volumeStatuses.clear();
    }
  });

  it("a sweep over 1,000 volumes costs a handful of EC2 calls, not one per volume", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 1000; i += 50)
      ids.push(...(await Promise.all(Array.from({ length: 50 }, motoVolume))));
    env.aws.proxy.volumeStatuses.set(ids[7]!, { status: "impaired", ioEnabled: "failed" });
    env.aws.proxy.volumeStatuses.set(ids[993]!, { status: "warning", ioPerformance: "severely-degraded" });
    try {
      env.aws.proxy.resetStats();
      const { entries } = await sweep();
      const calls = env.aws.proxy.stats();
      console.log(`health sweep over ${ids.length} volumes: EC2 calls ${JSON.stringify(calls)}`);
      expect(entries.map((e) => e.volume_id).sort()).toEqual([ids[7], ids[993]].sort());
      // 1,000 volumes: DescribeVolumes pages of 500, DescribeVolumeStatus batches of 500.
      expect(calls["DescribeVolumes"]).toBeLessThanOrEqual(3);
      expect(calls["DescribeVolumeStatus"]).toBeLessThanOrEqual(3);
    } finally {
      env.aws.proxy.volumeStatuses.clear();
    }
  }, 120_000);

  it("a volume deleted between the listing and the checks does not fail the sweep", async () => {
    // The SDK client against the proxy: DescribeVolumeStatus with one unknown id fails in EC2.
    const client = new EC2Client({
      ...awsClientConfig({ region: env.aws.region, endpoint: env.aws.endpoint, maxAttempts: 1 }),
      credentials: FAKE_CREDENTIALS,
    });
    try {
      const ec2 = new SdkEc2({ client, batching: true, batchWindowMs: 5, log: createLogger("silent") });
      const [impaired, fine] = await Promise.all([motoVolume(), motoVolume()]);
      env.aws.proxy.volumeStatuses.set(impaired, { status: "impaired", ioEnabled: "failed" });
      const gone = "vol-0123456789abcdef0";
      const statuses = await ec2.getVolumeStatuses([impaired, fine, gone]);
      expect(statuses.get(impaired)?.ioEnabled).toBe("failed");
      expect(statuses.has(gone)).toBe(false);
      // Without the unknown id, every volume's checks come back, "ok" ones included.
      const all = await ec2.getVolumeStatuses([impaired, fine]);
      expect(all.get(fine)).toEqual({
        status: "ok",
        ioEnabled: "passed",
        ioPerformance: "not-applicable",
        events: [],
      });
    } finally {
      client.destroy();
      env.aws.proxy.volumeStatuses.clear();
    }
  });
});
