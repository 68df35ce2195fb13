import { status } from "@grpc/grpc-js";
import { beforeEach, describe, expect, it } from "vitest";
import type { CreateSnapshotRequest } from "../../src/csi/types.ts";
import { CloudError } from "../../src/ebs/cloud.ts";
import { parseSnapshotParameters } from "../../src/ebs/params.ts";
import { EbsSnapshots } from "../../src/ebs/snapshots.ts";
import { createLogger } from "../../src/log.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { codeOf } from "./csi-failure.ts";
import { FakeEc2 } from "./fake-ec2.ts";

const log = createLogger("silent");
const ctx = (): RpcContext => ({ requestId: "t", log, signal: new AbortController().signal });
const GiB = 1024 ** 3;

let ec2: FakeEc2;
let snapshots: EbsSnapshots;
let volumeId: string;

beforeEach(async () => {
  ec2 = new FakeEc2();
  snapshots = new EbsSnapshots(ec2, { extraTags: { team: "storage" }, clusterId: "prod" });
  const disk = await ec2.createVolume({
    clientToken: "t",
    zone: "us-east-1a",
    sizeGiB: 8,
    type: "gp3",
    encrypted: false,
    tags: { CSIVolumeName: "pvc-1" },
  });
  volumeId = disk.id;
});

const request = (over: Partial<CreateSnapshotRequest> = {}): CreateSnapshotRequest => ({
  name: "snapshot-1",
  source_volume_id: volumeId,
  secrets: {},
  parameters: {},
  accessibility_requirements: null,
  ...over,
});

