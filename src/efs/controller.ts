/**
 * The EFS Controller service: a dynamically provisioned volume is an access point, created with
 * its own POSIX identity and root directory on a file system the StorageClass names. Each RPC reads
 * validate -> look at existing state (idempotency) -> act -> answer.
 */
import { randomUUID } from "node:crypto";
import { posix } from "node:path";
import {
  aborted,
  alreadyExists,
  CsiError,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  outOfRange,
  permissionDenied,
  resourceExhausted,
  unavailable,
} from "../csi/errors.ts";
import { status } from "../csi/status.ts";
import type {
  CapacityRange,
  ControllerExpandVolumeRequest,
  ControllerExpandVolumeResponse,
  ControllerGetCapabilitiesResponse,
  ControllerGetVolumeHealthRequest,
  ControllerGetVolumeHealthResponse,
  CreateVolumeRequest,
  DeleteVolumeRequest,
  DeleteVolumeResponse,
  ValidateVolumeCapabilitiesRequest,
  ValidateVolumeCapabilitiesResponse,
} from "../csi/types.ts";
import {
  ACCESS_MODES,
  type CapabilityRules,
  checkCapabilities,
  checkCapability,
  checkCapabilityShape,
  checkMap,
  requireString,
} from "../csi/validate.ts";
import type { Logger } from "../log.ts";
import type { RpcContext } from "../server/rpc.ts";
import {
  type AccessPoint,
  type Efs,
  type FileSystem,
  isEfsError,
  type MountTarget,
  mayHaveTakenEffect,
} from "./cloud.ts";
import { type Fresh, FreshCalls } from "./fresh-calls.ts";
import { GidAllocator, type GidReservation } from "./gid.ts";
import { formatVolumeHandle, tryParseVolumeHandle, type VolumeHandle } from "./handle.ts";
import {
  clientTokenFor,
  matchesRootDirectory,
  type ProvisioningParams,
  parseProvisioningParams,
  planRootDirectory,
  type RootDirectoryPlan,
  rootDirectoryPath,
} from "./params.ts";
import { recordedCapacity, TAG_BASE_PATH, TAG_CAPACITY, TAG_CLUSTER } from "./tags.ts";

// What AWS accepts as a tag value.
const TAG_VALUE = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$/u;

/**
 * Deletes a directory of a file system, given as an absolute path from the file system's root.
 * It needs a mount of the file system on the controller: the host layer provides it.
 */
export type DeleteRootDirectory = (fileSystemId: string, path: string) => Promise<void>;

export interface EfsControllerDeps {
  efs: Efs;
  log: Logger;
  extraTags: Record<string, string>;
  /** --delete-access-point-root-dir: DeleteVolume deletes the access point's root directory too. */
  deleteAccessPointRootDir: boolean;
  /** Required with deleteAccessPointRootDir. */
  deleteRootDirectory?: DeleteRootDirectory;
  /** For tests: the UUIDs of unique root directories. */
  newUuid?: () => string;
}

/** Every access mode (EFS is shared storage), mount only; fs_type empty or "efs", as the official driver takes. */
const CAPABILITY_RULES: CapabilityRules = { modes: ACCESS_MODES, block: false, fsTypes: ["efs"] };

/** A CreateVolumeResponse with every field set. */
export interface CreatedVolume {
  volume: {
    volume_id: string;
    capacity_bytes: number;
    volume_context: Record<string, string>;
    accessible_topology: [];
  };
}

