/**
 * The GroupController: crash-consistent snapshots of several EBS volumes at one point in time,
 * through EC2 CreateSnapshots. EC2 offers that for the volumes attached to one instance, and only
 * them: so the volumes of a group must all be attached to the same single instance, and any other
 * volume of that instance is left out of the call. Anything else (volumes on two instances, a volume
 * not attached, a multi-attach volume on two instances) is refused with FAILED_PRECONDITION saying
 * why: snapshots taken one by one would not be crash-consistent, and the driver does not pretend.
 *
 * A group is its snapshots: each carries the group's id (derived from its CSI name) and name as tags,
 * which is how a retried create, GetVolumeGroupSnapshot and DeleteVolumeGroupSnapshot find them.
 * CreateSnapshots takes no ClientToken: as for CreateSnapshot, the name is looked up first and again
 * after an error that may hide snapshots made anyway; EC2 is never asked twice blindly.
 */
import { createHash } from "node:crypto";
import { alreadyExists, failedPrecondition, internal, invalidArgument, notFound } from "../csi/errors.ts";
import type {
  CreateVolumeGroupSnapshotRequest,
  DeleteVolumeGroupSnapshotRequest,
  GetVolumeGroupSnapshotRequest,
} from "../csi/types.ts";
import { checkMap, requireString } from "../csi/validate.ts";
import type { RpcContext } from "../server/rpc.ts";
import { type Disk, type Ec2, isCloudError, type Snapshot } from "./cloud.ts";
import { mapCloudError, VOLUME_ID } from "./errors.ts";
import { GROUP_ID_TAG, parseGroupSnapshotParameters } from "./params.ts";
import { type CsiSnapshot, deleteSnapshotQuietly, type SnapshotOptions, toCsiSnapshot } from "./snapshots.ts";

/** A group snapshot id: the driver's prefix and a hash of the group's CSI name. */
export const GROUP_SNAPSHOT_ID = /^groupsnap-[0-9a-f]{32}$/;
export const groupSnapshotIdFor = (name: string): string =>
  `groupsnap-${createHash("sha256").update(name).digest("hex").slice(0, 32)}`;

/** EC2 CreateSnapshots excludes at most this many data volumes. */
const MAX_EXCLUDED = 40;

interface CsiGroupSnapshot {
  group_snapshot_id: string;
  snapshots: CsiSnapshot[];
  creation_time: { seconds: number; nanos: number };
  ready_to_use: boolean;
}

export class EbsGroupSnapshots {
  readonly #ec2: Ec2;
  readonly #options: SnapshotOptions;

  constructor(ec2: Ec2, options: SnapshotOptions) {
    this.#ec2 = ec2;
    this.#options = options;
  }

  async GroupControllerGetCapabilities() {
    return { capabilities: [{ rpc: { type: "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT" as const } }] };
  }

