/**
 * EBS snapshots: CreateSnapshot, DeleteSnapshot, ListSnapshots and GetSnapshot on EC2 snapshots,
 * with the official driver's VolumeSnapshotClass parameters and tags, so that its
 * VolumeSnapshotClasses and VolumeSnapshotContents keep working.
 *
 * EC2 CreateSnapshot takes no ClientToken. What makes a retry find the snapshot of an earlier
 * attempt is the CSIVolumeSnapshotName tag, set in the creating call itself: every CreateSnapshot
 * looks the name up first (lookups of concurrent calls are merged into one DescribeSnapshots), the
 * RPC layer lets one call per name run at a time, and the create itself is never retried blindly:
 * after an error that may hide a snapshot made anyway (a 5xx, a lost answer), the name is looked
 * up again before anything else. Should two snapshots of one name still exist (a crash between
 * EC2's answer and ours, EC2's eventual consistency), the oldest is the one answered.
 */
import { setTimeout as sleep } from "node:timers/promises";
import {
  aborted,
  alreadyExists,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  unavailable,
} from "../csi/errors.ts";
import type {
  CreateSnapshotRequest,
  DeleteSnapshotRequest,
  DeleteSnapshotResponse,
  GetSnapshotRequest,
  ListSnapshotsRequest,
} from "../csi/types.ts";
import { checkMap, checkString, requireString } from "../csi/validate.ts";
import type { Logger } from "../log.ts";
import type { RpcContext } from "../server/rpc.ts";
import { type Ec2, isCloudError, type Snapshot } from "./cloud.ts";
import { mapCloudError, VOLUME_ID } from "./errors.ts";
import { GiB } from "./limits.ts";
import { GROUP_ID_TAG, parseSnapshotParameters, SNAPSHOT_NAME_TAG } from "./params.ts";

export const SNAPSHOT_ID = /^snap-[0-9a-f]{8}([0-9a-f]{9})?$/;

export interface SnapshotOptions {
  /** --extra-tags. */
  extraTags: Record<string, string>;
  /** --k8s-tag-cluster-id. */
  clusterId: string | undefined;
}

/** Throttled creates are tried again this many times before the caller is asked to retry. */
const CREATE_ATTEMPTS = 4;
const THROTTLE_PAUSE_MS = 500;

export class EbsSnapshots {
  readonly #ec2: Ec2;
  readonly #options: SnapshotOptions;

  constructor(ec2: Ec2, options: SnapshotOptions) {
    this.#ec2 = ec2;
    this.#options = options;
  }