export function createEfsController(deps: EfsControllerDeps) {
  const { efs, deleteRootDirectory } = deps;
  if (deps.deleteAccessPointRootDir && !deleteRootDirectory) {
    throw new Error("deleteAccessPointRootDir needs a deleteRootDirectory hook");
  }
  const newUuid = deps.newUuid ?? randomUUID;
  // One listing of a file system's access points serves every CreateVolume that arrived before it
  // started; GIDs of creates it cannot show yet are held by the allocator.
  const listings = new FreshCalls<AccessPoint[]>(async (fileSystemId) => {
    // DescribeFileSystems first: moto lists access points of unknown file systems without an error.
    await efs.describeFileSystem(fileSystemId);
    return efs.listAccessPoints(fileSystemId);
  });
  const gids = new GidAllocator(() => listings.started());

  async function listAccessPoints(fileSystemId: string): Promise<Fresh<AccessPoint[]>> {
    try {
      return await listings.get(fileSystemId);
    } catch (err) {
      if (isEfsError(err, "FileSystemNotFound")) {
        throw invalidArgument("parameter fileSystemId", `file system ${fileSystemId} does not exist`);
      }
      throw toCsiError(err);
    }
  }

  /** The access point an earlier attempt made with this token, from the listing or this process's own creates. */
  function findByToken(
    listing: Fresh<AccessPoint[]>,
    fileSystemId: string,
    token: string,
  ): AccessPoint | undefined {
    const live = (ap: AccessPoint) =>
      ap.clientToken === token && ap.lifeCycleState !== "deleting" && ap.lifeCycleState !== "deleted";
    return listing.value.find(live) ?? gids.unlistedAccessPoints(fileSystemId, listing.seq).find(live);
  }

  async function createVolume(req: CreateVolumeRequest, ctx: RpcContext): Promise<CreatedVolume> {
    const name = requireString(req.name, "name");
    checkMap(req.parameters, "parameters");
    checkMap(req.mutable_parameters, "mutable_parameters");
    checkMap(req.secrets, "secrets");
    checkCapabilities(req.volume_capabilities, "volume_capabilities", CAPABILITY_RULES);
    const capacity = requestedCapacity(req.capacity_range);
    if (req.volume_content_source) {
      throw invalidArgument(
        "volume_content_source",
        "EFS volumes cannot be made from snapshots or other volumes",
      );
    }
    if (Object.keys(req.mutable_parameters).length > 0) {
      throw invalidArgument(
        "mutable_parameters",
        "this driver has no mutable parameters (VolumeAttributesClass)",
      );
    }
    if (req.secrets["awsRoleArn"]) {
      throw invalidArgument(
        "secrets awsRoleArn",
        "cross-account provisioning is not supported by this driver yet",
      );
    }
    const p = parseProvisioningParams(req.parameters, deps.extraTags);
    const plan = planRootDirectory(p, name);
    const token = clientTokenFor(name, p);
    const expected: Expected = { name, p, plan, range: req.capacity_range, capacity };

    const listing = await listAccessPoints(p.fileSystemId);
    const earlier = findByToken(listing, p.fileSystemId, token);
    if (earlier) return answerExisting(earlier, expected);

    // A GID comes from the range only when none is given; the uid defaults to the GID, as in the
    // official driver (a given gid must not take a GID of the range as its uid).
    const reservation = p.gid !== undefined ? undefined : gids.reserve(p.fileSystemId, p.gidRange, listing);
    const gid = p.gid ?? reservation!.gid;
    const uid = p.uid ?? gid;
    const path = rootDirectoryPath(plan, newUuid());
    let created: AccessPoint;
    try {
      created = await efs.createAccessPoint({
        clientToken: token,
        fileSystemId: p.fileSystemId,
        posixUser: { uid, gid },
        rootDirectory: {
          path,
          creationInfo: { ownerUid: uid, ownerGid: gid, permissions: p.directoryPerms },
        },
        tags: p.tagging ? accessPointTags(p, capacity) : {},
      });
    } catch (err) {
      settleReservation(reservation, err);
      if (isEfsError(err, "AccessPointAlreadyExists")) {
        // The token was used before with other arguments: an earlier attempt the listing did not show.
        return answerExisting(
          await findEarlierAttempt(err.accessPointId, p.fileSystemId, token, name),
          expected,
        );
      }
      if (isEfsError(err, "FileSystemNotFound")) {
        throw invalidArgument("parameter fileSystemId", `file system ${p.fileSystemId} does not exist`);
      }
      throw toCsiError(err);
    }
    reservation?.keep(created);
    ctx.log.info(
      { fileSystemId: p.fileSystemId, accessPointId: created.id, uid, gid, path },
      "created access point",
    );
    return { volume: volumeOf(p.fileSystemId, created.id, capacity) };
  }

  async function findEarlierAttempt(
    accessPointId: string | undefined,
    fileSystemId: string,
    token: string,
    name: string,
  ): Promise<AccessPoint> {
    let earlier: AccessPoint | undefined;
    if (accessPointId) {
      try {
        earlier = await efs.describeAccessPoint(accessPointId);
      } catch (err) {
        if (!isEfsError(err, "AccessPointNotFound")) throw toCsiError(err);
      }
    } else {
      earlier = findByToken(await listAccessPoints(fileSystemId), fileSystemId, token);
    }
    if (!earlier) {
      throw aborted(
        `volume ${name}: EFS holds client token ${token} for access point ${accessPointId ?? "(unnamed)"}, ` +
          "which is gone or being deleted; try again later",
      );
    }
    return earlier;
  }

  function accessPointTags(p: ProvisioningParams, capacity: number): Record<string, string> {
    const tags: Record<string, string> = {
      [TAG_CLUSTER]: "true",
      ...deps.extraTags,
      [TAG_CAPACITY]: String(capacity),
    };
    if (TAG_VALUE.test(p.basePath)) tags[TAG_BASE_PATH] = p.basePath;
    return tags;
  }

  async function deleteVolume(req: DeleteVolumeRequest, ctx: RpcContext): Promise<DeleteVolumeResponse> {
    if (!req.volume_id) throw invalidArgument("volume_id", "required");
    const handle = tryParseVolumeHandle(req.volume_id);
    if (!handle) {
      ctx.log.info({ volumeId: req.volume_id }, "not an EFS volume handle: nothing to delete");
      return {};
    }
    if (!handle.accessPointId) {
      ctx.log.info(
        { volumeId: req.volume_id },
        "statically provisioned volume: the file system is left as it is",
      );
      return {};
    }
    const ap = await describeAccessPoint(handle);
    if (!ap) return {};
    // Only directories of access points made by a provisioner (the official driver's or ours):
    // an access point a user made by hand for a static volume points at data that is theirs.
    if (deps.deleteAccessPointRootDir && ap.tags[TAG_CLUSTER] === "true") {
      await deleteRootDirectoryOf(ap, ctx.log);
    } else if (deps.deleteAccessPointRootDir) {
      ctx.log.info(
        { accessPointId: ap.id },
        `root directory kept: the access point has no ${TAG_CLUSTER} tag`,
      );
    }
    try {
      await efs.deleteAccessPoint(ap.id);
    } catch (err) {
      if (isEfsError(err, "AccessPointNotFound")) return {};
      throw toCsiError(err);
    }
    ctx.log.info({ fileSystemId: ap.fileSystemId, accessPointId: ap.id }, "deleted access point");
    return {};
  }

  /** The handle's access point, or undefined when it does not exist (or belongs to another file system). */
  async function describeAccessPoint(handle: VolumeHandle): Promise<AccessPoint | undefined> {
    try {
      const ap = await efs.describeAccessPoint(handle.accessPointId!);
      return ap.fileSystemId === handle.fileSystemId ? ap : undefined;
    } catch (err) {
      if (isEfsError(err, "AccessPointNotFound")) return undefined;
      throw toCsiError(err);
    }
  }

  async function deleteRootDirectoryOf(ap: AccessPoint, log: Logger): Promise<void> {
    const path = posix.resolve("/", ap.rootDirectory.path);
    checkRootDirectoryDeletable(ap, path);
    let listing: Fresh<AccessPoint[]>;
    try {
      listing = await listings.get(ap.fileSystemId);
    } catch (err) {
      if (isEfsError(err, "FileSystemNotFound")) return;
      throw toCsiError(err);
    }
    // Deleting a directory that another access point uses (or one below it) would destroy that
    // volume's data: keep it, it is theirs too (ensureUniqueDirectory=false makes such sharing).
    const sharing = listing.value.filter(
      (other) => other.id !== ap.id && isSameOrBelow(posix.resolve("/", other.rootDirectory.path), path),
    );
    if (sharing.length > 0) {
      log.warn(
        { accessPointId: ap.id, path, usedBy: sharing.map((o) => o.id) },
        "root directory kept: other access points use it",
      );
      return;
    }
    try {
      await deleteRootDirectory!(ap.fileSystemId, path);
    } catch (err) {
      // A refusal (e.g. a symbolic link on the way) keeps its code; anything else is the controller's problem.
      if (err instanceof CsiError) throw err;
      throw internal(`deleting root directory ${path} of access point ${ap.id}: ${(err as Error).message}`);
    }
    log.info({ fileSystemId: ap.fileSystemId, accessPointId: ap.id, path }, "deleted root directory");
  }

  async function validateVolumeCapabilities(
    req: ValidateVolumeCapabilitiesRequest,
  ): Promise<ValidateVolumeCapabilitiesResponse> {
    if (!req.volume_id) throw invalidArgument("volume_id", "required");
    if (req.volume_capabilities.length === 0) throw invalidArgument("volume_capabilities", "required");
    // Malformed capabilities are the caller's mistake; well-formed but unsupported ones go unconfirmed.
    req.volume_capabilities.forEach((cap, i) => {
      checkCapabilityShape(cap, `volume_capabilities[${i}]`);
    });
    await checkVolumeExists(req.volume_id);
    try {
      checkCapabilities(req.volume_capabilities, "volume_capabilities", CAPABILITY_RULES);
    } catch (err) {
      if (err instanceof CsiError && err.code === status.INVALID_ARGUMENT)
        return { confirmed: null, message: err.message };
      throw err;
    }
    return {
      confirmed: {
        volume_context: req.volume_context,
        volume_capabilities: req.volume_capabilities,
        parameters: req.parameters,
        mutable_parameters: req.mutable_parameters,
      },
      message: "",
    };
  }

  /**
   * EFS is elastic: nothing grows. The new size is recorded in the access point's capacity tag, so
   * that the node reports it as the volume's total and a retried CreateVolume compares with it.
   */
  async function controllerExpandVolume(
    req: ControllerExpandVolumeRequest,
    ctx: RpcContext,
  ): Promise<ControllerExpandVolumeResponse> {
    if (!req.volume_id) throw invalidArgument("volume_id", "required");
    if (!req.capacity_range) throw invalidArgument("capacity_range", "required");
    const capacity = requestedCapacity(req.capacity_range);
    if (capacity === 0) throw invalidArgument("capacity_range", "set required_bytes or limit_bytes");
    if (req.volume_capability) checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES);
    const handle = tryParseVolumeHandle(req.volume_id);
    const grown = { capacity_bytes: capacity, node_expansion_required: false };
    if (!handle?.accessPointId) {
      await checkVolumeExists(req.volume_id);
      // A static volume has no access point, so nowhere to record the size: only the PV keeps it.
      return grown;
    }
    const ap = await describeAccessPoint(handle);
    if (!ap) {
      throw notFound(
        `volume ${req.volume_id} does not exist: no access point ${handle.accessPointId} on ${handle.fileSystemId}`,
      );
    }
    const recorded = recordedCapacity(ap);
    // Not tagged by this driver (a static PV on someone's access point, or enableTagging=false): leave it so.
    if (recorded === undefined) return grown;
    const limit = req.capacity_range.limit_bytes;
    if (recorded >= capacity) {
      // Already that large (a retry, or a smaller ask): sizes only grow, as CSI expansion does.
      if (limit > 0 && recorded > limit) {
        throw outOfRange(`volume ${req.volume_id} already has ${recorded} bytes, above limit_bytes ${limit}`);
      }
      return { capacity_bytes: recorded, node_expansion_required: false };
    }
    try {
      await efs.tagResource(ap.id, { [TAG_CAPACITY]: String(capacity) });
    } catch (err) {
      if (isEfsError(err, "AccessPointNotFound")) {
        throw notFound(`volume ${req.volume_id} does not exist: access point ${ap.id} is gone`);
      }
      // AWS's managed policy allows TagResource only within CreateAccessPoint: say what to add.
      if (isEfsError(err, "AccessDenied")) {
        throw permissionDenied(
          `recording the new size of volume ${req.volume_id} needs elasticfilesystem:TagResource on ` +
            `access points tagged ${TAG_CLUSTER}=true (key ${TAG_CAPACITY}): ${err.message}`,
        );
      }
      throw toCsiError(err);
    }
    ctx.log.info(
      { volumeId: req.volume_id, accessPointId: ap.id, from: recorded, to: capacity },
      "recorded the expanded capacity",
    );
    return grown;
  }

  /** NOT_FOUND unless the handle's access point, or for a static volume its file system, exists. */
  async function checkVolumeExists(volumeId: string): Promise<void> {
    const handle = tryParseVolumeHandle(volumeId);
    if (!handle) throw notFound(`volume ${volumeId} does not exist: it is not an EFS volume handle`);
    if (handle.accessPointId) {
      if (!(await describeAccessPoint(handle))) {
        throw notFound(
          `volume ${volumeId} does not exist: no access point ${handle.accessPointId} on ${handle.fileSystemId}`,
        );
      }
      return;
    }
    try {
      await efs.describeFileSystem(handle.fileSystemId);
    } catch (err) {
      if (isEfsError(err, "FileSystemNotFound")) {
        throw notFound(`volume ${volumeId} does not exist: no file system ${handle.fileSystemId}`);
      }
      throw toCsiError(err);
    }
  }

  /**
   * The volume's health as EFS sees it: the file system's and the access point's lifecycle states,
   * and the mount targets nodes reach it through (see efsVolumeHealth). Three EFS calls, made at once.
   */
  async function controllerGetVolumeHealth(
    req: ControllerGetVolumeHealthRequest,
  ): Promise<ControllerGetVolumeHealthResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    checkMap(req.secrets, "secrets");
    const handle = tryParseVolumeHandle(volumeId);
    if (!handle) throw notFound(`volume ${volumeId} does not exist: it is not an EFS volume handle`);
    const orMissing = <T>(call: Promise<T>) =>
      call.catch((err: unknown) => {
        if (isEfsError(err, "FileSystemNotFound") || isEfsError(err, "AccessPointNotFound")) return undefined;
        throw toCsiError(err);
      });
    const [fileSystem, mountTargets, accessPoint] = await Promise.all([
      orMissing(efs.describeFileSystem(handle.fileSystemId)),
      orMissing(efs.describeMountTargets(handle.fileSystemId)),
      handle.accessPointId ? describeAccessPoint(handle) : undefined,
    ]);
    if (!fileSystem)
      throw notFound(`volume ${volumeId} does not exist: no file system ${handle.fileSystemId}`);
    if (handle.accessPointId && !accessPoint) {
      throw notFound(
        `volume ${volumeId} does not exist: no access point ${handle.accessPointId} on ${handle.fileSystemId}`,
      );
    }
    return {
      volume_health: {
        volume_id: volumeId,
        health_statuses: efsVolumeHealth(fileSystem, mountTargets ?? [], accessPoint),
      },
    };
  }

  return {
    CreateVolume: createVolume,
    DeleteVolume: deleteVolume,
    ValidateVolumeCapabilities: validateVolumeCapabilities,
    ControllerExpandVolume: controllerExpandVolume,
    ControllerGetVolumeHealth: controllerGetVolumeHealth,
    async ControllerGetCapabilities(): Promise<ControllerGetCapabilitiesResponse> {
      // No LIST_VOLUME_HEALTH: static volumes (a file system, or a directory of one) leave no trace
      // in EFS to list them by, so a list would miss them; the CO asks per volume instead.
      const types = ["CREATE_DELETE_VOLUME", "EXPAND_VOLUME", "GET_VOLUME_HEALTH"] as const;
      return { capabilities: types.map((type) => ({ rpc: { type } })) };
    },
  };
}

