// SdkEc2 against moto, the fake AWS: what the driver relies on EC2 to do, and what moto does differently.
import {
  CreateTagsCommand,
  DescribeVolumesCommand,
  EC2Client,
  RunInstancesCommand,
} from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { awsClientConfig, instrumentClient } from "../../src/aws/sdk.ts";
import { type CreateDiskInput, isCloudError } from "../../src/ebs/cloud.ts";
import { SdkEc2 } from "../../src/ebs/ec2.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import { type Moto, startMoto } from "../harness/moto.ts";

const log = createLogger("silent");
const zone = "us-east-1a";
const unknownVolume = "vol-0123456789abcdef0";
const unknownInstance = "i-0123456789abcdef0";

let moto: Moto;
let client: EC2Client;
let ec2: SdkEc2;
/** Bodies of the requests sent, as EC2 receives them. */
const wire: string[] = [];

beforeAll(async () => {
  process.env["AWS_ACCESS_KEY_ID"] = "testing";
  process.env["AWS_SECRET_ACCESS_KEY"] = "testing";
  moto = await startMoto();
  client = new EC2Client(awsClientConfig({ region: "us-east-1", endpoint: moto.url, maxAttempts: 1 }));
  instrumentClient(client, createMetrics("aws_ebs_csi"), log);
  client.middlewareStack.add(
    (next) => async (args) => {
      wire.push(String((args.request as { body?: unknown }).body ?? ""));
      return next(args);
    },
    { step: "finalizeRequest", name: "captureWire" },
  );
  ec2 = new SdkEc2({ client, batching: true, batchWindowMs: 5, log });
});

afterAll(async () => {
  client?.destroy();
  await moto?.stop();
});

beforeEach(() => moto.reset());

const diskInput = (name: string, over: Partial<CreateDiskInput> = {}): CreateDiskInput => ({
  clientToken: `token-${name}`,
  zone,
  sizeGiB: 10,
  type: "gp3",
  encrypted: false,
  tags: { CSIVolumeName: name, "ebs.csi.aws.com/cluster": "true" },
  ...over,
});

async function runInstance(): Promise<string> {
  const out = await client.send(
    new RunInstancesCommand({
      ImageId: "ami-12c6146b",
      MinCount: 1,
      MaxCount: 1,
      InstanceType: "m5.large",
      Placement: { AvailabilityZone: zone },
    }),
  );
  return out.Instances?.[0]?.InstanceId ?? "";
}

const kindOf = (promise: Promise<unknown>) =>
  promise.then(
    () => "ok",
    (err: unknown) => (isCloudError(err) ? err.kind : `not a CloudError: ${String(err)}`),
  );