describe("CreateSnapshot", () => {
  it("tags the snapshot in the creating call, not ready while pending, ready once EC2 completes it", async () => {
    const { snapshot } = await snapshots.CreateSnapshot(
      request({
        parameters: {
          tagSpecification_1: "owner={{ .VolumeSnapshotNamespace }}/{{ .VolumeSnapshotName | toUpper }}",
          "csi.storage.k8s.io/volumesnapshot/name": "daily",
          "csi.storage.k8s.io/volumesnapshot/namespace": "db",
          "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1",
        },
      }),
      ctx(),
    );
    expect(snapshot).toMatchObject({ source_volume_id: volumeId, size_bytes: 8 * GiB, ready_to_use: false });
    const stored = ec2.snapshots.get(snapshot.snapshot_id)!;
    expect(stored.tags).toEqual({
      CSIVolumeSnapshotName: "snapshot-1",
      "ebs.csi.aws.com/cluster": "true",
      "kubernetes.io/cluster/prod": "owned",
      Name: "prod-dynamic-snapshot-1",
      "ebs.csi.aws.com/cluster-name": "prod",
      team: "storage",
      owner: "db/DAILY",
    });
    stored.state = "completed";
    const again = await snapshots.CreateSnapshot(request(), ctx());
    expect(again.snapshot).toMatchObject({ snapshot_id: snapshot.snapshot_id, ready_to_use: true });
    expect(ec2.calls["createSnapshot"]).toBe(1);
    expect(
      (await snapshots.GetSnapshot({ snapshot_id: snapshot.snapshot_id, secrets: {} })).snapshot,
    ).toEqual(again.snapshot);
  });

  it("same name of another volume: ALREADY_EXISTS; unknown source: NOT_FOUND; no name: INVALID_ARGUMENT", async () => {
    await snapshots.CreateSnapshot(request(), ctx());
    const other = await ec2.createVolume({
      clientToken: "u",
      zone: "us-east-1a",
      sizeGiB: 1,
      type: "gp3",
      encrypted: false,
      tags: {},
    });
    expect(
      (await codeOf(snapshots.CreateSnapshot(request({ source_volume_id: other.id }), ctx()))).code,
    ).toBe(status.ALREADY_EXISTS);
    for (const source of ["vol-00000000000000099", "not-a-volume"]) {
      const err = await codeOf(
        snapshots.CreateSnapshot(request({ name: `n-${source}`, source_volume_id: source }), ctx()),
      );
      expect(err.code).toBe(status.NOT_FOUND);
    }
    const noName = await codeOf(snapshots.CreateSnapshot(request({ name: "" }), ctx()));
    expect(noName).toMatchObject({ code: status.INVALID_ARGUMENT, message: expect.stringContaining("name") });
  });

  it("refuses unknown and malformed parameters naming them, before anything is made", async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ type: "gp3" }, /parameters\.type: unknown parameter/],
      [{ lockMode: "strict", lockDuration: "1" }, /lockMode: must be governance or compliance/],
      [{ lockMode: "governance" }, /exactly one of lockDuration and lockExpirationDate/],
      [{ lockDuration: "7" }, /needs lockMode/],
      [{ lockMode: "governance", lockDuration: "0" }, /lockDuration: must be 1-36500 days/],
      [
        { lockMode: "governance", lockDuration: "7", lockCoolOffPeriod: "2" },
        /only with lockMode compliance/,
      ],
      [{ lockMode: "compliance", lockExpirationDate: "2020-01-01T00:00:00Z" }, /in the past/],
      [{ lockMode: "compliance", lockExpirationDate: "next year" }, /RFC 3339/],
      [{ outpostArn: "op-123" }, /not an Outpost ARN/],
      [{ fastSnapshotRestoreAvailabilityZones: "us-east-1a,,us-east-1b" }, /an empty zone/],
      [{ fastSnapshotRestoreAvailabilityZones: "us-east-1z" }, /us-east-1z is not a zone of this region/],
      [{ tagSpecification_1: "CSIVolumeSnapshotName=x" }, /reserved/],
      [{ tagSpecification_1: "a={{ .PVCName }}" }, /unknown template field \.PVCName/],
    ];
    for (const [parameters, message] of cases) {
      const err = await codeOf(snapshots.CreateSnapshot(request({ parameters }), ctx()));
      expect(err.code, JSON.stringify(parameters)).toBe(status.INVALID_ARGUMENT);
      expect(err.message, JSON.stringify(parameters)).toMatch(message);
    }
    expect(ec2.snapshots.size).toBe(0);
  });

  it("enables fast restore and locks, case-insensitive keys; deletes the snapshot when either fails", async () => {
    const { snapshot } = await snapshots.CreateSnapshot(
      request({
        parameters: {
          FastSnapshotRestoreAvailabilityZones: "us-east-1a, us-east-1b",
          lockmode: "Compliance",
          lockExpirationDate: "2099-12-31T23:59:59Z",
          lockCoolOffPeriod: "24",
        },
      }),
      ctx(),
    );
    expect(ec2.fastRestores.get(snapshot.snapshot_id)).toEqual(["us-east-1a", "us-east-1b"]);
    expect(ec2.locks.get(snapshot.snapshot_id)).toEqual({
      mode: "compliance",
      expirationDate: new Date("2099-12-31T23:59:59Z"),
      coolOffHours: 24,
    });
    // A locked snapshot cannot be deleted: the call fails and the snapshot stays.
    expect(
      (await codeOf(snapshots.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id, secrets: {} }, ctx())))
        .code,
    ).toBe(status.INTERNAL);
    expect(ec2.snapshots.has(snapshot.snapshot_id)).toBe(true);
    // One an AMI uses: FAILED_PRECONDITION.
    ec2.failNext.deleteSnapshot = new CloudError("InUse", "InvalidSnapshot.InUse", "used by ami-1");
    expect(
      (await codeOf(snapshots.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id, secrets: {} }, ctx())))
        .code,
    ).toBe(status.FAILED_PRECONDITION);

    ec2.failNext.lockSnapshot = new CloudError(
      "Unauthorized",
      "UnauthorizedOperation",
      "not allowed to lock",
    );
    const err = await codeOf(
      snapshots.CreateSnapshot(
        request({ name: "snapshot-2", parameters: { lockMode: "governance", lockDuration: "7" } }),
        ctx(),
      ),
    );
    expect(err).toMatchObject({
      code: status.PERMISSION_DENIED,
      message: expect.stringMatching(/was deleted/),
    });
    expect([...ec2.snapshots.values()].map((s) => s.tags["CSIVolumeSnapshotName"])).toEqual(["snapshot-1"]);
  });

  it("a snapshot EC2 failed is deleted and reported; the retry takes a new one", async () => {
    const first = (await snapshots.CreateSnapshot(request(), ctx())).snapshot;
    const stored = ec2.snapshots.get(first.snapshot_id)!;
    stored.state = "error";
    stored.stateMessage = "internal error";
    const err = await codeOf(snapshots.CreateSnapshot(request(), ctx()));
    expect(err).toMatchObject({
      code: status.INTERNAL,
      message: expect.stringMatching(/failed in EC2 \(internal error\)/),
    });
    expect(ec2.snapshots.has(first.snapshot_id)).toBe(false);
    const retry = (await snapshots.CreateSnapshot(request(), ctx())).snapshot;
    expect(retry.snapshot_id).not.toBe(first.snapshot_id);
    expect(ec2.snapshots.size).toBe(1);
  });

  it("an answer lost after EC2 made the snapshot: the name finds it, no second snapshot", async () => {
    const real = ec2.createSnapshot.bind(ec2);
    ec2.createSnapshot = async (input) => {
      await real(input);
      throw new CloudError("Unavailable", "InternalError", "answer lost");
    };
    const { snapshot } = await snapshots.CreateSnapshot(request(), ctx());
    expect(ec2.snapshots.size).toBe(1);
    expect(snapshot.snapshot_id).toBe([...ec2.snapshots.keys()][0]);
  });

  it("two snapshots of one name (a crash, EC2's eventual consistency): the oldest is the answer", async () => {
    const a = await ec2.createSnapshot({
      volumeId,
      tags: { CSIVolumeSnapshotName: "snapshot-1" },
      description: "",
    });
    const b = await ec2.createSnapshot({
      volumeId,
      tags: { CSIVolumeSnapshotName: "snapshot-1" },
      description: "",
    });
    ec2.snapshots.get(a.id)!.startTime = new Date(Date.now() - 60_000);
    ec2.snapshots.get(b.id)!.startTime = new Date();
    expect((await snapshots.CreateSnapshot(request(), ctx())).snapshot.snapshot_id).toBe(a.id);
  });

  it("a throttled create is tried again; quota exhausted is RESOURCE_EXHAUSTED", async () => {
    ec2.failNext.createSnapshot = new CloudError("Throttled", "RequestLimitExceeded", "slow down");
    await snapshots.CreateSnapshot(request(), ctx());
    expect(ec2.calls["createSnapshot"]).toBe(2);
    ec2.failNext.createSnapshot = new CloudError("QuotaExceeded", "SnapshotLimitExceeded", "too many");
    expect((await codeOf(snapshots.CreateSnapshot(request({ name: "snapshot-2" }), ctx()))).code).toBe(
      status.RESOURCE_EXHAUSTED,
    );
  });
});