type HealthEntry = { status: "DEGRADED" | "INACCESSIBLE"; reason: string; message: string };

/** Lifecycle states in which EFS serves no mount. */
const NOT_SERVING: Record<string, string> = {
  creating: "is still being created",
  deleting: "is being deleted",
  deleted: "was deleted",
  error: "is in state error",
};

/**
 * - The file system or the access point creating, deleting, deleted or in error: no node can
 *   mount the volume, INACCESSIBLE.
 * - No mount target available: nodes have no address to mount from, INACCESSIBLE. (A file system
 *   without mount targets can only be mounted once they are made.)
 * - Some mount targets available, others not: nodes in those zones cannot mount it, DEGRADED,
 *   naming the zones. A zone without any mount target is the owner's choice, not a condition.
 */
export function efsVolumeHealth(
  fs: FileSystem,
  mountTargets: MountTarget[],
  ap?: AccessPoint,
): HealthEntry[] {
  const entries: HealthEntry[] = [];
  const fsState = NOT_SERVING[fs.lifeCycleState];
  if (fsState) {
    entries.push({
      status: "INACCESSIBLE",
      reason: "FileSystemUnavailable",
      message: `file system ${fs.id} ${fsState}`,
    });
  }
  const apState = ap?.lifeCycleState ? NOT_SERVING[ap.lifeCycleState] : undefined;
  if (ap && apState) {
    entries.push({
      status: "INACCESSIBLE",
      reason: "AccessPointUnavailable",
      message: `access point ${ap.id} ${apState}`,
    });
  }
  const available = mountTargets.filter((mt) => mt.lifeCycleState === "available");
  const down = mountTargets.filter((mt) => mt.lifeCycleState !== "available");
  const describe = (mts: MountTarget[]) =>
    mts.map((mt) => `${mt.id} in ${mt.zone} (${mt.lifeCycleState})`).join(", ");
  if (available.length === 0) {
    entries.push({
      status: "INACCESSIBLE",
      reason: "NoMountTarget",
      message:
        mountTargets.length === 0
          ? `file system ${fs.id} has no mount target: no node can mount it`
          : `no mount target of file system ${fs.id} is available: ${describe(down)}`,
    });
  } else {
    const zonesDown = [...new Set(down.map((mt) => mt.zone))].filter(
      (zone) => !available.some((mt) => mt.zone === zone),
    );
    if (zonesDown.length > 0) {
      entries.push({
        status: "DEGRADED",
        reason: "MountTargetUnavailable",
        message: `nodes in ${zonesDown.join(", ")} cannot mount file system ${fs.id}: ${describe(down.filter((mt) => zonesDown.includes(mt.zone)))}`,
      });
    }
  }
  return entries;
}

