import { status } from "@grpc/grpc-js";
import { beforeEach, describe, expect, it } from "vitest";
import { CloudError } from "../../src/ebs/cloud.ts";
import { EbsGroupSnapshots, groupSnapshotIdFor } from "../../src/ebs/group-snapshots.ts";
import { createLogger } from "../../src/log.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { codeOf } from "./csi-failure.ts";
import { FakeEc2 } from "./fake-ec2.ts";

const log = createLogger("silent");
const ctx = (): RpcContext => ({ requestId: "t", log, signal: new AbortController().signal });

let ec2: FakeEc2;
let groups: EbsGroupSnapshots;
let node: string;

async function volume(attachTo?: string): Promise<string> {
  const disk = await ec2.createVolume({
    clientToken: `t-${Math.random()}`,
    zone: "us-east-1a",
    sizeGiB: 4,
    type: "gp3",
    encrypted: false,
    tags: {},
  });
  if (attachTo)
    await ec2.attachVolume(disk.id, attachTo, `/dev/xvd${String.fromCharCode(98 + ec2.disks.size)}`);
  return disk.id;
}

const create = (name: string, ids: string[], parameters: Record<string, string> = {}) =>
  groups.CreateVolumeGroupSnapshot({ name, source_volume_ids: ids, secrets: {}, parameters }, ctx());

beforeEach(() => {
  ec2 = new FakeEc2();
  groups = new EbsGroupSnapshots(ec2, { extraTags: {}, clusterId: undefined });
  node = ec2.addInstance();
});

describe("CreateVolumeGroupSnapshot", () => {
  it("snapshots exactly the group's volumes of one instance in one CreateSnapshots, leaving the others out", async () => {
    const [a, b, other] = [await volume(node), await volume(node), await volume(node)];
    const { group_snapshot: group } = await create("group-1", [a, b], {
      tagSpecification_1: "app={{ .VolumeGroupSnapshotNamespace }}",
      "csi.storage.k8s.io/volumegroupsnapshot/namespace": "db",
    });
    expect(group.group_snapshot_id).toBe(groupSnapshotIdFor("group-1"));
    expect(group.snapshots.map((s) => s.source_volume_id).sort()).toEqual([a, b].sort());
    expect(group.snapshots.every((s) => s.group_snapshot_id === group.group_snapshot_id)).toBe(true);
    expect(group.ready_to_use).toBe(false);
    expect(ec2.calls["createSnapshots"]).toBe(1);
    expect([...ec2.snapshots.values()].map((s) => s.volumeId)).not.toContain(other);
    expect([...ec2.snapshots.values()].map((s) => s.volumeId)).not.toContain("vol-root");
    expect([...ec2.snapshots.values()][0]!.tags).toMatchObject({
      app: "db",
      "ebs.csi.aws.com/cluster": "true",
    });

    // A retry finds the group; once EC2 completes its snapshots it is ready.
    for (const s of ec2.snapshots.values()) s.state = "completed";
    const again = (await create("group-1", [b, a])).group_snapshot;
    expect(again).toMatchObject({ group_snapshot_id: group.group_snapshot_id, ready_to_use: true });
    expect(ec2.calls["createSnapshots"]).toBe(1);
    // Same name, other volumes: ALREADY_EXISTS.
    expect((await codeOf(create("group-1", [a]))).code).toBe(status.ALREADY_EXISTS);

    const got = await groups.GetVolumeGroupSnapshot({
      group_snapshot_id: group.group_snapshot_id,
      snapshot_ids: [],
      secrets: {},
    });
    expect(got.group_snapshot.snapshots).toHaveLength(2);
  });

  it("refuses, saying why, what EC2 cannot snapshot crash-consistently: volumes on two instances, a detached volume", async () => {
    const other = ec2.addInstance();
    const [a, b, loose] = [await volume(node), await volume(other), await volume()];
    const split = await codeOf(create("g-split", [a, b]));
    expect(split.code).toBe(status.FAILED_PRECONDITION);
    expect(split.message).toMatch(/different instances/);
    expect(split.message).toMatch(/crash-consistent/);
    const detached = await codeOf(create("g-detached", [a, loose]));
    expect(detached).toMatchObject({
      code: status.FAILED_PRECONDITION,
      message: expect.stringMatching(/not attached/),
    });
    expect(ec2.snapshots.size).toBe(0);
  });

  it("checks its input: name, volumes, duplicates, unknown volumes, parameters", async () => {
    const a = await volume(node);
    const cases: [Promise<unknown>, number, RegExp][] = [
      [create("", [a]), status.INVALID_ARGUMENT, /name/],
      [create("g", []), status.INVALID_ARGUMENT, /source_volume_ids/],
      [create("g", [a, a]), status.INVALID_ARGUMENT, /listed twice/],
      [create("g", ["vol-00000000000000099"]), status.NOT_FOUND, /no volume/],
      [create("g", [a], { lockMode: "governance" }), status.INVALID_ARGUMENT, /parameters\.lockMode/],
      [
        create("g", [a], { tagSpecification_1: "ebs.csi.aws.com/group-snapshot-id=x" }),
        status.INVALID_ARGUMENT,
        /reserved/,
      ],
    ];
    for (const [call, code, message] of cases) {
      const err = await codeOf(call);
      expect(err.code).toBe(code);
      expect(err.message).toMatch(message);
    }
  });

  it("a group EC2 failed is deleted and reported; an answer lost after EC2 made it is found by name", async () => {
    const [a, b] = [await volume(node), await volume(node)];
    await create("g", [a, b]);
    [...ec2.snapshots.values()][0]!.state = "error";
    expect((await codeOf(create("g", [a, b]))).code).toBe(status.INTERNAL);
    expect(ec2.snapshots.size).toBe(0);

    const real = ec2.createSnapshots.bind(ec2);
    ec2.createSnapshots = async (input) => {
      await real(input);
      throw new CloudError("Unavailable", "InternalError", "answer lost");
    };
    const found = await create("g2", [a, b]);
    expect(found.group_snapshot.snapshots).toHaveLength(2);
    expect(ec2.snapshots.size).toBe(2);
  });
});