describe("SdkEc2 on moto", () => {
  it("creates a volume with its tags and options in one call, and reads it back", async () => {
    const created = await ec2.createVolume(
      diskInput("pvc-a", { type: "io2", iops: 4000, sizeGiB: 20, encrypted: true, multiAttach: true }),
    );
    expect(created).toMatchObject({ sizeGiB: 20, type: "io2", iops: 4000, zone, encrypted: true });
    expect(created.id).toMatch(/^vol-/);
    expect(created.tags).toEqual({ CSIVolumeName: "pvc-a", "ebs.csi.aws.com/cluster": "true" });

    const got = (await ec2.getVolumes([created.id, unknownVolume])).get(created.id);
    expect(got).toMatchObject({
      id: created.id,
      sizeGiB: 20,
      type: "io2",
      iops: 4000,
      encrypted: true,
      multiAttach: true,
      state: "available",
      attachments: [],
      tags: { CSIVolumeName: "pvc-a", "ebs.csi.aws.com/cluster": "true" },
    });
    expect(got?.snapshotId).toBeUndefined();
  });

  it("sends the ClientToken and the tags on the wire, in the CreateVolume call itself", async () => {
    // Moto ignores ClientToken (a retried create makes a second volume), so look at the request instead.
    wire.length = 0;
    await ec2.createVolume(diskInput("pvc-b"));
    expect(wire).toHaveLength(1);
    const params = new URLSearchParams(wire[0]);
    expect(params.get("Action")).toBe("CreateVolume");
    expect(params.get("ClientToken")).toBe("token-pvc-b");
    expect(params.get("TagSpecification.1.ResourceType")).toBe("volume");
    expect(params.get("TagSpecification.1.Tag.1.Key")).toBe("CSIVolumeName");
    expect(params.get("TagSpecification.1.Tag.1.Value")).toBe("pvc-b");
  });

  it("finds volumes by tag value and leaves unknown ids out", async () => {
    const a = await ec2.createVolume(diskInput("pvc-c"));
    await ec2.createVolume(diskInput("pvc-d"));
    expect((await ec2.findVolumesByTag("CSIVolumeName", "pvc-c")).map((d) => d.id)).toEqual([a.id]);
    expect(await ec2.findVolumesByTag("CSIVolumeName", "pvc-none")).toEqual([]);
    expect((await ec2.getVolumes([unknownVolume, "garbage"])).size).toBe(0);
  });

  it("batches concurrent lookups (one answer per caller)", async () => {
    const disks = await Promise.all(
      ["pvc-e1", "pvc-e2", "pvc-e3"].map((n) => ec2.createVolume(diskInput(n))),
    );
    const results = await Promise.all(disks.map((d) => ec2.getVolumes([d.id])));
    expect(results.map((map) => [...map.keys()])).toEqual(disks.map((d) => [d.id]));
  });

  it("lists 7 tagged volumes in 3 pages of 3 (moto ignores MaxResults; our token cuts the pages)", async () => {
    const created = new Set<string>();
    for (let i = 0; i < 7; i++) created.add((await ec2.createVolume(diskInput(`pvc-list-${i}`))).id);
    await runInstance(); // its untagged root volume must not be listed
    const raw = await client.send(new DescribeVolumesCommand({ MaxResults: 5 }));
    expect(raw.Volumes?.length).toBe(8); // the quirk the page token works around
    expect(raw.NextToken).toBeUndefined();

    const seen: string[] = [];
    const sizes: number[] = [];
    let token: string | undefined;
    do {
      const page = await ec2.listVolumesWithTag("CSIVolumeName", 3, token);
      sizes.push(page.disks.length);
      seen.push(...page.disks.map((d) => d.id));
      token = page.nextToken;
    } while (token && sizes.length < 10);
    expect(sizes).toEqual([3, 3, 1]);
    expect(seen.sort()).toEqual([...created].sort());
  });

  it("attaches and detaches, and the instance shows the device", async () => {
    const instanceId = await runInstance();
    const disk = await ec2.createVolume(diskInput("pvc-f"));
    await ec2.attachVolume(disk.id, instanceId, "/dev/xvdba");

    const instance = (await ec2.getInstances([instanceId, unknownInstance])).get(instanceId);
    expect(instance).toMatchObject({ id: instanceId, zone, type: "m5.large", state: "running" });
    expect(instance?.devices.get("/dev/xvdba")).toBe(disk.id);
    expect(instance?.devices.get("/dev/sda1")).toMatch(/^vol-/); // moto's root volume
    const attached = (await ec2.getVolumes([disk.id])).get(disk.id);
    expect(attached?.state).toBe("in-use");
    expect(attached?.attachments).toEqual([{ instanceId, device: "/dev/xvdba", state: "attached" }]);

    // Moto refuses to delete an attached volume, as EC2 does.
    expect(await kindOf(ec2.deleteVolume(disk.id))).toBe("InUse");

    await ec2.detachVolume(disk.id, instanceId);
    expect((await ec2.getInstances([instanceId])).get(instanceId)?.devices.has("/dev/xvdba")).toBe(false);
    expect((await ec2.getVolumes([disk.id])).get(disk.id)?.state).toBe("available");
    // Detaching again: the attachment is gone.
    expect(await kindOf(ec2.detachVolume(disk.id, instanceId))).toBe("NotFound");
  });

  it("modifies a volume and reports the modification (moto completes it at once)", async () => {
    const disk = await ec2.createVolume(diskInput("pvc-g"));
    expect(await ec2.getModification(disk.id)).toBeUndefined();
    await ec2.modifyVolume(disk.id, { sizeGiB: 30, iops: 5000, throughput: 250 });
    expect(await ec2.getModification(disk.id)).toMatchObject({
      state: "completed",
      targetSizeGiB: 30,
      targetIops: 5000,
    });
    expect((await ec2.getVolumes([disk.id])).get(disk.id)).toMatchObject({ sizeGiB: 30, iops: 5000 });
  });

  it("tags a volume after creation", async () => {
    const disk = await ec2.createVolume(diskInput("pvc-h"));
    await ec2.tagVolume(disk.id, { extra: "1", CSIVolumeName: "pvc-h" });
    expect((await ec2.getVolumes([disk.id])).get(disk.id)?.tags).toMatchObject({
      extra: "1",
      CSIVolumeName: "pvc-h",
    });
  });

  it("deletes a volume, and then it is gone", async () => {
    const disk = await ec2.createVolume(diskInput("pvc-i"));
    await ec2.deleteVolume(disk.id);
    expect((await ec2.getVolumes([disk.id])).size).toBe(0);
    expect(await kindOf(ec2.deleteVolume(disk.id))).toBe("NotFound");
  });

  it("maps errors for unknown ids to NotFound", async () => {
    const instanceId = await runInstance();
    const disk = await ec2.createVolume(diskInput("pvc-j"));
    expect(await kindOf(ec2.deleteVolume(unknownVolume))).toBe("NotFound");
    expect(await kindOf(ec2.deleteVolume("garbage"))).toBe("NotFound");
    expect(await kindOf(ec2.attachVolume(unknownVolume, instanceId, "/dev/xvdbb"))).toBe("NotFound");
    expect(await kindOf(ec2.attachVolume(disk.id, unknownInstance, "/dev/xvdbb"))).toBe("NotFound");
    expect(await kindOf(ec2.modifyVolume(unknownVolume, { sizeGiB: 20 }))).toBe("NotFound");
    expect(await kindOf(ec2.getModification(unknownVolume))).toBe("NotFound");
    expect((await ec2.getInstances([unknownInstance])).size).toBe(0);
  });

  it("answers the probe, lists zones and reads instance type limits", async () => {
    await ec2.probe();
    const zones = await ec2.getZones();
    expect(zones).toContain(zone);
    expect(zones).toEqual([...zones].sort());
    expect(await ec2.getInstanceTypeEbsInfo("m5.large")).toEqual({ maxAttachments: 27, limitType: "shared" });
    expect(await ec2.getInstanceTypeEbsInfo("zz.large")).toBeUndefined();
  });

  it("sees tags set outside the driver (CreateTags) through findVolumesByTag", async () => {
    const disk = await ec2.createVolume(diskInput("pvc-k"));
    await client.send(new CreateTagsCommand({ Resources: [disk.id], Tags: [{ Key: "team", Value: "a" }] }));
    expect((await ec2.findVolumesByTag("team", "a")).map((d) => d.id)).toEqual([disk.id]);
  });
});