interface Expected {
  name: string;
  p: ProvisioningParams;
  plan: RootDirectoryPlan;
  range: CapacityRange | null;
  capacity: number;
}

/** The volume an earlier attempt created, if it matches this request; ALREADY_EXISTS otherwise. */
function answerExisting(ap: AccessPoint, e: Expected): CreatedVolume {
  const { p } = e;
  const mismatch = (what: string) =>
    alreadyExists(`volume ${e.name} already exists as access point ${ap.id} with ${what}`);
  if (ap.fileSystemId !== p.fileSystemId)
    throw mismatch(`file system ${ap.fileSystemId}, not ${p.fileSystemId}`);
  // reuseAccessPoint shares one access point among PVCs of one name (other namespaces, clusters): sizes differ.
  // After an expansion the tag holds the larger size: a retry with the original range still fits
  // unless its limit_bytes is below it (CSI compares with the existing volume's capacity).
  const recorded = p.reuseAccessPoint ? undefined : recordedCapacity(ap);
  const capacity = recorded ?? e.capacity;
  if (
    e.range &&
    (capacity < e.range.required_bytes || (e.range.limit_bytes > 0 && capacity > e.range.limit_bytes))
  ) {
    throw mismatch(`capacity ${capacity} bytes, outside the requested range`);
  }
  const user = ap.posixUser;
  if (!user) throw mismatch("no POSIX user");
  const inRange = (id: number) => id >= p.gidRange.start && id <= p.gidRange.end;
  if (p.uid !== undefined ? user.uid !== p.uid : !inRange(user.uid)) throw mismatch(`uid ${user.uid}`);
  if (p.gid !== undefined ? user.gid !== p.gid : !inRange(user.gid)) throw mismatch(`gid ${user.gid}`);
  // A reused access point was named after another PV (another cluster's): it only has to be below basePath.
  const root = ap.rootDirectory.path;
  if (p.reuseAccessPoint ? !isBelow(root, p.basePath) : !matchesRootDirectory(root, e.plan)) {
    const wanted = p.reuseAccessPoint
      ? `a directory below ${p.basePath}`
      : `${e.plan.stem}${e.plan.unique ? "-UUID" : ""}`;
    throw mismatch(`root directory ${root}, not ${wanted}`);
  }
  const perms = ap.rootDirectory.creationInfo?.permissions;
  if (perms !== undefined && Number.parseInt(perms, 8) !== Number.parseInt(p.directoryPerms, 8)) {
    throw mismatch(`directoryPerms ${perms}, not ${p.directoryPerms}`);
  }
  return { volume: volumeOf(ap.fileSystemId, ap.id, capacity) };
}