describe("GetVolumeGroupSnapshot and DeleteVolumeGroupSnapshot", () => {
  it("NOT_FOUND for an unknown group, INVALID_ARGUMENT for a mismatching snapshot list; delete is idempotent", async () => {
    const [a, b] = [await volume(node), await volume(node)];
    const { group_snapshot: group } = await create("g", [a, b]);
    const id = group.group_snapshot_id;
    const ids = group.snapshots.map((s) => s.snapshot_id);
    expect(
      (
        await codeOf(
          groups.GetVolumeGroupSnapshot({ group_snapshot_id: "nope", snapshot_ids: [], secrets: {} }),
        )
      ).code,
    ).toBe(status.NOT_FOUND);
    expect(
      (
        await codeOf(
          groups.GetVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: [ids[0]!], secrets: {} }),
        )
      ).code,
    ).toBe(status.INVALID_ARGUMENT);
    expect(
      (
        await codeOf(
          groups.DeleteVolumeGroupSnapshot(
            { group_snapshot_id: id, snapshot_ids: [ids[0]!], secrets: {} },
            ctx(),
          ),
        )
      ).code,
    ).toBe(status.INVALID_ARGUMENT);
    expect(ec2.snapshots.size).toBe(2);
    await groups.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: ids, secrets: {} }, ctx());
    expect(ec2.snapshots.size).toBe(0);
    await groups.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: ids, secrets: {} }, ctx());
    await groups.DeleteVolumeGroupSnapshot(
      { group_snapshot_id: "invalid", snapshot_ids: [], secrets: {} },
      ctx(),
    );
    expect(
      (
        await codeOf(
          groups.DeleteVolumeGroupSnapshot({ group_snapshot_id: "", snapshot_ids: [], secrets: {} }, ctx()),
        )
      ).code,
    ).toBe(status.INVALID_ARGUMENT);
  });
});
