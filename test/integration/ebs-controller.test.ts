// The EBS controller as the sidecars use it: the driver process on a unix socket, EC2 played by
// moto behind the fault proxy. Every effect is checked in moto itself, not in the driver's answers.
import { setTimeout as sleep } from "node:timers/promises";
import {
  AttachVolumeCommand,
  DescribeInstancesCommand,
  DescribeVolumesCommand,
  type Volume,
} from "@aws-sdk/client-ec2";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { callFailure as failure, type Reply } from "../harness/csi-client.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";

const GiB = 1024 ** 3;
const CLUSTER_ID = "it-cluster";
const mountCap = { mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } };
const blockCap = { block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" } };

let env: EbsEnv;

beforeAll(async () => {
  env = await startEbsEnv({
    mode: "controller",
    extraArgs: ["--extra-tags", "team=storage,cost-center=42", "--k8s-tag-cluster-id", CLUSTER_ID],
  });
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

let seq = 0;
const uniqueName = (what: string) => `pvc-${what}-${process.pid}-${++seq}`;

const controller = (method: string, request: object): Promise<Reply> =>
  env.client.call("Controller", method, request);

/** The gRPC error of a call that must fail. */

async function createVolume(name: string, sizeGiB = 1, parameters: Record<string, string> = {}) {
  const reply = await controller("CreateVolume", {
    name,
    capacity_range: { required_bytes: sizeGiB * GiB },
    volume_capabilities: [mountCap],
    parameters,
  });
  return reply.volume.volume_id as string;
}

const publish = (volumeId: string, nodeId: string = env.instanceId) =>
  controller("ControllerPublishVolume", {
    volume_id: volumeId,
    node_id: nodeId,
    volume_capability: mountCap,
  });

const unpublish = (volumeId: string, nodeId: string = env.instanceId) =>
  controller("ControllerUnpublishVolume", { volume_id: volumeId, node_id: nodeId });

/** The volume as moto has it, or undefined when moto does not know it. */
async function motoVolume(volumeId: string): Promise<Volume | undefined> {
  const out = await env.aws.ec2.send(
    new DescribeVolumesCommand({ Filters: [{ Name: "volume-id", Values: [volumeId] }] }),
  );
  return out.Volumes?.[0];
}

const tagsOf = (volume: Volume | undefined) =>
  Object.fromEntries((volume?.Tags ?? []).map((t) => [t.Key ?? "", t.Value ?? ""]));

/** Volumes in moto that carry CSIVolumeName, i.e. the ones the driver created. */
async function motoCsiVolumeIds(): Promise<string[]> {
  const out = await env.aws.ec2.send(
    new DescribeVolumesCommand({ Filters: [{ Name: "tag-key", Values: ["CSIVolumeName"] }] }),
  );
  return (out.Volumes ?? []).map((v) => v.VolumeId ?? "").sort();
}

/** Device name -> volume id, from the instance's block device mappings in moto. */
async function motoDeviceMap(instanceId: string): Promise<Map<string, string>> {
  const out = await env.aws.ec2.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }));
  const instance = out.Reservations?.[0]?.Instances?.[0];
  return new Map(
    (instance?.BlockDeviceMappings ?? []).map((m) => [m.DeviceName ?? "", m.Ebs?.VolumeId ?? ""]),
  );
}

async function deleteQuietly(volumeIds: string[]): Promise<void> {
  for (const volumeId of volumeIds) {
    await unpublish(volumeId, "").catch(() => undefined);
    await controller("DeleteVolume", { volume_id: volumeId }).catch(() => undefined);
  }
}