const volumeOf = (
  fileSystemId: string,
  accessPointId: string,
  capacity: number,
): CreatedVolume["volume"] => ({
  volume_id: formatVolumeHandle({ fileSystemId, accessPointId }),
  capacity_bytes: capacity,
  volume_context: {},
  accessible_topology: [],
});

function settleReservation(reservation: GidReservation | undefined, err: unknown): void {
  if (mayHaveTakenEffect(err)) reservation?.keep();
  else reservation?.release();
}

/**
 * Refuses to delete a root directory that is not a volume's own: `/` (the whole file system) or
 * the StorageClass basePath (every volume's parent). Throws FAILED_PRECONDITION: nothing is deleted.
 */
export function checkRootDirectoryDeletable(ap: AccessPoint, path: string): void {
  const refuse = (why: string) =>
    failedPrecondition(
      `refusing to delete root directory ${path} of access point ${ap.id} on ${ap.fileSystemId}: ${why}; ` +
        "delete the access point by hand, or run without --delete-access-point-root-dir",
    );
  if (path === "/") throw refuse("it is the root of the file system");
  const basePath = ap.tags[TAG_BASE_PATH];
  if (basePath !== undefined && !isSameOrBelow(path, basePath))
    throw refuse(`it is outside basePath ${basePath}`);
  if (basePath !== undefined && path === posix.resolve("/", basePath))
    throw refuse("it is the basePath itself");
}