  async CreateSnapshot(req: CreateSnapshotRequest, ctx: RpcContext): Promise<{ snapshot: CsiSnapshot }> {
    const name = requireString(req.name, "name");
    const sourceVolumeId = requireString(req.source_volume_id, "source_volume_id");
    checkMap(req.secrets, "secrets");
    // Checked before anything is looked up or made: a bad class fails every call alike.
    const parsed = parseSnapshotParameters(checkMap(req.parameters, "parameters"), {
      name,
      extraTags: this.#options.extraTags,
      clusterId: this.#options.clusterId,
    });

    const existing = await this.#findByName(name);
    if (existing) {
      if (existing.volumeId !== sourceVolumeId) {
        throw alreadyExists(
          `name "${name}": snapshot ${existing.id} exists, of volume ${existing.volumeId}, not ${sourceVolumeId}`,
        );
      }
      return { snapshot: toCsiSnapshot(await this.#unlessFailed(existing, ctx)) };
    }
    if (!VOLUME_ID.test(sourceVolumeId)) throw notFound(`source_volume_id ${sourceVolumeId}: no such volume`);
    if (parsed.fastRestoreZones.length > 0) await this.#checkZones(parsed.fastRestoreZones);

    const snapshot = await this.#create(name, sourceVolumeId, parsed.tags, parsed.outpostArn, ctx);
    ctx.log.info({ name, snapshotId: snapshot.id, volumeId: sourceVolumeId }, "created snapshot");
    // Fast restore and the lock are part of what was asked: when EC2 refuses them the snapshot is
    // deleted again, and the caller's retry starts over. (A crash between the create and these
    // calls leaves a snapshot without them that a retry answers as is, as the official driver
    // does: re-applying them on every readiness poll would cost two EC2 calls a poll.)
    try {
      if (parsed.fastRestoreZones.length > 0) {
        await this.#ec2.enableFastSnapshotRestores(snapshot.id, parsed.fastRestoreZones);
      }
      if (parsed.lock) await this.#ec2.lockSnapshot(snapshot.id, parsed.lock);
    } catch (err) {
      const what = parsed.lock ? "fast snapshot restore or the lock" : "fast snapshot restore";
      await deleteSnapshotQuietly(this.#ec2, snapshot.id, ctx.log);
      mapCloudError(err, `snapshot ${snapshot.id} for "${name}": ${what} failed, the snapshot was deleted`);
    }
    return { snapshot: toCsiSnapshot(snapshot) };
  }

  async DeleteSnapshot(req: DeleteSnapshotRequest, ctx: RpcContext): Promise<DeleteSnapshotResponse> {
    const snapshotId = requireString(req.snapshot_id, "snapshot_id");
    checkMap(req.secrets, "secrets");
    if (!SNAPSHOT_ID.test(snapshotId)) return {};
    try {
      await this.#ec2.deleteSnapshot(snapshotId);
      ctx.log.info({ snapshotId }, "deleted snapshot");
    } catch (err) {
      if (isCloudError(err, "NotFound")) return {};
      if (isCloudError(err, "InUse")) {
        throw failedPrecondition(`snapshot ${snapshotId} is in use: ${err.message}`);
      }
      mapCloudError(err, `deleting snapshot ${snapshotId}`);
    }
    return {};
  }

  async ListSnapshots(
    req: ListSnapshotsRequest,
  ): Promise<{ entries: { snapshot: CsiSnapshot }[]; next_token: string }> {
    checkMap(req.secrets, "secrets");
    const max = Number(req.max_entries ?? 0);
    if (max < 0) throw invalidArgument("max_entries", "must not be negative");
    const snapshotId = req.snapshot_id ?? "";
    const sourceVolumeId = req.source_volume_id ?? "";
    checkString(snapshotId, "snapshot_id");
    checkString(sourceVolumeId, "source_volume_id");
    if (snapshotId !== "") {
      // Any snapshot the account can see, so that pre-provisioned VolumeSnapshotContents work.
      const found = SNAPSHOT_ID.test(snapshotId) ? await this.#getSnapshot(snapshotId) : undefined;
      const matches = found && (sourceVolumeId === "" || found.volumeId === sourceVolumeId);
      return { entries: matches ? [{ snapshot: toCsiSnapshot(found) }] : [], next_token: "" };
    }
    if (sourceVolumeId !== "" && !VOLUME_ID.test(sourceVolumeId)) return { entries: [], next_token: "" };
    const token = req.starting_token || undefined;
    try {
      const page = await this.#ec2.listSnapshots(
        sourceVolumeId || undefined,
        max > 0 ? Math.min(max, 1000) : 1000,
        token,
      );
      return {
        entries: page.snapshots.map((s) => ({ snapshot: toCsiSnapshot(s) })),
        next_token: page.nextToken ?? "",
      };
    } catch (err) {
      if (token && isCloudError(err, "InvalidParameter"))
        throw aborted(`starting_token "${token}" is not valid`);
      return mapCloudError(err, "listing snapshots");
    }
  }

  async GetSnapshot(req: GetSnapshotRequest): Promise<{ snapshot: CsiSnapshot }> {
    const snapshotId = requireString(req.snapshot_id, "snapshot_id");
    checkMap(req.secrets, "secrets");
    const found = SNAPSHOT_ID.test(snapshotId) ? await this.#getSnapshot(snapshotId) : undefined;
    if (!found) throw notFound(`snapshot_id ${snapshotId}: no such snapshot`);
    return { snapshot: toCsiSnapshot(found) };
  }

  /**
   * The snapshot a CreateVolume restores: undefined when it does not exist, UNAVAILABLE while EC2
   * is still taking it (the provisioner retries), FAILED_PRECONDITION when EC2 failed it.
   */
  async readySnapshot(snapshotId: string): Promise<Snapshot | undefined> {
    const snapshot = await this.#getSnapshot(snapshotId);
    if (snapshot?.state === "error") {
      throw failedPrecondition(`volume_content_source.snapshot: snapshot ${snapshotId} failed in EC2`);
    }
    if (snapshot && snapshot.state !== "completed") {
      throw unavailable(
        `volume_content_source.snapshot: snapshot ${snapshotId} is ${snapshot.state}, not yet completed`,
      );
    }
    return snapshot;
  }

  async #getSnapshot(snapshotId: string): Promise<Snapshot | undefined> {
    const found = await this.#ec2
      .getSnapshots([snapshotId])
      .catch((err: unknown) => mapCloudError(err, `looking up snapshot ${snapshotId}`));
    return found.get(snapshotId);
  }

  /** The snapshot of this name; the oldest when EC2 holds more than one. */
  async #findByName(name: string): Promise<Snapshot | undefined> {
    const found = await this.#ec2
      .findSnapshotsByTag(SNAPSHOT_NAME_TAG, name)
      .catch((err: unknown) => mapCloudError(err, `looking up snapshot ${name}`));
    const live = found.filter((s) => s.state !== "error");
    const pool = live.length > 0 ? live : found;
    return pool.sort((a, b) => a.startTime.getTime() - b.startTime.getTime() || a.id.localeCompare(b.id))[0];
  }