  async CreateVolumeGroupSnapshot(
    req: CreateVolumeGroupSnapshotRequest,
    ctx: RpcContext,
  ): Promise<{ group_snapshot: CsiGroupSnapshot }> {
    const name = requireString(req.name, "name");
    checkMap(req.secrets, "secrets");
    const volumeIds = req.source_volume_ids ?? [];
    if (volumeIds.length === 0) throw invalidArgument("source_volume_ids", "at least one volume is required");
    const seen = new Set<string>();
    for (const [i, id] of volumeIds.entries()) {
      if (typeof id !== "string" || id === "")
        throw invalidArgument(`source_volume_ids[${i}]`, "must not be empty");
      if (seen.has(id)) throw invalidArgument(`source_volume_ids[${i}]`, `${id} is listed twice`);
      seen.add(id);
    }
    const groupId = groupSnapshotIdFor(name);
    const { tags } = parseGroupSnapshotParameters(checkMap(req.parameters, "parameters"), {
      name,
      groupId,
      extraTags: this.#options.extraTags,
      clusterId: this.#options.clusterId,
    });

    const existing = await this.#members(groupId);
    if (existing.length > 0) {
      const have = new Set(existing.map((s) => s.volumeId));
      if (have.size !== seen.size || [...seen].some((id) => !have.has(id))) {
        throw alreadyExists(
          `name "${name}": group snapshot ${groupId} exists, of volumes ${[...have].sort().join(", ")}, not ${[...seen].sort().join(", ")}`,
        );
      }
      return { group_snapshot: await this.#unlessFailed(groupId, existing, ctx) };
    }

    const instanceId = await this.#commonInstance([...seen]);
    const instance = (
      await this.#ec2
        .getInstances([instanceId])
        .catch((err: unknown) => mapCloudError(err, `looking up instance ${instanceId}`))
    ).get(instanceId);
    if (!instance)
      throw failedPrecondition(`source_volume_ids: instance ${instanceId} of the volumes no longer exists`);
    const rootVolume = instance.rootDeviceName ? instance.devices.get(instance.rootDeviceName) : undefined;
    const excluded = [...new Set(instance.devices.values())].filter(
      (id) => id !== rootVolume && !seen.has(id),
    );
    if (excluded.length > MAX_EXCLUDED) {
      throw failedPrecondition(
        `source_volume_ids: instance ${instanceId} has ${excluded.length} other volumes attached; EC2 CreateSnapshots can leave out at most ${MAX_EXCLUDED}`,
      );
    }

    let snapshots: Snapshot[];
    try {
      snapshots = await this.#ec2.createSnapshots({
        instanceId,
        excludeBootVolume: rootVolume === undefined || !seen.has(rootVolume),
        excludeDataVolumeIds: excluded,
        tags,
        description: `Created by aws-storage-csi (ebs.csi.aws.com) for group snapshot ${name}`,
      });
    } catch (err) {
      // Anything but a clear refusal may hide snapshots made anyway: look before failing.
      if (isCloudError(err, "Unavailable") || isCloudError(err, "Other") || isCloudError(err, "Cancelled")) {
        const made = await this.#members(groupId).catch(() => []);
        if (made.length > 0) return { group_snapshot: toGroup(groupId, made) };
      }
      return mapCloudError(err, `creating group snapshot "${name}" of ${[...seen].join(", ")}`);
    }
    const taken = new Set(snapshots.map((s) => s.volumeId));
    const missing = [...seen].filter((id) => !taken.has(id));
    const extra = snapshots.filter((s) => !seen.has(s.volumeId));
    if (missing.length > 0 || extra.length > 0) {
      // The instance changed between the look and the call: a group that is not the one asked for is undone.
      for (const s of snapshots) await deleteSnapshotQuietly(this.#ec2, s.id, ctx.log);
      throw failedPrecondition(
        `source_volume_ids: the attachments of instance ${instanceId} changed while the group was taken; try again`,
      );
    }
    ctx.log.info(
      { name, groupId, instanceId, snapshots: snapshots.map((s) => s.id) },
      "created group snapshot",
    );
    return { group_snapshot: toGroup(groupId, snapshots) };
  }

  async GetVolumeGroupSnapshot(
    req: GetVolumeGroupSnapshotRequest,
  ): Promise<{ group_snapshot: CsiGroupSnapshot }> {
    const groupId = requireString(req.group_snapshot_id, "group_snapshot_id");
    checkMap(req.secrets, "secrets");
    const members = GROUP_SNAPSHOT_ID.test(groupId) ? await this.#members(groupId) : [];
    if (members.length === 0) throw notFound(`group_snapshot_id ${groupId}: no such group snapshot`);
    checkSnapshotIds(req.snapshot_ids ?? [], members, groupId);
    return { group_snapshot: toGroup(groupId, members) };
  }

  async DeleteVolumeGroupSnapshot(
    req: DeleteVolumeGroupSnapshotRequest,
    ctx: RpcContext,
  ): Promise<Record<string, never>> {
    const groupId = requireString(req.group_snapshot_id, "group_snapshot_id");
    checkMap(req.secrets, "secrets");
    if (!GROUP_SNAPSHOT_ID.test(groupId)) return {};
    const members = await this.#members(groupId);
    checkSnapshotIds(req.snapshot_ids ?? [], members, groupId);
    for (const s of members) {
      try {
        await this.#ec2.deleteSnapshot(s.id);
      } catch (err) {
        if (isCloudError(err, "NotFound")) continue;
        if (isCloudError(err, "InUse"))
          throw failedPrecondition(`snapshot ${s.id} of group ${groupId} is in use: ${err.message}`);
        mapCloudError(err, `deleting snapshot ${s.id} of group ${groupId}`);
      }
    }
    if (members.length > 0)
      ctx.log.info({ groupId, snapshots: members.map((s) => s.id) }, "deleted group snapshot");
    return {};
  }