describe("volume lifecycle through moto", () => {
  it("create -> publish -> expand -> unpublish -> delete, each visible in EC2 and each repeatable", async () => {
    const name = uniqueName("lifecycle");
    const created = await controller("CreateVolume", {
      name,
      capacity_range: { required_bytes: 5 * GiB },
      volume_capabilities: [mountCap],
      parameters: { type: "gp3" },
    });
    const volumeId = created.volume.volume_id as string;
    expect(volumeId).toMatch(/^vol-[0-9a-f]+$/);
    expect(Number(created.volume.capacity_bytes)).toBe(5 * GiB);
    expect(created.volume.accessible_topology[0].segments["topology.kubernetes.io/zone"]).toBe(env.zone);
    const inMoto = await motoVolume(volumeId);
    expect(inMoto).toMatchObject({ Size: 5, VolumeType: "gp3", AvailabilityZone: env.zone });

    // Same name, same arguments: the same volume, no second one in EC2.
    const again = await controller("CreateVolume", {
      name,
      capacity_range: { required_bytes: 5 * GiB },
      volume_capabilities: [mountCap],
      parameters: { type: "gp3" },
    });
    expect(again.volume.volume_id).toBe(volumeId);
    const sameName = await env.aws.ec2.send(
      new DescribeVolumesCommand({ Filters: [{ Name: "tag:CSIVolumeName", Values: [name] }] }),
    );
    expect(sameName.Volumes?.map((v) => v.VolumeId)).toEqual([volumeId]);

    const published = await publish(volumeId);
    const devicePath = published.publish_context.devicePath as string;
    expect(devicePath).toMatch(/^\/dev\/xvd[a-z]{2}$/);
    const attached = await motoVolume(volumeId);
    expect(attached?.Attachments).toEqual([
      expect.objectContaining({ InstanceId: env.instanceId, Device: devicePath, State: "attached" }),
    ]);
    expect((await motoDeviceMap(env.instanceId)).get(devicePath)).toBe(volumeId);
    // A repeated publish (the attacher retrying) answers the same device and attaches nothing new.
    expect((await publish(volumeId)).publish_context.devicePath).toBe(devicePath);

    const expanded = await controller("ControllerExpandVolume", {
      volume_id: volumeId,
      capacity_range: { required_bytes: 8 * GiB },
      volume_capability: mountCap,
    });
    expect(Number(expanded.capacity_bytes)).toBe(8 * GiB);
    expect(expanded.node_expansion_required).toBe(true);
    expect((await motoVolume(volumeId))?.Size).toBe(8);
    // Expanding to the size it already has is OK and changes nothing.
    const same = await controller("ControllerExpandVolume", {
      volume_id: volumeId,
      capacity_range: { required_bytes: 8 * GiB },
      volume_capability: mountCap,
    });
    expect(Number(same.capacity_bytes)).toBe(8 * GiB);

    await unpublish(volumeId);
    expect((await motoVolume(volumeId))?.Attachments ?? []).toEqual([]);
    expect((await motoVolume(volumeId))?.State).toBe("available");
    await unpublish(volumeId);

    await controller("DeleteVolume", { volume_id: volumeId });
    expect(await motoVolume(volumeId)).toBeUndefined();
    await controller("DeleteVolume", { volume_id: volumeId });
  });

  it("ControllerUnpublish with an empty node_id detaches the volume from whatever node has it", async () => {
    const other = await env.aws.createInstance({ zone: env.zone });
    const volumeId = await createVolume(uniqueName("unpublish-all"), 1);
    try {
      await publish(volumeId, other);
      await unpublish(volumeId, "");
      const volume = await motoVolume(volumeId);
      expect(volume?.Attachments ?? []).toEqual([]);
      expect(volume?.State).toBe("available");
      // Unpublishing from a node it was never on is OK and changes nothing.
      await unpublish(volumeId, env.instanceId);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("expanding a raw block volume needs no node expansion", async () => {
    const volumeId = await createVolume(uniqueName("block-expand"), 1);
    try {
      const expanded = await controller("ControllerExpandVolume", {
        volume_id: volumeId,
        capacity_range: { required_bytes: 3 * GiB },
        volume_capability: blockCap,
      });
      expect(expanded.node_expansion_required).toBe(false);
      expect((await motoVolume(volumeId))?.Size).toBe(3);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("expanding an unknown volume is NOT_FOUND", async () => {
    const err = await failure(
      controller("ControllerExpandVolume", {
        volume_id: "vol-0123456789abcdef0",
        capacity_range: { required_bytes: 3 * GiB },
      }),
    );
    expect(err.code).toBe(status.NOT_FOUND);
  });
});

describe("tags", () => {
  it("tags the volume with its name, the driver, the cluster, --extra-tags and the PVC/PV it is for", async () => {
    const name = uniqueName("tags");
    const volumeId = await createVolume(name, 1, {
      "csi.storage.k8s.io/pvc/name": "data-db-0",
      "csi.storage.k8s.io/pvc/namespace": "prod",
      "csi.storage.k8s.io/pv/name": name,
      tagSpecification_1: "owner={{ .PVCNamespace }}",
    });
    try {
      const tags = tagsOf(await motoVolume(volumeId));
      expect(tags).toMatchObject({
        CSIVolumeName: name,
        "ebs.csi.aws.com/cluster": "true",
        team: "storage",
        "cost-center": "42",
        [`kubernetes.io/cluster/${CLUSTER_ID}`]: "owned",
        "kubernetes.io/created-for/pvc/name": "data-db-0",
        "kubernetes.io/created-for/pvc/namespace": "prod",
        "kubernetes.io/created-for/pv/name": name,
        owner: "prod",
      });
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("leaves the created-for tags out when the request does not carry the PVC", async () => {
    const volumeId = await createVolume(uniqueName("no-pvc"), 1);
    try {
      const keys = Object.keys(tagsOf(await motoVolume(volumeId)));
      expect(keys.filter((k) => k.startsWith("kubernetes.io/created-for/"))).toEqual([]);
      expect(keys).toContain("CSIVolumeName");
    } finally {
      await deleteQuietly([volumeId]);
    }
  });
});

describe("conflicts", () => {
  it("the same name with another size is ALREADY_EXISTS and creates nothing", async () => {
    const name = uniqueName("conflict");
    const volumeId = await createVolume(name, 1);
    try {
      const err = await failure(createVolume(name, 2));
      expect(err.code).toBe(status.ALREADY_EXISTS);
      expect(err.details).toContain(volumeId);
      const byName = await env.aws.ec2.send(
        new DescribeVolumesCommand({ Filters: [{ Name: "tag:CSIVolumeName", Values: [name] }] }),
      );
      expect(byName.Volumes?.map((v) => [v.VolumeId, v.Size])).toEqual([[volumeId, 1]]);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("publishing a volume attached to another instance is FAILED_PRECONDITION and moves nothing", async () => {
    const other = await env.aws.createInstance({ zone: env.zone });
    const volumeId = await createVolume(uniqueName("elsewhere"), 1);
    try {
      const device = (await publish(volumeId, other)).publish_context.devicePath;
      const err = await failure(publish(volumeId, env.instanceId));
      expect(err.code).toBe(status.FAILED_PRECONDITION);
      expect(err.details).toContain(other);
      expect((await motoVolume(volumeId))?.Attachments).toEqual([
        expect.objectContaining({ InstanceId: other, Device: device, State: "attached" }),
      ]);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("deleting an attached volume is FAILED_PRECONDITION and the volume stays", async () => {
    const volumeId = await createVolume(uniqueName("delete-attached"), 1);
    try {
      await publish(volumeId);
      const err = await failure(controller("DeleteVolume", { volume_id: volumeId }));
      expect(err.code).toBe(status.FAILED_PRECONDITION);
      expect(err.details).toContain(volumeId);
      expect((await motoVolume(volumeId))?.State).toBe("in-use");
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("publishing to an unknown instance or an unknown volume is NOT_FOUND", async () => {
    const volumeId = await createVolume(uniqueName("unknown-node"), 1);
    try {
      const noNode = await failure(publish(volumeId, "i-0123456789abcdef0"));
      expect(noNode.code).toBe(status.NOT_FOUND);
      expect(noNode.details).toContain("i-0123456789abcdef0");
      const noVolume = await failure(publish("vol-0123456789abcdef0"));
      expect(noVolume.code).toBe(status.NOT_FOUND);
      expect((await motoVolume(volumeId))?.Attachments ?? []).toEqual([]);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });

  it("an attachment made by someone else between the driver's look and its attach is FAILED_PRECONDITION (VolumeInUse)", async () => {
    // moto would silently move the attachment; the proxy answers VolumeInUse as EC2 does.
    expect(env.aws.proxy.faults.volumeInUse).toBe(true);
    const other = await env.aws.createInstance({ zone: env.zone });
    const volumeId = await createVolume(uniqueName("race"), 1);
    try {
      env.aws.proxy.resetStats();
      env.aws.proxy.faults.latencyMs = { AttachVolume: 1500 };
      const publishing = failure(publish(volumeId));
      // The driver looked and found the volume free; its AttachVolume is now held by the proxy.
      for (let i = 0; i < 200 && !env.aws.proxy.stats().AttachVolume; i++) await sleep(10);
      expect(env.aws.proxy.stats().AttachVolume).toBe(1);
      await env.aws.ec2.send(
        new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: other, Device: "/dev/sdf" }),
      );
      const err = await publishing;
      expect(err.code).toBe(status.FAILED_PRECONDITION);
      expect(err.details).toMatch(/VolumeInUse/);
      expect((await motoVolume(volumeId))?.Attachments).toEqual([
        expect.objectContaining({ InstanceId: other, State: "attached" }),
      ]);
    } finally {
      env.aws.proxy.faults.latencyMs = undefined;
      await deleteQuietly([volumeId]);
    }
  });
});

describe("ListVolumes and ControllerGetVolume", () => {
  it("pages through every CSI volume exactly once, with the nodes each is published to", async () => {
    const ids: string[] = [];
    try {
      for (let i = 0; i < 7; i++) ids.push(await createVolume(uniqueName("list"), 1));
      await publish(ids[0]!);
      await publish(ids[3]!);

      const seen: Reply[] = [];
      let token = "";
      let pages = 0;
      do {
        const page = await controller("ListVolumes", { max_entries: 3, starting_token: token });
        expect(page.entries.length).toBeLessThanOrEqual(3);
        seen.push(...page.entries);
        token = page.next_token;
        pages++;
      } while (token !== "" && pages < 100);
      expect(token).toBe("");

      const listed = seen.map((e) => e.volume.volume_id as string);
      expect(new Set(listed).size).toBe(listed.length);
      expect([...listed].sort()).toEqual(await motoCsiVolumeIds());
      expect(pages).toBe(Math.ceil(listed.length / 3));
      const publishedTo = (id: string) =>
        seen.find((e) => e.volume.volume_id === id)?.status.published_node_ids as string[];
      expect(publishedTo(ids[0]!)).toEqual([env.instanceId]);
      expect(publishedTo(ids[3]!)).toEqual([env.instanceId]);
      for (const i of [1, 2, 4, 5, 6]) expect(publishedTo(ids[i]!)).toEqual([]);
    } finally {
      await deleteQuietly(ids);
    }
  });

  it("ControllerGetVolume answers size, topology and published nodes, the health RPCs no issue; unknown ids are NOT_FOUND", async () => {
    const volumeId = await createVolume(uniqueName("get"), 2);
    try {
      await publish(volumeId);
      const reply = await controller("ControllerGetVolume", { volume_id: volumeId });
      expect(reply.volume.volume_id).toBe(volumeId);
      expect(Number(reply.volume.capacity_bytes)).toBe(2 * GiB);
      expect(reply.volume.accessible_topology[0].segments["topology.ebs.csi.aws.com/zone"]).toBe(env.zone);
      expect(reply.status.published_node_ids).toEqual([env.instanceId]);
      expect(await controller("ControllerGetVolumeHealth", { volume_id: volumeId })).toEqual({
        volume_health: { volume_id: volumeId, health_statuses: [] },
      });

      const err = await failure(controller("ControllerGetVolume", { volume_id: "vol-0123456789abcdef0" }));
      expect(err.code).toBe(status.NOT_FOUND);
      const gone = await failure(
        controller("ControllerGetVolumeHealth", { volume_id: "vol-0123456789abcdef0" }),
      );
      expect(gone.code).toBe(status.NOT_FOUND);
      // Healthy volumes are left out of the list.
      const listed = await controller("ControllerListVolumeHealth", {});
      // biome-ignore lint/suspicious/noExplicitAny: decoded protobuf reply.
      expect(listed.entries.map((e: any) => e.volume_id)).not.toContain(volumeId);
      const badToken = await failure(
        controller("ControllerListVolumeHealth", { starting_token: "invalid-token" }),
      );
      expect(badToken.code).toBe(status.ABORTED);
    } finally {
      await deleteQuietly([volumeId]);
    }
  });
});

describe("many attachments to one node", () => {
  it("50 concurrent publishes get 50 distinct device names, and EC2's block device mappings agree", async () => {
    // m7i.48xlarge has 128 dedicated EBS attachments, so 50 fit.
    const node = await env.aws.createInstance({ zone: env.zone, instanceType: "m7i.48xlarge" });
    const ids = await Promise.all(
      Array.from({ length: 50 }, (_, i) => createVolume(uniqueName(`many-${i}`), 1)),
    );
    try {
      const replies = await Promise.all(ids.map((id) => publish(id, node)));
      const devices = replies.map((r) => r.publish_context.devicePath as string);
      expect(new Set(devices).size).toBe(50);
      for (const device of devices) expect(device).toMatch(/^\/dev\/xvd[a-z]{2}$/);

      const mapping = await motoDeviceMap(node);
      ids.forEach((id, i) => {
        expect(mapping.get(devices[i]!)).toBe(id);
      });
      const volumes = await Promise.all(ids.map(motoVolume));
      volumes.forEach((v, i) => {
        expect(v?.Attachments).toEqual([
          expect.objectContaining({ InstanceId: node, Device: devices[i], State: "attached" }),
        ]);
      });
    } finally {
      await Promise.all(ids.map((id) => unpublish(id, node).catch(() => undefined)));
      await deleteQuietly(ids);
    }
  });
});