  /**
   * A snapshot EC2 failed ("error": EC2 could not complete it) is deleted, and the call fails with
   * EC2's reason: the sidecar's retry then takes a new one. Nothing failed is left behind.
   */
  async #unlessFailed(snapshot: Snapshot, ctx: RpcContext): Promise<Snapshot> {
    if (snapshot.state !== "error") return snapshot;
    await deleteSnapshotQuietly(this.#ec2, snapshot.id, ctx.log);
    throw internal(
      `snapshot ${snapshot.id} of volume ${snapshot.volumeId} failed in EC2` +
        `${snapshot.stateMessage ? ` (${snapshot.stateMessage})` : ""}; it was deleted, a retry takes a new one`,
    );
  }

  async #create(
    name: string,
    volumeId: string,
    tags: Record<string, string>,
    outpostArn: string | undefined,
    ctx: RpcContext,
  ): Promise<Snapshot> {
    const description = `Created by aws-storage-csi (ebs.csi.aws.com) for volume ${volumeId}`;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#ec2.createSnapshot({
          volumeId,
          tags,
          description,
          ...(outpostArn ? { outpostArn } : {}),
        });
      } catch (err) {
        // A throttled call did nothing: try again, a few times, before the caller has to.
        if (isCloudError(err, "Throttled") && attempt < CREATE_ATTEMPTS) {
          await sleep(THROTTLE_PAUSE_MS * 2 ** (attempt - 1), undefined, { signal: ctx.signal }).catch(
            () => undefined,
          );
          if (!ctx.signal.aborted) continue;
        }
        // Anything but a clear refusal may hide a snapshot made anyway: look before failing.
        if (
          isCloudError(err, "Unavailable") ||
          isCloudError(err, "Other") ||
          isCloudError(err, "Cancelled")
        ) {
          const made = await this.#findByName(name).catch(() => undefined);
          if (made?.volumeId === volumeId) return made;
        }
        if (isCloudError(err, "NotFound")) throw notFound(`source_volume_id ${volumeId}: no such volume`);
        return mapCloudError(err, `creating snapshot "${name}" of ${volumeId}`);
      }
    }
  }

  async #checkZones(zones: string[]): Promise<void> {
    const known = await this.#ec2.getZones().catch((err: unknown) => mapCloudError(err, "listing zones"));
    const unknown = zones.filter((z) => !known.includes(z));
    if (unknown.length > 0) {
      throw invalidArgument(
        "parameters.fastSnapshotRestoreAvailabilityZones",
        `${unknown.join(", ")} ${unknown.length > 1 ? "are not zones" : "is not a zone"} of this region (${known.join(", ")})`,
      );
    }
  }
}

/** Deletes a snapshot that must not stay (half made, or failed in EC2); a failure is logged for a person. */
export async function deleteSnapshotQuietly(ec2: Ec2, snapshotId: string, log: Logger): Promise<void> {
  try {
    await ec2.deleteSnapshot(snapshotId);
  } catch (err) {
    if (!isCloudError(err, "NotFound")) {
      log.error(
        { snapshotId, err: (err as Error).message },
        "could not delete a snapshot that must not stay: delete it by hand",
      );
    }
  }
}

export type CsiSnapshot = ReturnType<typeof toCsiSnapshot>;

/** A member of a group snapshot names its group (the tag CreateVolumeGroupSnapshot sets). */
export function toCsiSnapshot(s: Snapshot, groupSnapshotId = s.tags[GROUP_ID_TAG] ?? "") {
  const ms = s.startTime.getTime();
  return {
    snapshot_id: s.id,
    source_volume_id: s.volumeId,
    size_bytes: s.sizeGiB * GiB,
    creation_time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 },
    ready_to_use: s.state === "completed",
    group_snapshot_id: groupSnapshotId,
  };
}
