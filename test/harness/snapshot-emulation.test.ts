// The fault proxy's answers for what moto lacks (CopyVolumes, CreateSnapshots with exclusions,
// DescribeSnapshots owners, pending snapshots, fast restore, locks), read through the AWS SDK as
// the driver reads them: a wrong fake would make the driver's tests prove nothing.
import {
  AttachVolumeCommand,
  CopyVolumesCommand,
  CreateSnapshotCommand,
  CreateSnapshotsCommand,
  CreateVolumeCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  EC2Client,
  EnableFastSnapshotRestoresCommand,
  LockSnapshotCommand,
} from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_CREDENTIALS, type FakeAws, startFakeAws } from "./fake-aws.ts";

let aws: FakeAws;
let ec2: EC2Client;

beforeAll(async () => {
  aws = await startFakeAws();
  ec2 = new EC2Client({
    region: aws.region,
    endpoint: aws.endpoint,
    credentials: FAKE_CREDENTIALS,
    maxAttempts: 1,
  });
}, 120_000);

afterAll(async () => {
  ec2?.destroy();
  await aws?.stop();
});

const zone = () => `${aws.region}a`;
const volume = async (size = 2) =>
  (await ec2.send(new CreateVolumeCommand({ AvailabilityZone: zone(), Size: size, VolumeType: "gp3" })))
    .VolumeId!;

describe("fault proxy snapshot emulation", () => {
  it("CopyVolumes: a copy in the source's zone, at least its size, SourceVolumeId shown; unknown source NotFound", async () => {
    const source = await volume(3);
    const out = await ec2.send(
      new CopyVolumesCommand({
        SourceVolumeId: source,
        Size: 4,
        VolumeType: "gp3",
        TagSpecifications: [{ ResourceType: "volume", Tags: [{ Key: "CSIVolumeName", Value: "copy" }] }],
      }),
    );
    expect(out.Volumes).toHaveLength(1);
    const copy = out.Volumes![0]!;
    expect(copy).toMatchObject({ Size: 4, AvailabilityZone: zone(), SourceVolumeId: source });
    const described = await ec2.send(new DescribeVolumesCommand({ VolumeIds: [copy.VolumeId!] }));
    expect(described.Volumes![0]).toMatchObject({
      SourceVolumeId: source,
      Tags: [{ Key: "CSIVolumeName", Value: "copy" }],
    });
    await expect(ec2.send(new CopyVolumesCommand({ SourceVolumeId: source, Size: 1 }))).rejects.toMatchObject(
      {
        name: "InvalidParameterValue",
      },
    );
    await expect(
      ec2.send(new CopyVolumesCommand({ SourceVolumeId: "vol-0123456789abcdef0" })),
    ).rejects.toMatchObject({
      name: "InvalidVolume.NotFound",
    });
  });

  it("CreateSnapshots: the instance's volumes minus the boot volume and the excluded ones, with State", async () => {
    const instance = await aws.createInstance({ zone: zone() });
    const [a, b, c] = [await volume(), await volume(), await volume()];
    for (const [i, id] of [a, b, c].entries()) {
      await ec2.send(
        new AttachVolumeCommand({ VolumeId: id, InstanceId: instance, Device: `/dev/xvd${"fgh"[i]}` }),
      );
    }
    aws.proxy.snapshots.pendingMs = 60_000;
    const out = await ec2.send(
      new CreateSnapshotsCommand({
        InstanceSpecification: { InstanceId: instance, ExcludeBootVolume: true, ExcludeDataVolumeIds: [c] },
        TagSpecifications: [{ ResourceType: "snapshot", Tags: [{ Key: "group", Value: "g1" }] }],
      }),
    );
    expect(out.Snapshots!.map((s) => s.VolumeId).sort()).toEqual([a, b].sort());
    expect(out.Snapshots!.every((s) => s.State === "pending")).toBe(true);
    const described = await ec2.send(
      new DescribeSnapshotsCommand({ Filters: [{ Name: "tag:group", Values: ["g1"] }], OwnerIds: ["self"] }),
    );
    expect(described.Snapshots!.map((s) => s.State)).toEqual(["pending", "pending"]);
    aws.proxy.snapshots.pendingMs = 0;
    aws.proxy.snapshots.readyAt.clear();
    const later = await ec2.send(
      new DescribeSnapshotsCommand({ Filters: [{ Name: "tag:group", Values: ["g1"] }] }),
    );
    expect(later.Snapshots!.map((s) => s.State)).toEqual(["completed", "completed"]);
  });

  it("DescribeSnapshots with OwnerIds self leaves out moto's built-in snapshots of other owners", async () => {
    const all = await ec2.send(new DescribeSnapshotsCommand({}));
    const own = await ec2.send(new DescribeSnapshotsCommand({ OwnerIds: ["self"] }));
    expect(all.Snapshots!.length).toBeGreaterThan(own.Snapshots!.length);
    expect(new Set(own.Snapshots!.map((s) => s.OwnerId))).toEqual(new Set(["123456789012"]));
  });

  it("EnableFastSnapshotRestores and LockSnapshot answer as EC2 does and are recorded", async () => {
    const snapshotId = (await ec2.send(new CreateSnapshotCommand({ VolumeId: await volume() }))).SnapshotId!;
    const fsr = await ec2.send(
      new EnableFastSnapshotRestoresCommand({
        SourceSnapshotIds: [snapshotId],
        AvailabilityZones: [zone(), "us-east-1z"],
      }),
    );
    expect(fsr.Successful!.map((s) => s.AvailabilityZone)).toEqual([zone()]);
    expect(fsr.Unsuccessful![0]!.FastSnapshotRestoreStateErrors![0]).toMatchObject({
      AvailabilityZone: "us-east-1z",
      Error: { Code: "InvalidParameterValue" },
    });
    expect(aws.proxy.snapshots.fastRestores.get(snapshotId)).toEqual([zone()]);
    const lock = await ec2.send(
      new LockSnapshotCommand({ SnapshotId: snapshotId, LockMode: "governance", LockDuration: 7 }),
    );
    expect(lock).toMatchObject({ SnapshotId: snapshotId, LockState: "governance" });
    expect(aws.proxy.snapshots.locks.get(snapshotId)).toEqual({ LockMode: "governance", LockDuration: "7" });
  });
});
