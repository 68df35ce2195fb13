import { createHash } from "node:crypto";
import { type BackoffOptions, WaitTimeoutError, waitUntil } from "../backoff.ts";
import {
  aborted,
  alreadyExists,
  CsiError,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  outOfRange,
  resourceExhausted,
} from "../csi/errors.ts";
import { status } from "../csi/status.ts";
import type {
  ControllerExpandVolumeRequest,
  ControllerExpandVolumeResponse,
  ControllerGetCapabilitiesResponse,
  ControllerGetNodeInfoRequest,
  ControllerGetNodeInfoResponse,
  ControllerGetVolumeHealthRequest,
  ControllerGetVolumeHealthResponse,
  ControllerGetVolumeRequest,
  ControllerGetVolumeResponse,
  ControllerListVolumeHealthRequest,
  ControllerListVolumeHealthResponse,
  ControllerModifyVolumeRequest,
  ControllerModifyVolumeResponse,
  ControllerPublishVolumeRequest,
  ControllerPublishVolumeResponse,
  ControllerUnpublishVolumeRequest,
  ControllerUnpublishVolumeResponse,
  CreateSnapshotRequest,
  CreateVolumeRequest,
  CreateVolumeResponse,
  DeleteSnapshotRequest,
  DeleteVolumeRequest,
  DeleteVolumeResponse,
  GetSnapshotRequest,
  ListSnapshotsRequest,
  ListVolumesRequest,
  ListVolumesResponse,
  TopologyRequirement,
  ValidateVolumeCapabilitiesRequest,
  ValidateVolumeCapabilitiesResponse,
  Volume,
} from "../csi/types.ts";
import {
  type AccessMode,
  type CapabilityRules,
  type CheckedCapability,
  checkCapabilities,
  checkCapability,
  checkCapabilityShape,
  checkCapacityRange,
  checkMap,
  checkString,
  GiB,
  requireString,
} from "../csi/validate.ts";
import type { Logger } from "../log.ts";
import type { RpcContext } from "../server/rpc.ts";
import { attachLimitFromTable, volumesPerNode } from "./attach-limits.ts";
import {
  type Disk,
  type DiskStatus,
  type Ec2,
  type Instance,
  isCloudError,
  type ModifyDiskInput,
  type VolumeType,
} from "./cloud.ts";
import { DeviceNames } from "./devices.ts";
import { mapCloudError, VOLUME_ID } from "./errors.ts";
import { VOLUME_LIMITS } from "./limits.ts";
import { FS_TYPES, parseCreateParameters, parseModifyParameters, VOLUME_NAME_TAG } from "./params.ts";
import { EbsSnapshots, SNAPSHOT_ID } from "./snapshots.ts";
import { ZONE_KEYS } from "./topology.ts";

export { VOLUME_ID } from "./errors.ts";
export { ZONE_KEYS } from "./topology.ts";

const INSTANCE_ID = /^i-[0-9a-f]{8}([0-9a-f]{9})?$/;

const SINGLE_NODE_MODES: readonly AccessMode[] = [
  "SINGLE_NODE_WRITER",
  "SINGLE_NODE_READER_ONLY",
  "SINGLE_NODE_SINGLE_WRITER",
  "SINGLE_NODE_MULTI_WRITER",
];
/** Multi-attach (io1/io2) is for raw block only: no filesystem survives two writers. */
const MULTI_NODE_MODES: readonly AccessMode[] = ["MULTI_NODE_MULTI_WRITER"];
const CAPABILITY_RULES: CapabilityRules = {
  modes: [...SINGLE_NODE_MODES, ...MULTI_NODE_MODES],
  block: true,
  fsTypes: FS_TYPES,
};

export interface EbsControllerOptions {
  extraTags: Record<string, string>;
  clusterId?: string;
  /** Waits for a new volume to become available. */
  createWait: Omit<BackoffOptions, "signal">;
  /** Waits for attachments, detachments and modifications. */
  attachWait: Omit<BackoffOptions, "signal">;
  /**
   * How long a detach with reason NODE_OUT_OF_SERVICE may take before it is forced: the CO says
   * the node is down, so EC2's plain detach would otherwise hang for minutes.
   */
  forceDetachAfterMs: number;
  /** Counts ControllerUnpublishVolume calls by reason (Metrics.unpublishReasons). */
  unpublishReasons?: { inc(labels: { reason: string }): void };
}

export const DEFAULT_CONTROLLER_OPTIONS: EbsControllerOptions = {
  extraTags: {},
  createWait: { initialMs: 1000, factor: 1.5, maxDelayMs: 10_000, timeoutMs: 300_000 },
  attachWait: { initialMs: 1000, factor: 1.8, maxDelayMs: 10_000, timeoutMs: 300_000 },
  forceDetachAfterMs: 30_000,
};

/** The EC2 ClientToken of a volume name: retries after a crash or a lost answer get the same volume. */
export const clientTokenFor = (name: string, generation = 0): string =>
  createHash("sha256")
    .update(generation === 0 ? name : `${name}#${generation}`)
    .digest("hex");

const zoneTopology = (zone: string) => ({ segments: Object.fromEntries(ZONE_KEYS.map((k) => [k, zone])) });

/** The EBS controller service: volumes and attachments through EC2. */
export class EbsController {
  readonly #ec2: Ec2;
  readonly #options: EbsControllerOptions;
  readonly #log: Logger;
  readonly #devices = new DeviceNames();
  /** Names whose volume went to "error" and was deleted: their next create takes a new token. */
  readonly #tokenGenerations = new Map<string, number>();
  readonly #snapshots: EbsSnapshots;
  /** Logged once: the IAM policy does not allow ec2:DescribeVolumeStatus. */
  #statusChecksDenied = false;
  /** "volume/instance" -> when an out-of-service detach was first asked: CO retries keep the clock running. */
  readonly #detachStarted = new Map<string, number>();

