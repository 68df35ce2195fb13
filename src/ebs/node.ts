import { lstatSync, readlinkSync, type Stats } from "node:fs";
import { lstat, readFile, realpath, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { waitUntil } from "../backoff.ts";
import type { Options } from "../config.ts";
import {
  aborted,
  alreadyExists,
  asInternal,
  CsiError,
  failedPrecondition,
  invalidArgument,
  notFound,
} from "../csi/errors.ts";
import { status } from "../csi/status.ts";
import type {
  NodeExpandVolumeRequest,
  NodeExpandVolumeResponse,
  NodeGetCapabilitiesResponse,
  NodeGetInfoResponse,
  NodeGetStorageHealthRequest,
  NodeGetStorageHealthResponse,
  NodeGetVolumeHealthRequest,
  NodeGetVolumeHealthResponse,
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodePublishVolumeResponse,
  NodeStageVolumeRequest,
  NodeStageVolumeResponse,
  NodeUnpublishVolumeRequest,
  NodeUnpublishVolumeResponse,
  NodeUnstageVolumeRequest,
  NodeUnstageVolumeResponse,
} from "../csi/types.ts";
import {
  type CapabilityRules,
  checkCapability,
  checkMap,
  confinePath,
  requirePath,
  requireString,
} from "../csi/validate.ts";
import { requestedMounts, volumeHealthReply } from "../csi/volume-health.ts";
import {
  answersFromMemory,
  blockDeviceSizeBytes,
  deviceSizeBytes,
  FormatRefusedError,
  type FsStats,
  type FsType,
  filesystemSizeBytes,
  fsStats,
  fsStatsNow,
  isSupportedFsType,
  mkfsArgsFromVolumeContext,
  resizeFilesystem,
  safeFormatAndMount,
} from "../host/blockdev.ts";
import { bounded } from "../host/bounded.ts";
import { checkFilesystemHealth, type HealthIssue } from "../host/health.ts";
import {
  bindMount,
  findMountsAt,
  findMountsOfSource,
  listMounts,
  type MountEntry,
  removeMountTarget,
  splitDevNumber,
  unmountAll,
} from "../host/mounts.ts";
import { KubeletDirs, lstatOrUndefined, MAX_PATH_BYTES, makeDirectories, makeFile } from "../host/paths.ts";
import {
  createReadOnlyDevice,
  findReadOnlyView,
  releaseReadOnlyDevice,
  releaseUnusedReadOnlyDevices,
} from "../host/readonly-block.ts";
import type { Logger } from "../log.ts";
import type { InstanceMetadata } from "../metadata.ts";
import type { RpcContext } from "../server/rpc.ts";
import { attachLimitFromTable, INSTANCE_TYPE_LOOKUP_MS, volumesPerNode } from "./attach-limits.ts";
import type { InstanceTypeEbsInfo } from "./cloud.ts";
import { attachmentIssues, linkName, listDeviceLinks } from "./device-links.ts";
import { VOLUME_ID } from "./errors.ts";
import { ZONE_KEYS } from "./topology.ts";

const FS_TYPE_CONTEXT_KEY = "csi.storage.k8s.io/fstype";
/** The device names EC2 attaches volumes as (the controller allocates /dev/xvdXX). */
const EC2_DEVICE_NAME = /^\/dev\/(xvd|sd)[a-z]{1,3}$/;
const DEFAULT_FS_TYPE: FsType = "ext4";
/** A filesystem this much smaller than its device is grown at stage time (EBS grows by whole GiB). */
const GROW_SLACK_BYTES = 64 * 1024 * 1024;

const CAPABILITY_RULES: CapabilityRules = {
  modes: [
    "SINGLE_NODE_WRITER",
    "SINGLE_NODE_READER_ONLY",
    "SINGLE_NODE_SINGLE_WRITER",
    "SINGLE_NODE_MULTI_WRITER",
    "MULTI_NODE_MULTI_WRITER",
  ],
  block: true,
  fsTypes: ["ext4", "ext3", "ext2", "xfs"],
};

/** Stats targets remembered: far above the volumes a node can attach, so only hostile input evicts. */
const MAX_STATS_TARGETS = 1024;

/** A published volume as NodeGetVolumeStats last found it at a path. */
interface StatsTarget {
  /** The path with its parents resolved (KubeletDirs.confine). */
  path: string;
  /** A block volume: the path shows its device node (or a read-only view of it). */
  block: boolean;
  /**
   * lstat of the path: the root of the volume's filesystem, or the device node, identified. As
   * numbers: device numbers fit, and inode numbers of a root or a device node are small.
   */
  dev: number;
  ino: number;
  rdev: number;
  /** Where the volume's by-id link pointed when the path was checked the long way. */
  link: string;
  /**
   * The filesystem answers lstat of its root and statfs from memory (answersFromMemory): later
   * calls read them on the event loop, sparing two thread-pool round trips that cost a stats call
   * more than all its other work. Any other filesystem, or a block volume, goes through bounded.
   */
  fromMemory: boolean;
}

/** Whether lstat of a stats target's path shows what it showed when the target was found. */
function showsTarget(info: Stats | undefined, known: StatsTarget): boolean {
  return (
    info !== undefined &&
    info.dev === known.dev &&
    info.ino === known.ino &&
    info.rdev === known.rdev &&
    info.isBlockDevice() === known.block
  );
}

/** The usage figures of a stats target: bytes and inodes of its filesystem, or its device's size. */
async function usageAt(target: StatsTarget): Promise<NonNullable<NodeGetVolumeStatsResponse["usage"]>> {
  if (target.block) {
    const total = await blockDeviceSizeBytes(target.rdev, target.path);
    return [{ unit: "BYTES", total, available: 0, used: 0 }];
  }
  return usageOf(await fsStats(target.path));
}

function usageOf(stats: FsStats): NonNullable<NodeGetVolumeStatsResponse["usage"]> {
  return [
    { unit: "BYTES", total: stats.totalBytes, available: stats.availableBytes, used: stats.usedBytes },
    { unit: "INODES", total: stats.totalInodes, available: stats.freeInodes, used: stats.usedInodes },
  ];
}

export interface EbsNodeOptions {
  /** Where the udev links of attached EBS volumes appear (/dev/disk/by-id). */
  deviceDir: string;
  /** How long NodeStage waits for an attached volume's device to show up. */
  deviceWaitMs: number;
  /** A function while the limit is worked out after start-up (see createEbsNode). */
  maxVolumesPerNode: number | (() => Promise<number>);
  instanceId: string;
  zone: string;
  /** The only place where the node creates, mounts or deletes anything. */
  kubeletDirs: KubeletDirs;
}

/** The EBS node service: finds attached disks, formats them safely, mounts them for kubelet. */
export class EbsNode {
  readonly #o: EbsNodeOptions;
  readonly #log: Logger;
  /** By volume id and volume_path as asked; insertion order is age, for eviction. */
  readonly #statsTargets = new Map<string, StatsTarget>();

  constructor(options: EbsNodeOptions, log: Logger) {
    this.#o = options;
    this.#log = log;
  }

  async #maxVolumesPerNode(): Promise<number> {
    const limit = this.#o.maxVolumesPerNode;
    return typeof limit === "number" ? limit : limit();
  }

  async NodeGetInfo(): Promise<NodeGetInfoResponse> {
    return {
      node_id: this.#o.instanceId,
      max_volumes_per_node: await this.#maxVolumesPerNode(),
      accessible_topology: { segments: Object.fromEntries(ZONE_KEYS.map((k) => [k, this.#o.zone])) },
    };
  }

  async NodeGetCapabilities(): Promise<NodeGetCapabilitiesResponse> {
    const types = [
      "STAGE_UNSTAGE_VOLUME",
      "GET_VOLUME_STATS",
      "EXPAND_VOLUME",
      "GET_VOLUME_HEALTH",
      "GET_STORAGE_HEALTH",
      "SINGLE_NODE_MULTI_WRITER",
    ] as const;
    return { capabilities: types.map((type) => ({ rpc: { type } })) };
  }

  async NodeStageVolume(req: NodeStageVolumeRequest, ctx: RpcContext): Promise<NodeStageVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const stagingField = requirePath(req.staging_target_path, "staging_target_path", this.#o.kubeletDirs);
    const cap = checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES);
    const context = checkMap(req.volume_context, "volume_context");
    const publishContext = checkMap(req.publish_context, "publish_context");
    checkMap(req.secrets, "secrets");
    // Raw block volumes are published straight from the device: nothing to format or mount here.
    if (cap.block) return {};
    const stagingPath = await confinePath(stagingField, "staging_target_path", this.#o.kubeletDirs);

    const device = await this.#waitForDevice(volumeId, publishContext.devicePath);
    const fsType = resolveFsType(cap.fsType, context);
    const existing = (await findMountsAt(stagingPath)).at(-1);
    if (existing) {
      await this.#checkSameDevice(existing, device, "staging_target_path", stagingPath);
      if (existing.fsType !== fsType && !(fsType === "ext4" && existing.fsType.startsWith("ext"))) {
        throw alreadyExists(
          `staging_target_path ${stagingPath}: volume is staged as ${existing.fsType}, not ${fsType}`,
        );
      }
      await this.#growIfNeeded(device, stagingPath, fsType, ctx);
      return {};
    }

    const mkfs = mkfsArgsFromVolumeContext(fsType, context);
    if (!mkfs.ok) throw invalidArgument(`volume_context.${mkfs.key}`, mkfs.reason);
    // One staging per volume on a node: kubelet never stages a volume twice.
    const stagedElsewhere = (await findMountsOfSource(device)).find(
      (m) => m.root === "/" && m.fsType !== "devtmpfs",
    );
    if (stagedElsewhere) {
      throw failedPrecondition(
        `volume_id ${volumeId}: already staged at ${stagedElsewhere.mountPoint}, not at ${stagingPath}`,
      );
    }
    try {
      await makeDirectories(stagingPath);
      const result = await safeFormatAndMount(device, stagingPath, fsType, cap.mountFlags, mkfs.args);
      ctx.log.info({ volumeId, device, stagingPath, fsType, formatted: result.formatted }, "staged");
    } catch (err) {
      if (err instanceof FormatRefusedError)
        throw failedPrecondition(`volume_id ${volumeId}: ${err.message}`);
      // A concurrent call removed the directory between its creation and the mount (kubelet never
      // does; a confused caller may): nothing was mounted, the call may simply be repeated.
      if (!(await lstatOrUndefined(stagingPath))) {
        throw aborted(
          `volume_id ${volumeId}: staging_target_path ${stagingPath} was removed while the volume was being staged; retry`,
        );
      }
      // The volume was detached meanwhile (its device gone or empty): retry once it is back.
      const size = await deviceSizeBytes(device).catch(() => 0);
      if (size === 0) {
        throw new CsiError(
          status.UNAVAILABLE,
          `volume_id ${volumeId}: its device ${device} went away while it was being staged: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
      throw asInternal(err, `staging volume ${volumeId}`);
    }
    // A volume expanded while it was detached comes back bigger than its filesystem.
    await this.#growIfNeeded(device, stagingPath, fsType, ctx);
    return {};
  }

  async NodeUnstageVolume(
    req: NodeUnstageVolumeRequest,
    ctx: RpcContext,
  ): Promise<NodeUnstageVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const stagingField = requirePath(req.staging_target_path, "staging_target_path", this.#o.kubeletDirs);
    const stagingPath = await confinePath(stagingField, "staging_target_path", this.#o.kubeletDirs);
    const count = await unmountAll(stagingPath).catch((err) => {
      throw asInternal(err, `unstaging volume ${volumeId}`);
    });
    // A read-only view of a block volume holds its device open: none may outlive the staging.
    const device = VOLUME_ID.test(volumeId) ? await this.#findDevice(volumeId, undefined) : undefined;
    if (device) {
      const inUse = (
        await releaseUnusedReadOnlyDevices(device).catch((err) => {
          throw asInternal(err, `releasing read-only views of volume ${volumeId}`);
        })
      ).filter((r) => !r.detached);
      if (inUse.length > 0) {
        throw failedPrecondition(
          `volume_id ${volumeId}: still published read-only through ${inUse.map((r) => r.view).join(", ")}`,
        );
      }
    }
    if (count > 0) ctx.log.info({ volumeId, stagingPath }, "unstaged");
    return {};
  }

  async NodePublishVolume(
    req: NodePublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<NodePublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const dirs = this.#o.kubeletDirs;
    const targetField = requirePath(req.target_path, "target_path", dirs);
    const cap = checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES);
    const publishContext = checkMap(req.publish_context, "publish_context");
    checkMap(req.volume_context, "volume_context");
    checkMap(req.secrets, "secrets");
    const readOnly = req.readonly === true || cap.mode === "SINGLE_NODE_READER_ONLY";
    const stagingField = cap.block
      ? undefined
      : requirePath(req.staging_target_path, "staging_target_path", dirs);
    const targetPath = await confinePath(targetField, "target_path", dirs);

    let source: string;
    if (!stagingField) {
      source = await this.#waitForDevice(volumeId, publishContext.devicePath);
    } else {
      source = await confinePath(stagingField, "staging_target_path", dirs);
      // Staged means this volume's filesystem is mounted there, not anything else (a block target).
      const staged = (await findMountsAt(source)).at(-1);
      const device = VOLUME_ID.test(volumeId) ? await this.#findDevice(volumeId, undefined) : undefined;
      if (!staged || staged.fsType === "devtmpfs" || !device || !(await sameDeviceNumber(staged, device))) {
        throw failedPrecondition(`staging_target_path ${source}: volume ${volumeId} is not staged there`);
      }
    }

    const existing = (await findMountsAt(targetPath)).at(-1);
    if (existing) {
      // A block volume is published as a device node, a filesystem as a directory: the same
      // device in the other form is another capability, so ALREADY_EXISTS as well.
      const publishedAsBlock = (await bounded(`stat ${targetPath}`, () => stat(targetPath))).isBlockDevice();
      const sourceEntry = cap.block ? undefined : (await findMountsAt(source)).at(-1);
      // A read-only block publication shows a read-only view of the device, not the device.
      const view = cap.block ? await findReadOnlyView(targetPath) : undefined;
      const sameSource =
        publishedAsBlock === cap.block &&
        (cap.block
          ? view
            ? view.deviceRdev === (await bounded(`stat ${source}`, () => stat(source, { bigint: true }))).rdev
            : await sameDeviceNumber(existing, source)
          : sourceEntry !== undefined &&
            existing.major === sourceEntry.major &&
            existing.minor === sourceEntry.minor);
      // A plain read-only bind of a device node can still be written to: not a read-only publication.
      const publishedReadOnly = existing.mountOptions.includes("ro") && (!cap.block || view !== undefined);
      if (sameSource && publishedReadOnly === readOnly) return {};
      throw alreadyExists(
        `target_path ${targetPath}: already published ${sameSource ? (publishedReadOnly ? "read-only" : "read-write") : `${publishedAsBlock ? "as a block device" : "as a filesystem"} from another source or capability`}`,
      );
    }
    if (cap.mode === "SINGLE_NODE_SINGLE_WRITER")
      await this.#checkSingleWriter(volumeId, source, cap.block, targetPath);

    // A read-only bind mount does not stop writes to a device node: a read-only view of it does.
    const view =
      cap.block && readOnly
        ? await createReadOnlyDevice(source).catch((err) => {
            throw asInternal(err, `making a read-only view of ${source}`);
          })
        : undefined;
    try {
      if (cap.block) await makeFile(targetPath);
      else await makeDirectories(targetPath);
      await bindMount(view ?? source, targetPath, { readOnly, options: cap.block ? [] : cap.mountFlags });
    } catch (err) {
      if (view) await releaseReadOnlyDevice(view).catch(() => undefined);
      throw asInternal(err, `publishing volume ${volumeId} at ${targetPath}`);
    }
    ctx.log.info({ volumeId, targetPath, readOnly, block: cap.block }, "published");
    return {};
  }

  async NodeUnpublishVolume(
    req: NodeUnpublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<NodeUnpublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const targetField = requirePath(req.target_path, "target_path", this.#o.kubeletDirs);
    const targetPath = await confinePath(targetField, "target_path", this.#o.kubeletDirs);
    try {
      const published = await findMountsAt(targetPath);
      const count = await unmountAll(targetPath);
      for (const entry of published) {
        const released = await releaseReadOnlyDevice(entry);
        if (released && !released.detached)
          ctx.log.warn(
            { volumeId, view: released.view, usedBy: released.usedBy },
            "read-only view still in use",
          );
      }
      await removeMountTarget(targetPath);
      if (count > 0) ctx.log.info({ volumeId, targetPath }, "unpublished");
    } catch (err) {
      throw asInternal(err, `unpublishing volume ${volumeId} from ${targetPath}`);
    }
    return {};
  }

  /**
   * One statfs (a block volume: its device's size, from sysfs) once the path is known to show this
   * volume: kubelet asks for every volume every minute. The first call for a path checks that the
   * long way (#findPublished); later ones check that the path still shows the same filesystem root
   * or device node (its device and inode numbers) and that the volume's by-id link still names the
   * same device. An unmount or another mount there changes the numbers; another volume on a reused
   * device (loop3, nvme1n1) comes with a link of its own, and this volume's is gone or moved.
   */
  async NodeGetVolumeStats(req: NodeGetVolumeStatsRequest): Promise<NodeGetVolumeStatsResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const volumePathField = requireString(req.volume_path, "volume_path", MAX_PATH_BYTES);
    const key = `${volumeId}\0${volumePathField}`;
    const failed = (err: unknown, path: string) =>
      asInternal(err, `volume ${volumeId} at ${path} (see NodeGetVolumeHealth)`);
    const known = this.#statsTargets.get(key);
    if (known?.fromMemory) {
      if (this.#stillPublishedNow(volumeId, known)) {
        try {
          return { usage: usageOf(fsStatsNow(known.path)) };
        } catch (err) {
          throw failed(err, known.path);
        }
      }
      this.#statsTargets.delete(key);
    } else if (known) {
      // Read alongside the check (one round trip), used only when it passes: the statfs touches
      // nothing the check's lstat of the same path does not.
      const [same, usage] = await Promise.all([
        this.#stillPublished(volumeId, known),
        usageAt(known).then(
          (figures) => ({ figures }),
          (err: unknown) => ({ err }),
        ),
      ]);
      if (same) {
        if ("err" in usage) throw failed(usage.err, known.path);
        return { usage: usage.figures };
      }
      this.#statsTargets.delete(key);
    }
    const target = await this.#findStatsTarget(volumeId, volumePathField, key);
    try {
      return { usage: await usageAt(target) };
    } catch (err) {
      throw failed(err, target.path);
    }
  }

  /** What NodeGetVolumeStats reads at a path, found the long way; remembered when it can be checked cheaply. */
  async #findStatsTarget(volumeId: string, volumePathField: string, key: string): Promise<StatsTarget> {
    // Read before the device is looked up: a link that changes in between fails the next check.
    const link = this.#readDeviceLink(volumeId);
    const { path, device, mount } = await this.#findPublished(volumeId, volumePathField);
    // lstat fails (EIO) on a filesystem the kernel shut down while statfs may still answer: the
    // figures are reported as long as they can be read, NodeGetVolumeHealth says what is wrong.
    const info = await bounded(`lstat ${path}`, () => lstat(path)).catch(() => undefined);
    const target: StatsTarget = {
      path,
      block: info?.isBlockDevice() ?? false,
      dev: info?.dev ?? 0,
      ino: info?.ino ?? 0,
      rdev: info?.rdev ?? 0,
      link: link ?? "",
      fromMemory: !info?.isBlockDevice() && answersFromMemory(mount.fsType, mount.superOptions),
    };
    // Without the volume's device (gone, or never linked) there is nothing to check later calls by.
    if (info && device && link !== undefined) {
      if (this.#statsTargets.size >= MAX_STATS_TARGETS) {
        this.#statsTargets.delete(this.#statsTargets.keys().next().value ?? "");
      }
      this.#statsTargets.set(key, target);
    }
    return target;
  }

  /** Whether the path still shows what it showed when the target was found, and the volume's link is unchanged. */
  async #stillPublished(volumeId: string, known: StatsTarget): Promise<boolean> {
    if (this.#readDeviceLink(volumeId) !== known.link) return false;
    const info = await bounded(`lstat ${known.path}`, () => lstat(known.path)).catch(() => undefined);
    return showsTarget(info, known);
  }

  /** #stillPublished on the event loop, for a filesystem that answers from memory. */
  #stillPublishedNow(volumeId: string, known: StatsTarget): boolean {
    if (this.#readDeviceLink(volumeId) !== known.link) return false;
    try {
      return showsTarget(lstatSync(known.path), known);
    } catch {
      return false;
    }
  }

  /**
   * Where the volume's by-id link points, or undefined when it has none. Read synchronously: the
   * links live in /dev (devtmpfs, in memory, never waits for a disk), and a round trip through the
   * thread pool would cost a stats call more than the rest of its checks.
   */
  #readDeviceLink(volumeId: string): string | undefined {
    try {
      return readlinkSync(join(this.#o.deviceDir, linkName(volumeId)));
    } catch {
      return undefined;
    }
  }

  /**
   * What this node sees of the volume: its device gone, its filesystem shut down or made read-only
   * by an error, ext4 errors awaiting fsck. The paths are optional (kubelet sends them, csi-sanity
   * does not): without a mounted one, the volume's device and its mounts in the kubelet directory
   * are looked up. An attached volume that is not mounted (yet) is healthy; one that is neither
   * attached nor mounted here is NOT_FOUND.
   */
  async NodeGetVolumeHealth(req: NodeGetVolumeHealthRequest): Promise<NodeGetVolumeHealthResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const answer = (issues: HealthIssue[]) => volumeHealthReply(volumeId, issues);
    if (!VOLUME_ID.test(volumeId)) throw notFound(`volume_id ${volumeId}: not an EBS volume id`);
    for await (const { given, mounts } of requestedMounts(req, this.#o.kubeletDirs, volumeId)) {
      // Not mounted (yet, or any more): the other path or the device may still tell.
      if (mounts.length === 0) continue;
      const { path: volumePath, mount, device } = await this.#findPublished(volumeId, given);
      return answer(await this.#healthAt(volumeId, volumePath, mount, device));
    }
    const device = await this.#findDevice(volumeId, undefined);
    if (!device) throw notFound(`volume_id ${volumeId}: not attached to this node and not mounted here`);
    const { major, minor } = splitDevNumber((await stat(device, { bigint: true })).rdev);
    for (const mount of await listMounts()) {
      if (mount.major !== major || mount.minor !== minor) continue;
      if (!(await this.#o.kubeletDirs.confine(mount.mountPoint)).ok) continue;
      return answer(await this.#healthAt(volumeId, mount.mountPoint, mount, device));
    }
    return answer([]);
  }

  /**
   * The node's EBS attachments as a whole, from its by-id links: links leading nowhere, a device
   * two volumes' links claim, no attachment slot left. Instance metadata is not asked: kubelet
   * calls this every minute, and a node needs none of it to serve its volumes.
   */
  async NodeGetStorageHealth(req: NodeGetStorageHealthRequest): Promise<NodeGetStorageHealthResponse> {
    checkMap(req.secrets ?? {}, "secrets");
    const links = await listDeviceLinks(this.#o.deviceDir);
    return { backend_health: attachmentIssues(links, await this.#maxVolumesPerNode()) };
  }

  async #healthAt(
    volumeId: string,
    volumePath: string,
    mount: MountEntry,
    device: string | undefined,
  ): Promise<HealthIssue[]> {
    if (!device) {
      return [
        {
          status: "INACCESSIBLE",
          reason: "DeviceGone",
          message: `the block device of volume ${volumeId} is gone (detached?) while still mounted at ${volumePath}`,
        },
      ];
    }
    const info = await bounded(`stat ${volumePath}`, () => stat(volumePath)).catch(() => undefined);
    if (info?.isBlockDevice()) return [];
    return checkFilesystemHealth(volumePath, { mount });
  }

  async NodeExpandVolume(req: NodeExpandVolumeRequest, ctx: RpcContext): Promise<NodeExpandVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const volumePathField = requireString(req.volume_path, "volume_path", MAX_PATH_BYTES);
    const cap = req.volume_capability
      ? checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES)
      : undefined;
    const required = Number(req.capacity_range?.required_bytes ?? 0);
    const { path: volumePath, mount, device } = await this.#findPublished(volumeId, volumePathField);
    if (!device) throw notFound(`volume_id ${volumeId}: no block device is attached for it`);
    const deviceBytes = await deviceSizeBytes(device);
    if (required > deviceBytes) {
      // The kernel learns of a grown EBS volume a moment after EC2 reports it: kubelet retries.
      throw new CsiError(
        status.UNAVAILABLE,
        `volume_id ${volumeId}: the device is ${deviceBytes} bytes, not yet ${required}`,
      );
    }
    const block = cap?.block ?? (await bounded(`stat ${volumePath}`, () => stat(volumePath))).isBlockDevice();
    if (!block) {
      const fsType = isSupportedFsType(mount.fsType) ? mount.fsType : DEFAULT_FS_TYPE;
      await this.#growIfNeeded(device, volumePath, fsType, ctx);
    }
    return { capacity_bytes: deviceBytes };
  }

  // --- helpers ---

  /**
   * The mount at volumePath (with its parents resolved) and the volume's device, or NOT_FOUND when
   * the volume is not there. A path outside the kubelet directory holds no volume of ours: NOT_FOUND
   * too (csi-sanity sends relative paths and expects it), and nothing there is looked at.
   */
  async #findPublished(
    volumeId: string,
    volumePath: string,
  ): Promise<{ path: string; mount: MountEntry; device?: string }> {
    const notThere = notFound(`volume_path ${volumePath}: volume ${volumeId} is not mounted there`);
    if (!VOLUME_ID.test(volumeId)) throw notThere;
    const confined = await this.#o.kubeletDirs.confine(volumePath);
    if (!confined.ok) throw notThere;
    const mount = (await findMountsAt(confined.path)).at(-1);
    if (!mount) throw notThere;
    const device = await this.#findDevice(volumeId, undefined);
    const elsewhere = `volume_path ${volumePath}: another volume is mounted there, not ${volumeId}`;
    if (device && !(await sameDeviceNumber(mount, device))) throw notFound(elsewhere);
    // No device for this volume: either its disk is gone (NodeGetVolumeHealth reports it), or
    // the path holds another volume that is still attached (NOT_FOUND: this one is not there).
    if (!device) {
      const owner = await this.#volumeOfMount(mount);
      if (owner && owner !== volumeId) throw notFound(elsewhere);
    }
    return { path: confined.path, mount, device };
  }

  async #growIfNeeded(device: string, mountPath: string, fsType: FsType, ctx: RpcContext): Promise<void> {
    try {
      const [deviceBytes, fsBytes] = await Promise.all([
        deviceSizeBytes(device),
        filesystemSizeBytes(device, mountPath, fsType),
      ]);
      if (deviceBytes - fsBytes < GROW_SLACK_BYTES) return;
      ctx.log.info({ device, mountPath, fsType, fsBytes, deviceBytes }, "growing filesystem");
      await resizeFilesystem(device, mountPath, fsType);
    } catch (err) {
      // A node plugin without CAP_SYS_RESOURCE cannot grow a mounted ext4: the node must change.
      if (err instanceof Error && /CAP_SYS_RESOURCE/.test(err.message)) {
        throw failedPrecondition(`growing the filesystem on ${device}: ${err.message}`);
      }
      throw asInternal(err, `growing the filesystem on ${device}`);
    }
  }

  async #checkSameDevice(mount: MountEntry, device: string, field: string, path: string): Promise<void> {
    if (!(await sameDeviceNumber(mount, device))) {
      throw alreadyExists(`${field} ${path}: ${mount.source} is mounted there, not ${device}`);
    }
  }

  /** SINGLE_NODE_SINGLE_WRITER: one published target at a time on this node. */
  async #checkSingleWriter(
    volumeId: string,
    source: string,
    block: boolean,
    targetPath: string,
  ): Promise<void> {
    const mounts = await listMounts();
    let isSameVolume: (m: MountEntry) => boolean;
    if (block) {
      const { major, minor } = splitDevNumber((await stat(source, { bigint: true })).rdev);
      // A device bind-mounted onto a file shows devtmpfs's numbers, and the device as its root.
      const root = `/${basename(source)}`;
      isSameVolume = (m) =>
        (m.major === major && m.minor === minor) || (m.fsType === "devtmpfs" && m.root === root);
    } else {
      const staged = mounts.find((m) => m.mountPoint === source);
      isSameVolume = (m) => staged !== undefined && m.major === staged.major && m.minor === staged.minor;
    }
    const other = mounts.find(
      (m) => m.mountPoint !== targetPath && m.mountPoint !== source && isSameVolume(m),
    );
    if (other) {
      throw failedPrecondition(
        `volume_id ${volumeId}: SINGLE_NODE_SINGLE_WRITER volume is already published at ${other.mountPoint}`,
      );
    }
  }

  async #waitForDevice(volumeId: string, devicePath: string | undefined): Promise<string> {
    if (!VOLUME_ID.test(volumeId)) throw notFound(`volume_id ${volumeId}: not an EBS volume id`);
    // Only a name EC2 gives an attachment: never any other block device of the node.
    if (devicePath && !EC2_DEVICE_NAME.test(devicePath)) {
      throw invalidArgument(
        "publish_context.devicePath",
        `must be an EC2 device name such as /dev/xvdaa, not "${devicePath.slice(0, 64)}"`,
      );
    }
    const found = await waitUntil(`the device of ${volumeId}`, () => this.#findDevice(volumeId, devicePath), {
      initialMs: 100,
      factor: 2,
      maxDelayMs: 1000,
      timeoutMs: this.#o.deviceWaitMs,
    }).catch((err: unknown) => {
      // A device claimed by another volume is refused as such, not reported as missing.
      if (err instanceof CsiError) throw err;
      return undefined;
    });
    if (!found) {
      const looked = [join(this.#o.deviceDir, linkName(volumeId)), devicePath].filter(Boolean).join(" and ");
      throw notFound(
        `volume_id ${volumeId}: no block device found (looked at ${looked}); is the volume attached?`,
      );
    }
    return found;
  }

  /**
   * The volume's block device: its NVMe by-id link, else the device name EC2 was given (Xen). A
   * device that another volume's link or NVMe serial claims is refused: formatting the wrong disk
   * is the one mistake a storage driver must never make.
   */
  async #findDevice(volumeId: string, devicePath: string | undefined): Promise<string | undefined> {
    const link = join(this.#o.deviceDir, linkName(volumeId));
    const byLink = await realpath(link).catch(() => undefined);
    if (byLink && (await isBlockDevice(byLink))) return byLink;
    if (!devicePath) return undefined;
    for (const candidate of aliases(devicePath)) {
      const real = await realpath(candidate).catch(() => undefined);
      if (!real || !(await isBlockDevice(real))) continue;
      const owner = await this.#linkedVolume(real);
      if (owner && owner !== volumeId) {
        throw failedPrecondition(
          `publish_context.devicePath ${devicePath}: ${real} belongs to volume ${owner}, not ${volumeId}`,
        );
      }
      const serial = await readFile(`/sys/class/block/${basename(real)}/device/serial`, "utf8").catch(
        () => undefined,
      );
      if (serial?.trim().startsWith("vol") && serial.trim() !== volumeId.replace("-", "")) {
        throw failedPrecondition(
          `publish_context.devicePath ${devicePath}: ${real} has serial ${serial.trim()}, not ${volumeId}`,
        );
      }
      return real;
    }
    return undefined;
  }

  /** The volume whose by-id link names the device mounted here (a filesystem or a block bind). */
  async #volumeOfMount(mount: MountEntry): Promise<string | undefined> {
    for (const [volumeId, device] of await this.#linkedDevices()) {
      if (await sameDeviceNumber(mount, device)) return volumeId;
    }
    return undefined;
  }

  /** Every EBS volume with a by-id link here, and the device the link resolves to. */
  async #linkedDevices(): Promise<[string, string][]> {
    return (await listDeviceLinks(this.#o.deviceDir)).flatMap(({ volumeId, device }) =>
      device ? [[volumeId, device] as [string, string]] : [],
    );
  }

  /** The volume whose by-id link points at device, if any. */
  async #linkedVolume(device: string): Promise<string | undefined> {
    return (await this.#linkedDevices()).find(([, target]) => target === device)?.[0];
  }
}

/** EC2 device names: /dev/xvdaa may show up as /dev/sdaa and the other way round. */
function aliases(devicePath: string): string[] {
  const xvd = devicePath.replace(/^\/dev\/sd/, "/dev/xvd");
  const sd = devicePath.replace(/^\/dev\/xvd/, "/dev/sd");
  return [...new Set([devicePath, xvd, sd])];
}

async function isBlockDevice(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isBlockDevice() ?? false;
}

/** Whether a mount's device numbers are those of `device` (a block device node). */
async function sameDeviceNumber(mount: MountEntry, device: string): Promise<boolean> {
  const info = await stat(device, { bigint: true }).catch(() => undefined);
  if (!info) return false;
  if (!info.isBlockDevice()) return false;
  const { major, minor } = splitDevNumber(info.rdev);
  if (mount.major === major && mount.minor === minor) return true;
  // A block device bind-mounted onto a file shows the devtmpfs numbers: compare the node itself,
  // or the device a read-only view there shows.
  const published = await stat(mount.mountPoint, { bigint: true }).catch(() => undefined);
  if (published?.isBlockDevice() === true && published.rdev === info.rdev) return true;
  return mount.fsType === "devtmpfs" && (await findReadOnlyView(mount.mountPoint))?.deviceRdev === info.rdev;
}

function resolveFsType(capabilityFsType: string, context: Record<string, string>): FsType {
  const wanted = (capabilityFsType || context[FS_TYPE_CONTEXT_KEY] || DEFAULT_FS_TYPE).toLowerCase();
  if (!isSupportedFsType(wanted))
    throw invalidArgument("volume_capability.mount.fs_type", `"${wanted}" is not supported`);
  return wanted;
}

export interface EbsNodeDeps {
  options: Options;
  log: Logger;
  metadata: InstanceMetadata;
  /** EC2's facts about an instance type (DescribeInstanceTypes); undefined when EC2 does not know it. */
  describeInstanceType: (instanceType: string) => Promise<InstanceTypeEbsInfo | undefined>;
}

/**
 * Builds the node service. The attachment limit is worked out once, in the background: the plugin
 * serves at once, and NodeGetInfo (kubelet asks it at registration) waits for the limit.
 */
export async function createEbsNode({
  options,
  log,
  metadata,
  describeInstanceType,
}: EbsNodeDeps): Promise<EbsNode> {
  return new EbsNode(
    {
      kubeletDirs: await KubeletDirs.open(options.kubeletDirs),
      deviceDir: options.deviceDir,
      deviceWaitMs: 10_000,
      maxVolumesPerNode:
        options.volumeAttachLimit ??
        deferred(() => attachmentLimit(metadata, options, describeInstanceType, log)),
      instanceId: metadata.instanceId,
      zone: metadata.zone,
    },
    log,
  );
}

/** How long after start-up the attachment limit is worked out, unless NodeGetInfo asks for it first. */
const LIMIT_LOOKUP_DELAY_MS = 1000;

/**
 * A function for a value whose work starts at the first call, or after LIMIT_LOOKUP_DELAY_MS:
 * the lookup (a process of its own) does not compete with the plugin's start-up.
 */
function deferred<T>(work: () => Promise<T>): () => Promise<T> {
  let started: Promise<T> | undefined;
  const start = () => {
    started ??= work();
    return started;
  };
  setTimeout(start, LIMIT_LOOKUP_DELAY_MS).unref();
  return start;
}

/** The type's limit from EC2 (bounded: a node whose EC2 endpoint does not answer must still serve), else the table. */
async function attachmentLimit(
  metadata: InstanceMetadata,
  options: Options,
  describeInstanceType: EbsNodeDeps["describeInstanceType"],
  log: Logger,
): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const fromEc2 = await Promise.race([
    describeInstanceType(metadata.instanceType),
    new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), INSTANCE_TYPE_LOOKUP_MS);
    }),
  ])
    .catch((err: Error) => {
      log.info({ error: err.message }, "DescribeInstanceTypes failed: using the built-in attachment limits");
      return undefined;
    })
    .finally(() => clearTimeout(timer));
  const info = fromEc2 ?? attachLimitFromTable(metadata.instanceType);
  const maxVolumesPerNode = volumesPerNode(info, {
    networkInterfaces: metadata.networkInterfaces ?? 1,
    reservedVolumes: options.reservedVolumeAttachments ?? metadata.blockDevices ?? 1,
  });
  log.info({ instanceType: metadata.instanceType, ...info, maxVolumesPerNode }, "attachment limit");
  return maxVolumesPerNode;
}