describe("DeleteSnapshot, ListSnapshots, GetSnapshot", () => {
  it("delete is idempotent; list pages, filters by id and by source; get says NOT_FOUND", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++)
      ids.push((await snapshots.CreateSnapshot(request({ name: `s${i}` }), ctx())).snapshot.snapshot_id);
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await snapshots.ListSnapshots({
        max_entries: 2,
        starting_token: token,
        source_volume_id: "",
        snapshot_id: "",
        secrets: {},
      });
      seen.push(...page.entries.map((e) => e.snapshot.snapshot_id));
      token = page.next_token;
      pages++;
    } while (token);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual([...ids].sort());
    const byId = await snapshots.ListSnapshots({
      max_entries: 0,
      starting_token: "",
      source_volume_id: "",
      snapshot_id: ids[2]!,
      secrets: {},
    });
    expect(byId.entries.map((e) => e.snapshot.snapshot_id)).toEqual([ids[2]]);
    const bySource = await snapshots.ListSnapshots({
      max_entries: 0,
      starting_token: "",
      source_volume_id: volumeId,
      snapshot_id: "",
      secrets: {},
    });
    expect(bySource.entries).toHaveLength(5);
    const otherSource = await snapshots.ListSnapshots({
      max_entries: 0,
      starting_token: "",
      source_volume_id: "vol-00000000000000099",
      snapshot_id: ids[2]!,
      secrets: {},
    });
    expect(otherSource.entries).toEqual([]);
    expect(
      (
        await codeOf(
          snapshots.ListSnapshots({
            max_entries: 0,
            starting_token: "bogus",
            source_volume_id: "",
            snapshot_id: "",
            secrets: {},
          }),
        )
      ).code,
    ).toBe(status.ABORTED);

    await snapshots.DeleteSnapshot({ snapshot_id: ids[0]!, secrets: {} }, ctx());
    await snapshots.DeleteSnapshot({ snapshot_id: ids[0]!, secrets: {} }, ctx());
    await snapshots.DeleteSnapshot({ snapshot_id: "not-a-snapshot", secrets: {} }, ctx());
    expect(ec2.snapshots.has(ids[0]!)).toBe(false);
    expect((await codeOf(snapshots.GetSnapshot({ snapshot_id: ids[0]!, secrets: {} }))).code).toBe(
      status.NOT_FOUND,
    );
    expect((await codeOf(snapshots.DeleteSnapshot({ snapshot_id: "", secrets: {} }, ctx()))).code).toBe(
      status.INVALID_ARGUMENT,
    );
  });
});

describe("parseSnapshotParameters", () => {
  it("a governance lock by duration; no lock without lock keys", () => {
    const info = { name: "s", extraTags: {} };
    expect(parseSnapshotParameters({ lockMode: "governance", lockDuration: "7" }, info).lock).toEqual({
      mode: "governance",
      durationDays: 7,
    });
    expect(parseSnapshotParameters({}, info).lock).toBeUndefined();
  });
});