  async #members(groupId: string): Promise<Snapshot[]> {
    return this.#ec2
      .findSnapshotsByTag(GROUP_ID_TAG, groupId)
      .catch((err: unknown) => mapCloudError(err, `looking up group snapshot ${groupId}`));
  }

  /** The one instance all the volumes are attached to, or FAILED_PRECONDITION saying why there is none. */
  async #commonInstance(volumeIds: string[]): Promise<string> {
    for (const [i, id] of volumeIds.entries()) {
      if (!VOLUME_ID.test(id)) throw notFound(`source_volume_ids[${i}]: no volume ${id}`);
    }
    const disks = await this.#ec2
      .getVolumes(volumeIds)
      .catch((err: unknown) => mapCloudError(err, "looking up the group's volumes"));
    const instances = new Map<string, string[]>();
    const detached: string[] = [];
    for (const [i, id] of volumeIds.entries()) {
      const disk: Disk | undefined = disks.get(id);
      if (!disk) throw notFound(`source_volume_ids[${i}]: no volume ${id}`);
      const attached = disk.attachments.filter((a) => a.state === "attached").map((a) => a.instanceId);
      if (attached.length === 0) detached.push(id);
      for (const instance of attached) instances.set(instance, [...(instances.get(instance) ?? []), id]);
    }
    const why =
      "EC2 takes crash-consistent snapshots of several volumes only for volumes attached to one instance";
    if (detached.length > 0) {
      throw failedPrecondition(
        `source_volume_ids: ${detached.join(", ")} ${detached.length > 1 ? "are" : "is"} not attached to any instance; ${why} (attach them to one node, e.g. run the pod using them)`,
      );
    }
    if (instances.size > 1) {
      const where = [...instances].map(([instance, ids]) => `${ids.join(", ")} on ${instance}`).join("; ");
      throw failedPrecondition(
        `source_volume_ids: the volumes are attached to different instances (${where}); ${why}. Snapshots taken one by one would not be crash-consistent`,
      );
    }
    return [...instances.keys()][0]!;
  }

  /** As for CreateSnapshot: a group EC2 failed (any member in "error") is deleted and reported. */
  async #unlessFailed(groupId: string, members: Snapshot[], ctx: RpcContext): Promise<CsiGroupSnapshot> {
    const failed = members.filter((s) => s.state === "error");
    if (failed.length === 0) return toGroup(groupId, members);
    for (const s of members) await deleteSnapshotQuietly(this.#ec2, s.id, ctx.log);
    throw internal(
      `group snapshot ${groupId}: EC2 failed ${failed.map((s) => `${s.id} of ${s.volumeId}`).join(", ")}; the group was deleted, a retry takes a new one`,
    );
  }
}

/** snapshot_ids, when given, must name the group's snapshots (a member already deleted may be missing). */
function checkSnapshotIds(snapshotIds: string[], members: Snapshot[], groupId: string): void {
  if (snapshotIds.length === 0) return;
  const given = new Set(snapshotIds);
  const unknown = members.filter((s) => !given.has(s.id)).map((s) => s.id);
  if (unknown.length > 0) {
    throw invalidArgument(
      "snapshot_ids",
      `group snapshot ${groupId} also holds ${unknown.join(", ")}, which snapshot_ids leaves out`,
    );
  }
}

function toGroup(groupId: string, members: Snapshot[]): CsiGroupSnapshot {
  const snapshots = [...members]
    .sort((a, b) => a.volumeId.localeCompare(b.volumeId))
    .map((s) => toCsiSnapshot(s, groupId));
  const first = Math.min(...members.map((s) => s.startTime.getTime()));
  return {
    group_snapshot_id: groupId,
    snapshots,
    creation_time: { seconds: Math.floor(first / 1000), nanos: (first % 1000) * 1_000_000 },
    ready_to_use: snapshots.every((s) => s.ready_to_use),
  };
}