  constructor(ec2: Ec2, log: Logger, options: Partial<EbsControllerOptions> = {}) {
    this.#ec2 = ec2;
    this.#log = log;
    this.#options = { ...DEFAULT_CONTROLLER_OPTIONS, ...options };
    this.#snapshots = new EbsSnapshots(ec2, {
      extraTags: this.#options.extraTags,
      clusterId: this.#options.clusterId,
    });
  }

  CreateSnapshot(req: CreateSnapshotRequest, ctx: RpcContext) {
    return this.#snapshots.CreateSnapshot(req, ctx);
  }

  DeleteSnapshot(req: DeleteSnapshotRequest, ctx: RpcContext) {
    return this.#snapshots.DeleteSnapshot(req, ctx);
  }

  ListSnapshots(req: ListSnapshotsRequest) {
    return this.#snapshots.ListSnapshots(req);
  }

  GetSnapshot(req: GetSnapshotRequest) {
    return this.#snapshots.GetSnapshot(req);
  }

  async ControllerGetCapabilities(): Promise<ControllerGetCapabilitiesResponse> {
    const types = [
      "CREATE_DELETE_VOLUME",
      "PUBLISH_UNPUBLISH_VOLUME",
      "LIST_VOLUMES",
      "LIST_VOLUMES_PUBLISHED_NODES",
      "EXPAND_VOLUME",
      "GET_VOLUME",
      "GET_VOLUME_HEALTH",
      "LIST_VOLUME_HEALTH",
      "MODIFY_VOLUME",
      "CREATE_DELETE_SNAPSHOT",
      "LIST_SNAPSHOTS",
      "GET_SNAPSHOT",
      "CLONE_VOLUME",
    ] as const;
    return { capabilities: types.map((type) => ({ rpc: { type } })) };
  }

  async CreateVolume(req: CreateVolumeRequest, ctx: RpcContext): Promise<CreateVolumeResponse> {
    const name = requireString(req.name, "name");
    const capabilities = checkCapabilities(req.volume_capabilities, "volume_capabilities", CAPABILITY_RULES);
    const range = checkCapacityRange(req.capacity_range);
    const parameters = checkMap(req.parameters, "parameters");
    const mutable = checkMap(req.mutable_parameters, "mutable_parameters");
    checkMap(req.secrets, "secrets");
    const source = contentSource(req.volume_content_source);
    const snapshotId = source?.kind === "snapshot" ? source.id : undefined;
    const sourceVolumeId = source?.kind === "volume" ? source.id : undefined;
    const [existing, snapshot, sourceDisk] = await Promise.all([
      this.#findByName(name).catch((err) => mapCloudError(err, `looking up volume ${name}`)),
      snapshotId ? this.#snapshots.readySnapshot(snapshotId) : undefined,
      sourceVolumeId ? this.#getDisk(sourceVolumeId) : undefined,
    ]);
    // A retry after the source was deleted still finds the volume made from it.
    if (snapshotId && !snapshot && existing?.snapshotId !== snapshotId) {
      throw notFound(`volume_content_source.snapshot: no snapshot ${snapshotId}`);
    }
    if (sourceVolumeId && !sourceDisk && existing?.sourceVolumeId !== sourceVolumeId) {
      throw notFound(`volume_content_source.volume: no volume ${sourceVolumeId}`);
    }
    const origin = snapshot
      ? { what: `snapshot ${snapshot.id}`, sizeGiB: snapshot.sizeGiB }
      : sourceDisk
        ? { what: `volume ${sourceDisk.id}`, sizeGiB: sourceDisk.sizeGiB }
        : undefined;
    const requiredBytes = sourcedSize(range, origin, existing);
    const mountCapability = capabilities.find((c) => !c.block && c.fsType !== "");
    const parsed = parseCreateParameters(parameters, {
      name,
      requiredBytes,
      limitBytes: range.limitBytes,
      fromSnapshot: snapshotId !== undefined,
      extraTags: this.#options.extraTags,
      clusterId: this.#options.clusterId,
      fsType: mountCapability?.fsType,
      block: capabilities.every((c) => c.block),
      mutableParameters: mutable,
    });
    // As the official driver does: a multi-node capability is what turns multi-attach on.
    const multiAttach = checkMultiAttach(capabilities, parsed.disk.type, undefined);
    const spec = multiAttach ? { ...parsed.disk, multiAttach } : parsed.disk;
    let zones = await this.#candidateZones(req.accessibility_requirements);
    if (sourceDisk) {
      checkCloneEncryption(sourceDisk, parameters, spec);
      // EC2 copies a volume within its zone only.
      if (!zones.includes(sourceDisk.zone)) {
        throw resourceExhausted(
          `volume_content_source.volume: ${sourceDisk.id} is in ${sourceDisk.zone}, outside the requested topology (${zones.join(", ")}); a clone stays in its source's zone`,
        );
      }
      zones = [sourceDisk.zone];
    }

    let disk: Disk;
    if (existing) {
      const mismatch =
        existing.snapshotId !== snapshotId
          ? existing.snapshotId
            ? `content from snapshot ${existing.snapshotId}`
            : "no snapshot as its content"
          : existing.sourceVolumeId !== sourceVolumeId
            ? `content from ${existing.sourceVolumeId ? `volume ${existing.sourceVolumeId}` : "no volume"}`
            : describeMismatch(
                existing,
                sourceDisk ? { ...spec, encrypted: sourceDisk.encrypted } : spec,
                zones,
              );
      if (mismatch) throw alreadyExists(`name "${name}": volume ${existing.id} exists with ${mismatch}`);
      disk = existing;
    } else {
      const zone = zones[0]!;
      const clientToken = clientTokenFor(name, this.#tokenGenerations.get(name));
      if (sourceVolumeId) {
        ctx.log.info(
          { name, source: sourceVolumeId, sizeGiB: spec.sizeGiB, type: spec.type },
          "copying volume",
        );
        const { encrypted: _inherited, kmsKeyId: _key, ...copy } = spec;
        disk = await this.#ec2
          .copyVolume({ ...copy, sourceVolumeId, clientToken })
          .catch((err) => mapCloudError(err, `copying volume ${sourceVolumeId} as ${name}`));
      } else {
        ctx.log.info({ name, zone, sizeGiB: spec.sizeGiB, type: spec.type }, "creating volume");
        disk = await this.#ec2
          .createVolume({ ...spec, clientToken, zone, ...(snapshotId ? { snapshotId } : {}) })
          .catch((err) => mapCloudError(err, `creating volume ${name}`));
      }
    }
    disk = await this.#waitAvailable(disk, name, ctx);
    const volume = toCsiVolume(disk, parsed.volumeContext);
    const contentSourceEcho = snapshotId
      ? { snapshot: { snapshot_id: snapshotId } }
      : sourceVolumeId
        ? { volume: { volume_id: sourceVolumeId } }
        : undefined;
    return { volume: contentSourceEcho ? { ...volume, content_source: contentSourceEcho } : volume };
  }

  async DeleteVolume(req: DeleteVolumeRequest, ctx: RpcContext): Promise<DeleteVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    checkMap(req.secrets, "secrets");
    if (!VOLUME_ID.test(volumeId)) return {};
    // A deletion logs one line, the call's "done" (which names the volume); one more per volume
    // was about 2% of a controller's CPU in a burst of deletes.
    try {
      await this.#ec2.deleteVolume(volumeId);
      this.#devices.releaseEverywhere(volumeId);
    } catch (err) {
      if (isCloudError(err, "NotFound")) {
        ctx.log.info({ volumeId }, "volume already gone");
        return {};
      }
      if (isCloudError(err, "InUse"))
        throw failedPrecondition(`volume_id ${volumeId}: volume is attached: ${err.message}`);
      mapCloudError(err, `deleting volume ${volumeId}`);
    }
    return {};
  }

  async ControllerPublishVolume(
    req: ControllerPublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<ControllerPublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const nodeId = requireString(req.node_id, "node_id");
    const capability = checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES);
    checkMap(req.volume_context, "volume_context");
    checkMap(req.secrets, "secrets");
    if (!VOLUME_ID.test(volumeId)) throw notFound(`volume_id ${volumeId}: no such volume`);
    if (!INSTANCE_ID.test(nodeId)) throw notFound(`node_id ${nodeId}: no such instance`);

    const [disk, instance] = await Promise.all([this.#getDisk(volumeId), this.#getInstance(nodeId)]);
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);
    if (!instance) throw notFound(`node_id ${nodeId}: no such instance`);
    const multiNode = MULTI_NODE_MODES.includes(capability.mode);
    if (multiNode && !disk.multiAttach) {
      throw failedPrecondition(
        `volume_id ${volumeId}: ${capability.mode} needs a multi-attach io1/io2 volume`,
      );
    }

    const mine = disk.attachments.find((a) => a.instanceId === nodeId && a.state !== "detached");
    if (mine?.state === "attached") return { publish_context: { devicePath: mine.device } };
    const others = disk.attachments.filter((a) => a.instanceId !== nodeId && a.state !== "detached");
    if (others.length > 0 && !disk.multiAttach) {
      throw failedPrecondition(
        `volume_id ${volumeId}: attached to ${others.map((a) => a.instanceId).join(", ")}`,
      );
    }
    if (disk.zone !== instance.zone) {
      throw failedPrecondition(
        `volume_id ${volumeId}: volume is in ${disk.zone}, node ${nodeId} in ${instance.zone}`,
      );
    }

    // A detach from this node still under way finishes first; then the volume attaches afresh.
    if (mine?.state === "detaching") await this.#waitAttachment(volumeId, nodeId, "detached", ctx);
    const attaching = mine && mine.state !== "detaching" ? mine : undefined;
    const device = attaching?.device ?? (await this.#attach(disk, instance, ctx));
    await this.#waitAttachment(volumeId, nodeId, "attached", ctx);
    return { publish_context: { devicePath: device } };
  }

  async ControllerUnpublishVolume(
    req: ControllerUnpublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<ControllerUnpublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    // node_id may be empty: then the volume is unpublished from every node.
    const nodeId = req.node_id ?? "";
    checkString(nodeId, "node_id");
    checkMap(req.secrets, "secrets");
    if (!VOLUME_ID.test(volumeId) || (nodeId !== "" && !INSTANCE_ID.test(nodeId))) return {};
    const disk = await this.#getDisk(volumeId);
    const targets = (disk?.attachments ?? []).filter(
      (a) => (nodeId === "" || a.instanceId === nodeId) && a.state !== "detached",
    );
    const reason = req.reason || "UNKNOWN";
    this.#options.unpublishReasons?.inc({ reason });
    for (const attachment of targets) {
      const instanceId = attachment.instanceId;
      if (attachment.state !== "detaching") {
        ctx.log.info({ volumeId, nodeId: instanceId, device: attachment.device, reason }, "detaching");
        await this.#detach(volumeId, instanceId, false);
      }
      // Only a CO that declared the node out of service may have it forced: the instance may still write.
      if (reason === "NODE_OUT_OF_SERVICE") await this.#waitDetachedOrForce(volumeId, instanceId, ctx);
      else await this.#waitAttachment(volumeId, instanceId, "detached", ctx);
    }
    // Also when an earlier call did the detach and this retry found nothing left to do.
    if (nodeId === "") this.#devices.releaseEverywhere(volumeId);
    else this.#devices.release(nodeId, volumeId);
    return {};
  }

  /**
   * Not advertised (GET_NODE_INFO): csi-sanity v5.6.0 is built on CSI 1.13 and fails any capability it
   * does not know. Reports every volume EC2 has attached, root and launch volumes included, and the
   * type's whole limit: the spec makes max_volumes_per_node the limit on that union.
   */
  async ControllerGetNodeInfo(req: ControllerGetNodeInfoRequest): Promise<ControllerGetNodeInfoResponse> {
    const nodeId = requireString(req.node_id, "node_id");
    // As ControllerPublishVolume: an id that cannot be an instance names no instance.
    if (!INSTANCE_ID.test(nodeId)) throw notFound(`node_id ${nodeId}: no such instance`);
    const instance = await this.#getInstance(nodeId);
    if (!instance) throw notFound(`node_id ${nodeId}: no such instance`);
    const info =
      (await this.#ec2.getInstanceTypeEbsInfo(instance.type).catch(() => undefined)) ??
      attachLimitFromTable(instance.type);
    const volumeIds = [...new Set(instance.devices.values())].sort();
    return {
      max_volumes_per_node: volumesPerNode(info, {
        networkInterfaces: instance.networkInterfaces,
        reservedVolumes: 0,
      }),
      accessible_topology: zoneTopology(instance.zone),
      published_volumes: volumeIds.map((volume_id) => ({ volume_id })),
    };
  }

  async ValidateVolumeCapabilities(
    req: ValidateVolumeCapabilitiesRequest,
  ): Promise<ValidateVolumeCapabilitiesResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    if (!req.volume_capabilities || req.volume_capabilities.length === 0) {
      throw invalidArgument("volume_capabilities", "at least one capability is required");
    }
    checkMap(req.volume_context, "volume_context");
    checkMap(req.parameters, "parameters");
    checkMap(req.mutable_parameters, "mutable_parameters");
    checkMap(req.secrets, "secrets");
    req.volume_capabilities.forEach((cap, i) => {
      checkCapabilityShape(cap, `volume_capabilities[${i}]`);
    });
    const disk = VOLUME_ID.test(volumeId) ? await this.#getDisk(volumeId) : undefined;
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);
    try {
      const caps = checkCapabilities(req.volume_capabilities, "volume_capabilities", CAPABILITY_RULES);
      checkMultiAttach(caps, disk.type, disk.multiAttach);
    } catch (err) {
      if (err instanceof CsiError && err.code === status.INVALID_ARGUMENT) return { message: err.message };
      throw err;
    }
    return {
      confirmed: {
        volume_context: req.volume_context,
        volume_capabilities: req.volume_capabilities,
        parameters: req.parameters,
        mutable_parameters: req.mutable_parameters,
      },
    };
  }

  async ListVolumes(req: ListVolumesRequest): Promise<ListVolumesResponse> {
    const page = await this.#listPage(req);
    return {
      entries: page.disks.map((disk) => ({ volume: toCsiVolume(disk, {}), status: volumeStatus(disk) })),
      next_token: page.nextToken ?? "",
    };
  }

  /** One EC2 page of the driver's volumes, for ListVolumes and ControllerListVolumeHealth. */
  async #listPage(req: { max_entries?: number; starting_token?: string }) {
    const max = Number(req.max_entries ?? 0);
    if (max < 0) throw invalidArgument("max_entries", "must not be negative");
    const token = req.starting_token || undefined;
    try {
      return await this.#ec2.listVolumesWithTag(VOLUME_NAME_TAG, max > 0 ? Math.min(max, 1000) : 1000, token);
    } catch (err) {
      if (token && isCloudError(err, "InvalidParameter"))
        throw aborted(`starting_token "${token}" is not valid`);
      return mapCloudError(err, "listing volumes");
    }
  }

  async ControllerGetVolume(req: ControllerGetVolumeRequest): Promise<ControllerGetVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const disk = VOLUME_ID.test(volumeId) ? await this.#getDisk(volumeId) : undefined;
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);
    return { volume: toCsiVolume(disk, {}), status: volumeStatus(disk) };
  }

  /** The volume's health from its EC2 state and EC2's status checks (see volumeHealth). */
  async ControllerGetVolumeHealth(
    req: ControllerGetVolumeHealthRequest,
  ): Promise<ControllerGetVolumeHealthResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    checkMap(req.secrets, "secrets");
    if (!VOLUME_ID.test(volumeId)) throw notFound(`volume_id ${volumeId}: no such volume`);
    const [disk, statuses] = await Promise.all([
      this.#getDisk(volumeId),
      this.#statusChecks([volumeId], `reading the status checks of ${volumeId}`),
    ]);
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);
    return { volume_health: volumeHealth(disk, statuses.get(volumeId)) };
  }

  /**
   * The driver's volumes with an adverse condition, one EC2 page (of at most max_entries volumes)
   * per call: a page may hold none and still carry a next_token, which the spec allows. A page
   * costs its DescribeVolumes calls and one DescribeVolumeStatus per 500 volumes.
   */
  async ControllerListVolumeHealth(
    req: ControllerListVolumeHealthRequest,
  ): Promise<ControllerListVolumeHealthResponse> {
    checkMap(req.secrets, "secrets");
    const page = await this.#listPage(req);
    const statuses = await this.#statusChecks(
      page.disks.map((d) => d.id),
      "reading volume status checks",
    );
    return {
      entries: page.disks
        .map((disk) => volumeHealth(disk, statuses.get(disk.id)))
        .filter((h) => h.health_statuses.length > 0),
      next_token: page.nextToken ?? "",
    };
  }

  /**
   * EC2's status checks of the volumes. AWS's managed policy for the official driver
   * (AmazonEBSCSIDriverPolicy) does not allow DescribeVolumeStatus: without it, health comes from
   * the volume state alone, and the missing permission is logged once, not failed on every call.
   */
  async #statusChecks(ids: string[], what: string): Promise<Map<string, DiskStatus>> {
    try {
      return await this.#ec2.getVolumeStatuses(ids);
    } catch (err) {
      if (!isCloudError(err, "Unauthorized")) return mapCloudError(err, what);
      if (!this.#statusChecksDenied) {
        this.#statusChecksDenied = true;
        this.#log.warn(
          { err: err.message },
          "ec2:DescribeVolumeStatus is not allowed: volume health comes from the volume state only; grant it for I/O and data-consistency checks",
        );
      }
      return new Map();
    }
  }

  async ControllerExpandVolume(
    req: ControllerExpandVolumeRequest,
    ctx: RpcContext,
  ): Promise<ControllerExpandVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    if (!req.capacity_range) throw invalidArgument("capacity_range", "required");
    const range = checkCapacityRange(req.capacity_range);
    if (range.requiredBytes === 0) throw invalidArgument("capacity_range.required_bytes", "required");
    checkMap(req.secrets, "secrets");
    const block = req.volume_capability
      ? checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES).block
      : false;
    const disk = VOLUME_ID.test(volumeId) ? await this.#getDisk(volumeId) : undefined;
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);

    const sizeGiB = Math.ceil(range.requiredBytes / GiB);
    const limits = VOLUME_LIMITS[disk.type];
    if (range.limitBytes > 0 && sizeGiB * GiB > range.limitBytes) {
      throw outOfRange(
        `capacity_range: ${sizeGiB} GiB (required_bytes rounded up to GiB) exceeds limit_bytes ${range.limitBytes}`,
      );
    }
    if (sizeGiB > limits.maxSizeGiB) {
      throw outOfRange(
        `capacity_range.required_bytes: ${sizeGiB} GiB is above the ${disk.type} maximum of ${limits.maxSizeGiB} GiB`,
      );
    }
    if (sizeGiB > disk.sizeGiB) {
      await this.#modify(volumeId, { sizeGiB }, ctx);
      await this.#waitModified(volumeId, (d) => d.sizeGiB >= sizeGiB, ctx);
    }
    return { capacity_bytes: Math.max(sizeGiB, disk.sizeGiB) * GiB, node_expansion_required: !block };
  }

  async ControllerModifyVolume(
    req: ControllerModifyVolumeRequest,
    ctx: RpcContext,
  ): Promise<ControllerModifyVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const mutable = checkMap(req.mutable_parameters, "mutable_parameters");
    checkMap(req.secrets, "secrets");
    const disk = VOLUME_ID.test(volumeId) ? await this.#getDisk(volumeId) : undefined;
    if (!disk) throw notFound(`volume_id ${volumeId}: no such volume`);
    const { modify, tags } = parseModifyParameters(mutable, { sizeGiB: disk.sizeGiB, type: disk.type });
    // What the volume already has is not asked again: a retry finds its change made or under way.
    const wanted: ModifyDiskInput = {
      ...(modify.type !== undefined && modify.type !== disk.type && { type: modify.type }),
      ...(modify.iops !== undefined && modify.iops !== disk.iops && { iops: modify.iops }),
      ...(modify.throughput !== undefined &&
        modify.throughput !== disk.throughput && { throughput: modify.throughput }),
    };
    if (Object.keys(wanted).length > 0) {
      await this.#modify(volumeId, wanted, ctx);
      await this.#waitModified(volumeId, () => true, ctx);
    }
    // Tags last: when EC2 refuses the change, nothing of it is applied.
    if (Object.keys(tags).length > 0) {
      await this.#ec2
        .tagVolume(volumeId, tags)
        .catch((err) => mapCloudError(err, `tagging volume ${volumeId}`));
    }
    return {};
  }

  // --- helpers: each does one thing the RPCs above share ---

  /**
   * Starts a modification unless one with these targets is already under way (EC2 refuses a
   * second modification while one runs, and a retried call must find its own).
   */
  async #modify(volumeId: string, wanted: ModifyDiskInput, ctx: RpcContext): Promise<void> {
    const current = await this.#ec2
      .getModification(volumeId)
      .catch((err) => mapCloudError(err, `describing modifications of ${volumeId}`));
    const running = current?.state === "modifying" || current?.state === "optimizing";
    const same =
      running &&
      (wanted.sizeGiB === undefined || (current.targetSizeGiB ?? 0) >= wanted.sizeGiB) &&
      (wanted.type === undefined || current.targetType === wanted.type) &&
      (wanted.iops === undefined || current.targetIops === wanted.iops) &&
      (wanted.throughput === undefined || current.targetThroughput === wanted.throughput);
    if (same) return;
    ctx.log.info({ volumeId, changes: wanted }, "modifying volume");
    await this.#ec2
      .modifyVolume(volumeId, wanted)
      .catch((err) => mapCloudError(err, `modifying volume ${volumeId}`));
  }

  async #getDisk(volumeId: string): Promise<Disk | undefined> {
    const found = await this.#ec2
      .getVolumes([volumeId])
      .catch((err) => mapCloudError(err, `describing volume ${volumeId}`));
    return found.get(volumeId);
  }

  async #getInstance(instanceId: string): Promise<Instance | undefined> {
    const found = await this.#ec2
      .getInstances([instanceId])
      .catch((err) => mapCloudError(err, `describing instance ${instanceId}`));
    const instance = found.get(instanceId);
    return instance && instance.state !== "terminated" ? instance : undefined;
  }

  async #findByName(name: string): Promise<Disk | undefined> {
    const disks = (await this.#ec2.findVolumesByTag(VOLUME_NAME_TAG, name)).filter(
      (d) => d.state !== "deleting" && d.state !== "deleted",
    );
    if (disks.length > 1) {
      this.#log.warn(
        { name, volumes: disks.map((d) => d.id) },
        "several volumes carry one name: using the oldest id",
      );
    }
    return disks.sort((a, b) => a.id.localeCompare(b.id))[0];
  }

  /** Zones to create in: preferred first, then the rest of requisite; all zones when unconstrained. */
  async #candidateZones(req: TopologyRequirement | null): Promise<string[]> {
    const zonesOf = (list: { segments?: Record<string, string> }[] | undefined, field: string) =>
      (list ?? []).map((t, i) => {
        const segments = t.segments ?? {};
        const zone = ZONE_KEYS.map((k) => segments[k]).find((z) => z);
        if (!zone)
          throw invalidArgument(
            `accessibility_requirements.${field}[${i}]`,
            `needs one of ${ZONE_KEYS.join(", ")}`,
          );
        return zone;
      });
    const requisite = zonesOf(req?.requisite, "requisite");
    const preferred = zonesOf(req?.preferred, "preferred");
    const ordered = [...new Set([...preferred, ...requisite])].filter(
      (z) => requisite.length === 0 || requisite.includes(z),
    );
    if (ordered.length > 0) return ordered;
    if (requisite.length > 0)
      throw resourceExhausted("accessibility_requirements: no zone satisfies both lists");
    const zones = await this.#ec2.getZones().catch((err) => mapCloudError(err, "listing availability zones"));
    if (zones.length === 0) throw resourceExhausted("no availability zone is available in this region");
    // Only a caller without topology gets here (external-provisioner always sends it): the first
    // zone, so that such callers find their volumes where a node of that zone can attach them.
    return zones;
  }

  async #waitAvailable(disk: Disk, name: string, ctx: RpcContext): Promise<Disk> {
    if (disk.state === "available" || disk.state === "in-use") return disk;
    return waitUntil(
      `volume ${disk.id} to become available`,
      async () => {
        const current = await this.#getDisk(disk.id);
        if (!current) throw internal(`volume ${disk.id} disappeared while it was being created`);
        if (current.state === "error") {
          // EC2 gives up on volumes it cannot create (e.g. a KMS key it may not use): don't leak them.
          await this.#ec2.deleteVolume(disk.id).catch(() => undefined);
          // EC2 would answer the old token with the deleted volume: the retry needs a new one.
          this.#tokenGenerations.set(name, (this.#tokenGenerations.get(name) ?? 0) + 1);
          throw internal(
            `volume ${disk.id} went to state "error" (check kmsKeyId and quotas); it was deleted`,
          );
        }
        return current.state === "available" || current.state === "in-use" ? current : undefined;
      },
      { ...this.#options.createWait, signal: ctx.signal },
    ).catch((err) => mapCloudError(err, `waiting for volume ${disk.id}`));
  }

  async #attach(disk: Disk, instance: Instance, ctx: RpcContext): Promise<string> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const inUse = instance.devices.keys();
      const device = this.#devices.allocate(instance.id, inUse, disk.id);
      if (!device) throw resourceExhausted(`node_id ${instance.id}: no free device name left`);
      const limit = await this.#attachLimit(instance);
      if (limit !== undefined && this.#devices.countInUse(instance.id, instance.devices.keys()) > limit) {
        this.#devices.release(instance.id, disk.id);
        throw resourceExhausted(
          `node_id ${instance.id}: ${instance.type} has no attachment left (limit ${limit})`,
        );
      }
      ctx.log.info({ volumeId: disk.id, nodeId: instance.id, device }, "attaching");
      try {
        await this.#ec2.attachVolume(disk.id, instance.id, device);
        return device;
      } catch (err) {
        this.#devices.release(instance.id, disk.id);
        if (isCloudError(err, "InvalidParameter") && err.message.includes("already in use")) {
          this.#devices.markForeign(instance.id, device);
          continue;
        }
        mapCloudError(err, `attaching volume ${disk.id} to ${instance.id}`);
      }
    }
    throw resourceExhausted(`node_id ${instance.id}: EC2 refused three device names in a row`);
  }

  /**
   * Attachments the instance can take, root volume included, as NodeGetInfo reports them: a shared
   * limit also counts the network interfaces.
   */
  async #attachLimit(instance: Instance): Promise<number | undefined> {
    const info = await this.#ec2.getInstanceTypeEbsInfo(instance.type).catch(() => undefined);
    if (!info) return undefined;
    return info.maxAttachments - (info.limitType === "dedicated" ? 0 : instance.networkInterfaces);
  }

  async #detach(volumeId: string, instanceId: string, force: boolean): Promise<void> {
    await this.#ec2.detachVolume(volumeId, instanceId, { force }).catch((err) => {
      if (isCloudError(err, "NotFound")) return;
      mapCloudError(err, `detaching volume ${volumeId} from ${instanceId}`);
    });
  }

  /** Waits forceDetachAfterMs for the detach, then forces it and waits for that as usual. */
  async #waitDetachedOrForce(volumeId: string, instanceId: string, ctx: RpcContext): Promise<void> {
    const key = `${volumeId}/${instanceId}`;
    const started = this.#detachStarted.get(key) ?? Date.now();
    this.#detachStarted.set(key, started);
    const bound = Math.min(this.#options.forceDetachAfterMs, this.#options.attachWait.timeoutMs);
    const within = Math.max(0, started + bound - Date.now());
    try {
      await waitUntil(
        `volume ${volumeId} to be detached from ${instanceId}`,
        async () => ((await this.#attachmentState(volumeId, instanceId)) === "detached" ? true : undefined),
        { ...this.#options.attachWait, timeoutMs: within, signal: ctx.signal },
      );
      this.#detachStarted.delete(key);
      return;
    } catch (err) {
      if (!(err instanceof WaitTimeoutError)) mapCloudError(err, `waiting for volume ${volumeId}`);
    }
    ctx.log.warn({ volumeId, nodeId: instanceId, afterMs: within }, "node out of service: forcing detach");
    await this.#detach(volumeId, instanceId, true);
    await this.#waitAttachment(volumeId, instanceId, "detached", ctx);
    this.#detachStarted.delete(key);
  }

  async #attachmentState(volumeId: string, instanceId: string): Promise<string> {
    const disk = await this.#getDisk(volumeId);
    return disk?.attachments.find((a) => a.instanceId === instanceId)?.state ?? "detached";
  }

  async #waitAttachment(
    volumeId: string,
    instanceId: string,
    want: "attached" | "detached",
    ctx: RpcContext,
  ) {
    await waitUntil(
      `volume ${volumeId} to be ${want} ${want === "attached" ? "to" : "from"} ${instanceId}`,
      async () => {
        const disk = await this.#getDisk(volumeId);
        const attachment = disk?.attachments.find((a) => a.instanceId === instanceId);
        const state = attachment?.state ?? "detached";
        if (want === "attached" && !disk)
          throw notFound(`volume_id ${volumeId}: volume disappeared while attaching`);
        if (want === "attached" && state === "detached") {
          throw internal(`volume ${volumeId} did not attach to ${instanceId}`);
        }
        return state === want ? true : undefined;
      },
      { ...this.#options.attachWait, signal: ctx.signal },
    ).catch((err) => mapCloudError(err, `waiting for volume ${volumeId}`));
  }

  /** Waits until EC2 reports the modification usable (optimizing or completed) and `done` holds. */
  async #waitModified(volumeId: string, done: (disk: Disk) => boolean, ctx: RpcContext): Promise<void> {
    await waitUntil(
      `volume ${volumeId} modification`,
      async () => {
        const modification = await this.#ec2.getModification(volumeId);
        if (modification?.state === "failed") throw internal(`EC2 could not modify volume ${volumeId}`);
        if (modification && modification.state === "modifying") return undefined;
        const disk = await this.#getDisk(volumeId);
        if (!disk) throw notFound(`volume_id ${volumeId}: volume disappeared while being modified`);
        return done(disk) ? true : undefined;
      },
      { ...this.#options.attachWait, signal: ctx.signal },
    ).catch((err) => mapCloudError(err, `waiting for volume ${volumeId}`));
  }
}

/**
 * Whether the capabilities need EBS multi-attach: only raw block (no filesystem survives two
 * writers) on a type that allows it. For an existing volume, `enabled` says whether it has it.
 */
function checkMultiAttach(
  caps: CheckedCapability[],
  type: VolumeType,
  enabled: boolean | undefined,
): boolean {
  let needed = false;
  caps.forEach((cap, i) => {
    if (!MULTI_NODE_MODES.includes(cap.mode)) return;
    const field = `volume_capabilities[${i}]`;
    if (!cap.block) throw invalidArgument(field, `${cap.mode} is only supported for raw block volumes`);
    if (!VOLUME_LIMITS[type].multiAttach) {
      throw invalidArgument(field, `${cap.mode} needs a type with multi-attach (io1 or io2), not ${type}`);
    }
    if (enabled === false)
      throw invalidArgument(field, `${cap.mode}: this volume was created without multi-attach`);
    needed = true;
  });
  return needed;
}

/** Why an existing volume of the same name does not match the request, or undefined when it does. */
/** What a CreateVolume starts from: a snapshot (restore), a volume (clone), or nothing. */
function contentSource(
  source: CreateVolumeRequest["volume_content_source"],
): { kind: "snapshot" | "volume"; id: string } | undefined {
  if (!source) return undefined;
  if (source.volume) {
    const id = source.volume.volume_id ?? "";
    if (id === "") throw invalidArgument("volume_content_source.volume.volume_id", "required");
    if (!VOLUME_ID.test(id)) throw notFound(`volume_content_source.volume: no volume ${id}`);
    return { kind: "volume", id };
  }
  const id = source.snapshot?.snapshot_id ?? "";
  if (!source.snapshot)
    throw invalidArgument("volume_content_source", "names neither a snapshot nor a volume");
  if (id === "") throw invalidArgument("volume_content_source.snapshot.snapshot_id", "required");
  if (!SNAPSHOT_ID.test(id)) throw notFound(`volume_content_source.snapshot: no snapshot ${id}`);
  return { kind: "snapshot", id };
}

/**
 * The size to ask for: a volume made from a snapshot or a volume holds at least its source
 * (OUT_OF_RANGE when the range does not allow that), and without required_bytes it is the source's size.
 */
function sourcedSize(
  range: { requiredBytes: number; limitBytes: number },
  origin: { what: string; sizeGiB: number } | undefined,
  existing: Disk | undefined,
): number {
  if (!origin) {
    const fromSource = existing?.snapshotId || existing?.sourceVolumeId;
    return range.requiredBytes || (fromSource ? existing.sizeGiB * GiB : 0);
  }
  const bytes = origin.sizeGiB * GiB;
  const what = `${origin.what} of ${origin.sizeGiB} GiB: a volume made from it is at least as large`;
  if (range.requiredBytes > 0 && range.requiredBytes < bytes) {
    throw outOfRange(`capacity_range.required_bytes ${range.requiredBytes} is below ${what}`);
  }
  if (range.limitBytes > 0 && range.limitBytes < bytes) {
    throw outOfRange(`capacity_range.limit_bytes ${range.limitBytes} is below ${what}`);
  }
  return range.requiredBytes || bytes;
}

/** A copy keeps its source's encryption and key (EC2 CopyVolumes): a class asking otherwise is refused. */
function checkCloneEncryption(
  source: Disk,
  parameters: Record<string, string>,
  spec: { encrypted: boolean; kmsKeyId?: string },
): void {
  const said = Object.entries(parameters)
    .find(([k]) => k.toLowerCase() === "encrypted")?.[1]
    ?.trim()
    .toLowerCase();
  if (source.encrypted && said === "false") {
    throw invalidArgument("parameters.encrypted", `volume ${source.id} is encrypted: its clone is too`);
  }
  if (!source.encrypted && spec.encrypted) {
    throw invalidArgument(
      "parameters.encrypted",
      `volume ${source.id} is not encrypted, and a clone keeps its source's encryption`,
    );
  }
  if (spec.kmsKeyId && source.kmsKeyId && spec.kmsKeyId !== source.kmsKeyId) {
    throw invalidArgument(
      "parameters.kmsKeyId",
      `volume ${source.id} is encrypted with ${source.kmsKeyId}, and a clone keeps its source's key`,
    );
  }
}

function describeMismatch(
  disk: Disk,
  spec: {
    sizeGiB: number;
    type: string;
    iops?: number;
    throughput?: number;
    encrypted: boolean;
    kmsKeyId?: string;
    multiAttach?: boolean;
  },
  zones: string[],
): string | undefined {
  if (disk.sizeGiB !== spec.sizeGiB) return `size ${disk.sizeGiB} GiB, not ${spec.sizeGiB} GiB`;
  if (disk.type !== spec.type) return `type ${disk.type}, not ${spec.type}`;
  if (spec.iops !== undefined && disk.iops !== spec.iops) return `${disk.iops} IOPS, not ${spec.iops}`;
  if (spec.throughput !== undefined && disk.throughput !== spec.throughput) {
    return `throughput ${disk.throughput} MiB/s, not ${spec.throughput}`;
  }
  if (spec.multiAttach && !disk.multiAttach) return "multi-attach off";
  // Unencrypted is not asked for explicitly: an account that encrypts by default encrypts anyway.
  if (spec.encrypted && !disk.encrypted) return "encryption off";
  if (spec.kmsKeyId && disk.kmsKeyId && disk.kmsKeyId !== spec.kmsKeyId) return `KMS key ${disk.kmsKeyId}`;
  if (!zones.includes(disk.zone))
    return `zone ${disk.zone}, outside the requested topology (${zones.join(", ")})`;
  return undefined;
}

function toCsiVolume(disk: Disk, volumeContext: Record<string, string>): Volume {
  return {
    volume_id: disk.id,
    capacity_bytes: disk.sizeGiB * GiB,
    volume_context: volumeContext,
    accessible_topology: [zoneTopology(disk.zone)],
  };
}

type HealthEntry = { status: "DEGRADED" | "INACCESSIBLE" | "DATA_LOSS"; reason: string; message: string };

/**
 * The volume as EC2 sees it, from its state and its status checks:
 * - state "error": in EC2's words "the underlying hardware related to your EBS volume has failed,
 *   and the data associated with the volume is unrecoverable": INACCESSIBLE and DATA_LOSS.
 * - io-enabled "failed": EC2 disabled the volume's I/O because its data may be inconsistent; no
 *   node can read or write it until someone checks it and calls EnableVolumeIO: INACCESSIBLE.
 * - event potential-data-inconsistency: DATA_LOSS, the signal to check the filesystem or restore
 *   from a snapshot, which is what AWS asks of the owner.
 * - io-performance degraded or severely-degraded (Provisioned IOPS volumes): DEGRADED; stalled:
 *   I/O does not progress at all, INACCESSIBLE.
 * "insufficient-data" is no condition: EC2 has not finished its checks, nothing is known to be wrong.
 */
function volumeHealth(disk: Disk, checks?: DiskStatus) {
  const entries: HealthEntry[] = [];
  const add = (entry: HealthEntry) => {
    // The spec forbids two entries with the same (status, reason).
    if (!entries.some((e) => e.status === entry.status && e.reason === entry.reason)) entries.push(entry);
  };
  if (disk.state === "error") {
    const message = `EC2 reports volume ${disk.id} in state "error": its hardware failed, its data is unrecoverable`;
    add({ status: "INACCESSIBLE", reason: "VolumeError", message });
    add({ status: "DATA_LOSS", reason: "VolumeError", message });
  }
  const described = (type: string) =>
    checks?.events.find((e) => e.type === type && e.description)?.description ?? "";
  if (checks?.ioEnabled === "failed") {
    const why = described("potential-data-inconsistency");
    add({
      status: "INACCESSIBLE",
      reason: "IoDisabled",
      message:
        `EC2 disabled I/O on volume ${disk.id}${why ? ` (${why})` : ""}; ` +
        "check its data, then enable I/O with EnableVolumeIO",
    });
  }
  for (const event of checks?.events ?? []) {
    if (event.type !== "potential-data-inconsistency") continue;
    add({
      status: "DATA_LOSS",
      reason: "PotentialDataInconsistency",
      message: `EC2 reports a potential data inconsistency on volume ${disk.id}${event.description ? `: ${event.description}` : ""}`,
    });
  }
  const performance = checks?.ioPerformance;
  if (performance === "degraded" || performance === "severely-degraded") {
    add({
      status: "DEGRADED",
      reason: performance === "degraded" ? "IoPerformanceDegraded" : "IoPerformanceSeverelyDegraded",
      message: `EC2 reports the I/O performance of volume ${disk.id} ${performance.replace("-", " ")}`,
    });
  } else if (performance === "stalled") {
    add({
      status: "INACCESSIBLE",
      reason: "IoStalled",
      message: `EC2 reports the I/O of volume ${disk.id} stalled`,
    });
  }
  return { volume_id: disk.id, health_statuses: entries };
}

function volumeStatus(disk: Disk) {
  return {
    published_node_ids: disk.attachments
      .filter((a) => a.state === "attached" || a.state === "attaching")
      .map((a) => a.instanceId),
  };
}