const isSameOrBelow = (path: string, dir: string): boolean => {
  const rel = posix.relative(posix.resolve("/", dir), posix.resolve("/", path));
  return rel === "" || (!rel.startsWith("..") && !posix.isAbsolute(rel));
};

const isBelow = (path: string, dir: string): boolean =>
  isSameOrBelow(path, dir) && posix.resolve("/", path) !== posix.resolve("/", dir);

/** Access modes: all (EFS is NFS, any number of nodes may mount it, read-only or not); mount access only. */

/** EFS is elastic: the size is what was asked for (required, else limit), 0 (unknown) when nothing was. */
function requestedCapacity(range: CapacityRange | null): number {
  if (!range) return 0;
  const { required_bytes: required, limit_bytes: limit } = range;
  if (required < 0 || limit < 0) throw invalidArgument("capacity_range", "bytes cannot be negative");
  if (limit > 0 && limit < required) {
    throw outOfRange(`capacity_range: limit_bytes ${limit} is below required_bytes ${required}`);
  }
  return required > 0 ? required : limit;
}

/** An EFS failure as the gRPC status the caller sees. */
export function toCsiError(err: unknown): Error {
  if (err instanceof CsiError || !isEfsError(err)) return err as Error;
  switch (err.kind) {
    case "FileSystemNotFound":
    case "AccessPointNotFound":
      return notFound(err.message);
    case "AccessPointAlreadyExists":
      return alreadyExists(err.message);
    case "AccessPointLimitExceeded":
      return resourceExhausted(err.message);
    // The official driver answers UNAUTHENTICATED, which means the caller of the RPC is not authenticated.
    case "AccessDenied":
      return permissionDenied(`AWS denied the driver's IAM role: ${err.message}`);
    case "InvalidParameter":
      return invalidArgument("EFS request", err.message);
    case "FileSystemNotReady":
    case "Throttled":
    case "Unavailable":
      return unavailable(err.message);
    default:
      return internal(err.message);
  }
}
