/**
 * The EFS Node service: mounts a volume (a file system, a directory of it, or an access point) at
 * each pod's target path, as the official driver does: no staging, one mount per pod. What is
 * published is read from the mount table, never remembered. Each RPC reads validate -> look at
 * existing state (idempotency) -> act -> answer.
 *
 * An NFS mount whose server stops answering makes every syscall on it block, uninterruptibly for
 * this process: so nothing here touches a mounted target in-process. statfs and the usage walks
 * run as child processes with time limits, and a target is only created or removed when nothing
 * is mounted on it.
 */
import { constants } from "node:fs";
import { access, rmdir } from "node:fs/promises";
import {
  aborted,
  alreadyExists,
  asInternal,
  CsiError,
  notFound,
  permissionDenied,
  unavailable,
} from "../csi/errors.ts";
import type {
  NodeGetCapabilitiesResponse,
  NodeGetInfoResponse,
  NodeGetVolumeHealthRequest,
  NodeGetVolumeHealthResponse,
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodePublishVolumeResponse,
  NodeUnpublishVolumeRequest,
  NodeUnpublishVolumeResponse,
} from "../csi/types.ts";
import {
  ACCESS_MODES,
  type AccessMode,
  type CapabilityRules,
  checkCapability,
  checkMap,
  confinePath,
  requirePath,
  requireString,
} from "../csi/validate.ts";
import { requestedMounts, volumeHealthReply } from "../csi/volume-health.ts";
import { type FsStats, fsStats } from "../host/blockdev.ts";
import { bounded } from "../host/bounded.ts";
import { CommandError, run } from "../host/exec.ts";
import { type HealthIssue, healthFromMount } from "../host/health.ts";
import { findMountsAt, listMounts, type MountEntry, removeMountTarget, unmountAll } from "../host/mounts.ts";
import { type KubeletDirs, lstatOrUndefined, MAX_PATH_BYTES, makeDirectories } from "../host/paths.ts";
import type { Logger } from "../log.ts";
import type { RpcContext } from "../server/rpc.ts";
import { CapacityCache } from "./capacity.ts";
import type { Efs } from "./cloud.ts";
import { parseVolumeHandle, tryParseVolumeHandle, type VolumeHandle } from "./handle.ts";
import { EFS_MOUNT_HELPER, type EfsMountInput, efsMountCommand, mountMismatch } from "./mount.ts";
import { recordedCapacity } from "./tags.ts";
import { relayedMountCommand, type TlsMounts } from "./tls/tls-mounts.ts";
import { measureUsage } from "./usage-walk.ts";
import { VolumeUsageTracker } from "./volume-usage.ts";

/** The topology key of the node's zone (EFS itself is regional; One Zone file systems are not zoned here yet). */
export const ZONE_KEY = "topology.kubernetes.io/zone";

const CAPABILITY_RULES: CapabilityRules = { modes: ACCESS_MODES, block: false };
const READER_ONLY_MODES = new Set<AccessMode>(["SINGLE_NODE_READER_ONLY", "MULTI_NODE_READER_ONLY"]);

export interface EfsNodeOptions {
  instanceId: string;
  zone: string;
  region: string;
  /** The only place where the node creates, mounts or deletes anything. */
  kubeletDirs: KubeletDirs;
  /** For what the node does in the background (usage walks, capacity lookups), outside any RPC. */
  log: Logger;
  /** Reads access points' capacity tags (DescribeAccessPoints); without it the total is statfs's. */
  efs?: Pick<Efs, "describeAccessPoint"> | undefined;
  /** amazon-efs-utils' mount helper: when it exists volumes are mounted with `mount -t efs`, else `-t nfs4`. */
  efsHelperPath?: string | undefined;
  /** Without efs-utils: the TLS relays that TLS mounts go through. Without it, TLS mounts fail. */
  tlsMounts?: TlsMounts | undefined;
  /** Below kubelet's 2 minutes, so that a hung mount is answered rather than abandoned. */
  mountTimeoutMs?: number;
  /** An unmount that takes longer is forced (the server is gone): `umount --force --lazy`. */
  unmountTimeoutMs?: number;
  /** A statfs that takes longer marks the volume INACCESSIBLE (the server does not answer). */
  statsTimeoutMs?: number;
  /** How long an access point's capacity is reused before it is read again: an expansion shows up within it. */
  capacityTtlMs?: number;
  /** How often each published volume's tree is walked again for its usage. */
  usageRefreshMs?: number;
  /** Usage walks running at once on this node. */
  usageConcurrentWalks?: number;
  /** Entries a usage walk counts before it stops with partial figures. */
  usageWalkMaxEntries?: number;
  /** Milliseconds a usage walk runs before it stops with partial figures. */
  usageWalkMaxMs?: number;
}

const DEFAULTS = {
  efsHelperPath: EFS_MOUNT_HELPER,
  mountTimeoutMs: 100_000,
  unmountTimeoutMs: 30_000,
  statsTimeoutMs: 10_000,
  capacityTtlMs: 5 * 60_000,
  usageRefreshMs: 5 * 60_000,
  usageConcurrentWalks: 1,
  usageWalkMaxEntries: 1_000_000,
  usageWalkMaxMs: 15 * 60_000,
};

/**
 * How long a statfs's figures are reused for a mount. They only give the total of a volume without
 * a recorded capacity and the inode total (EFS reports fixed, huge numbers for both); used comes
 * from the walks, minutes apart. A server that stops answering shows in stats calls this much later.
 */
const STATFS_REUSE_MS = 10_000;
/** Mounts whose statfs is remembered: far above a node's EFS mounts, so only hostile input evicts. */
const MAX_STATFS_PROBES = 1024;
/** volume_path strings whose confined path is remembered, likewise. */
const MAX_STATS_PATHS = 1024;

/** One statfs of a mount, running or answered. */
interface StatfsProbe {
  /** The mount it was made on (its mount table line): another mount there is probed anew. */
  identity: string;
  /** When it answered; undefined while it runs. */
  settledAt: number | undefined;
  result: Promise<FsStats | HealthIssue>;
}

export class EfsNode {
  readonly #o: EfsNodeOptions & typeof DEFAULTS;
  /** By mount point; insertion order is age, for eviction. */
  readonly #statfsProbes = new Map<string, StatfsProbe>();
  /**
   * volume_path as asked -> as confined (KubeletDirs.confine), while something is mounted there:
   * a stats call then reads only the mount table. Only the confined path is ever looked at, so a
   * directory swapped for a link later leads nowhere outside; kubelet never swaps one.
   */
  readonly #statsPaths = new Map<string, string>();
  readonly #capacity: CapacityCache | undefined;
  readonly #usage: VolumeUsageTracker;

  constructor(options: EfsNodeOptions) {
    const o = { ...DEFAULTS, ...options };
    this.#o = o;
    const efs = o.efs;
    this.#capacity =
      efs &&
      new CapacityCache({
        lookup: async (accessPointId) => recordedCapacity(await efs.describeAccessPoint(accessPointId)),
        ttlMs: o.capacityTtlMs,
        log: o.log,
      });
    const limits = { maxEntries: o.usageWalkMaxEntries, maxMs: o.usageWalkMaxMs };
    this.#usage = new VolumeUsageTracker({
      log: o.log,
      refreshMs: o.usageRefreshMs,
      maxConcurrentWalks: o.usageConcurrentWalks,
      measure: (target, signal) => measureUsage(target, { ...limits, signal }),
      isMounted: async (target) => (await findMountsAt(target)).length > 0,
    });
  }

  /**
   * Before serving: relays again for the TLS mounts a previous run left (tls-mounts.ts), so that
   * their NFS clients reconnect on the ports they were mounted with.
   */
  async recoverTlsMounts(driverName: string): Promise<number> {
    const { tlsMounts, kubeletDirs } = this.#o;
    if (!tlsMounts) return 0;
    return tlsMounts.recover(
      await listMounts(),
      (path) => kubeletDirs.lexicalReason(path) === undefined,
      driverName,
    );
  }

  /** Stops the usage walks and the relays (plugin shutdown; the mounts stay, and reconnect to the next run). */
  async close(): Promise<void> {
    await this.#usage.close();
    await this.#o.tlsMounts?.closeAll();
  }

  async NodeGetInfo(): Promise<NodeGetInfoResponse> {
    // No attachment limit: NFS mounts use no device slots.
    return {
      node_id: this.#o.instanceId,
      max_volumes_per_node: 0,
      accessible_topology: { segments: { [ZONE_KEY]: this.#o.zone } },
    };
  }

  async NodeGetCapabilities(): Promise<NodeGetCapabilitiesResponse> {
    // No STAGE_UNSTAGE_VOLUME: like the official driver, each pod gets its own mount.
    const types = ["GET_VOLUME_STATS", "GET_VOLUME_HEALTH"] as const;
    return { capabilities: types.map((type) => ({ rpc: { type } })) };
  }

  async NodePublishVolume(
    req: NodePublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<NodePublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const targetField = requirePath(req.target_path, "target_path", this.#o.kubeletDirs);
    const cap = checkCapability(req.volume_capability, "volume_capability", CAPABILITY_RULES);
    const handle = parseVolumeHandle(volumeId);
    const context = checkMap(req.volume_context, "volume_context");
    checkMap(req.secrets, "secrets");
    const targetPath = await confinePath(targetField, "target_path", this.#o.kubeletDirs);
    const input: EfsMountInput = {
      handle,
      readOnly: req.readonly === true || READER_ONLY_MODES.has(cap.mode),
      mountFlags: cap.mountFlags,
      volumeContext: context,
      efsUtils: this.#o.efsHelperPath !== undefined && (await isExecutable(this.#o.efsHelperPath)),
      region: this.#o.region,
    };
    const command = efsMountCommand(input, targetPath);

    const existing = (await findMountsAt(targetPath)).at(-1);
    if (existing) {
      const mismatch = mountMismatch(existing, command, handle.fileSystemId);
      if (mismatch)
        throw alreadyExists(
          `target_path ${targetPath}: volume ${volumeId} is published there, but ${mismatch}`,
        );
      this.#startStats(volumeId, handle, targetPath);
      return {};
    }

    // Before anything is made: a mount target that refuses TLS fails here, named.
    const mount = await relayedMountCommand(input, targetPath, this.#o.tlsMounts);
    await makeDirectories(targetPath).catch(async (err: unknown) => {
      await this.#o.tlsMounts?.close(targetPath);
      throw asInternal(err, `creating target_path ${targetPath}`);
    });
    try {
      await run("mount", mount.args, { timeoutMs: this.#o.mountTimeoutMs });
    } catch (err) {
      await this.#o.tlsMounts?.close(targetPath);
      // A concurrent call removed the directory between its creation and the mount (kubelet never
      // does; a confused caller may): nothing was mounted, the call may simply be repeated.
      if (!(await lstatOrUndefined(targetPath))) {
        throw aborted(
          `target_path ${targetPath} was removed while volume ${volumeId} was being mounted; retry`,
        );
      }
      // The target is ours (the plugin creates it) and nothing is mounted on it: an empty directory.
      await bounded(`rmdir ${targetPath}`, () => rmdir(targetPath)).catch(() => undefined);
      throw mountError(err, volumeId, handle, targetPath);
    }
    if (mount.dropped.length > 0) ctx.log.warn({ volumeId, dropped: mount.dropped }, "mount flags ignored");
    ctx.log.info(
      { volumeId, targetPath, fsType: mount.fsType, source: mount.source, options: mount.options },
      "published",
    );
    this.#startStats(volumeId, handle, targetPath);
    return {};
  }

  /** Starts measuring the volume's usage and reading its capacity, so that stats calls find both ready. */
  #startStats(volumeId: string, handle: VolumeHandle, targetPath: string): void {
    this.#usage.track(volumeId, targetPath);
    if (handle.accessPointId) this.#capacity?.prefetch(handle.accessPointId);
  }

  async NodeUnpublishVolume(
    req: NodeUnpublishVolumeRequest,
    ctx: RpcContext,
  ): Promise<NodeUnpublishVolumeResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const targetField = requirePath(req.target_path, "target_path", this.#o.kubeletDirs);
    const targetPath = await confinePath(targetField, "target_path", this.#o.kubeletDirs);
    // A walk of this target holds directories open in it: it would make the unmount fail as busy.
    await this.#usage.untrack(volumeId, targetPath);
    const count = await this.#unmount(targetPath, ctx).catch((err: unknown) => {
      throw asInternal(err, `unpublishing volume ${volumeId} from ${targetPath}`);
    });
    await this.#o.tlsMounts?.close(targetPath);
    await removeMountTarget(targetPath).catch((err: unknown) => {
      throw asInternal(err, `removing target_path ${targetPath}`);
    });
    if (count > 0) ctx.log.info({ volumeId, targetPath }, "unpublished");
    return {};
  }

  /**
   * The PV's figures, from memory and one statfs; no tree is walked here.
   * - bytes: total is the PV's capacity (the access point's capacity tag; statfs's ~8 EiB for a
   *   static volume or when the tag cannot be read); used is the volume's own usage from the last
   *   background walk of its tree, since EFS's statfs counts the whole file system.
   * - inodes: total is statfs's (EFS reports a huge number), used is the walk's entry count.
   * Until the first walk has finished, used is 0 and available the whole total. An empty usage
   * list would be worse: kubelet before 1.32 drops the volume's stats for an
   * empty list, and from 1.32 (kubernetes#127021) reports every figure as 0, the capacity too.
   */
  async NodeGetVolumeStats(req: NodeGetVolumeStatsRequest): Promise<NodeGetVolumeStatsResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const volumePathField = requireString(req.volume_path, "volume_path", MAX_PATH_BYTES);
    const handle = tryParseVolumeHandle(volumeId);
    if (!handle) throw notFound(`volume ${volumeId} does not exist: it is not an EFS volume handle`);
    // A path outside the kubelet directory holds no volume of ours (csi-sanity sends a relative
    // one and expects NOT_FOUND): nothing there is looked at. The error is made only when thrown:
    // it captures a stack, and most calls find their volume.
    const notThere = () =>
      notFound(`volume_path ${volumePathField}: volume ${volumeId} is not published there`);
    // A path confined before, with a mount still there, is not resolved again (see #statsPaths).
    let volumePath = this.#statsPaths.get(volumePathField);
    if (volumePath === undefined && this.#o.kubeletDirs.lexicalReason(volumePathField)) throw notThere();
    // One read of the mount table for both; confine resolves the parents as the table shows them.
    const mounts = await listMounts();
    if (volumePath === undefined) {
      const confined = await this.#o.kubeletDirs.confine(volumePathField, { mounts });
      if (!confined.ok) throw notThere();
      volumePath = confined.path;
    }
    const entry = mounts.filter((m) => m.mountPoint === volumePath).at(-1);
    if (!entry) {
      this.#statsPaths.delete(volumePathField);
      this.#statfsProbes.delete(volumePath);
      throw notThere();
    }
    if (!this.#statsPaths.has(volumePathField)) {
      if (this.#statsPaths.size >= MAX_STATS_PATHS) {
        this.#statsPaths.delete(this.#statsPaths.keys().next().value ?? "");
      }
      this.#statsPaths.set(volumePathField, volumePath);
    }
    const mountedFs = nfsFileSystemId(entry);
    if (mountedFs !== undefined && mountedFs !== handle.fileSystemId) {
      throw notFound(
        `volume_path ${volumePathField}: file system ${mountedFs} is mounted there, not ${handle.fileSystemId} of volume ${volumeId}`,
      );
    }

    const probed = await this.#statfs(entry);
    // A server that does not answer: NodeGetVolumeHealth reports it, kubelet retries this.
    if ("status" in probed) throw unavailable(probed.message);
    // After a plugin restart nothing is tracked: the first stats call starts the walks.
    this.#usage.track(volumeId, volumePath);
    const capacity = handle.accessPointId ? await this.#capacity?.get(handle.accessPointId) : undefined;
    const totalBytes = capacity ?? probed.totalBytes;
    const used = this.#usage.usage(volumeId) ?? { bytes: 0, inodes: 0 };
    return {
      usage: [
        {
          unit: "BYTES",
          total: totalBytes,
          available: Math.max(0, totalBytes - used.bytes),
          used: used.bytes,
        },
        {
          unit: "INODES",
          total: probed.totalInodes,
          available: Math.max(0, probed.totalInodes - used.inodes),
          used: used.inodes,
        },
      ],
    };
  }

  /**
   * statfs of the mount, in a child process (statFilesystem), its figures reused for
   * STATFS_REUSE_MS while the same mount is there: a burst of callers (kubelet, a monitoring
   * agent) costs one `stat` process, and concurrent calls share the one running. Only an answer is
   * reused: a server that did not answer is asked again by the next call.
   */
  #statfs(entry: MountEntry): Promise<FsStats | HealthIssue> {
    // Mount ids and anonymous device numbers are reused at once: the whole line tells mounts
    // apart (options too: efs-utils' TLS mounts differ only in their local port). The same line
    // again is the same file system: the totals read from it here are the same.
    const identity = [
      entry.id,
      `${entry.major}:${entry.minor}`,
      entry.root,
      entry.fsType,
      entry.source,
      entry.mountOptions.join(","),
      entry.superOptions.join(","),
    ].join(" ");
    const known = this.#statfsProbes.get(entry.mountPoint);
    if (
      known?.identity === identity &&
      (known.settledAt === undefined || Date.now() - known.settledAt < STATFS_REUSE_MS)
    ) {
      return known.result;
    }
    if (!known && this.#statfsProbes.size >= MAX_STATFS_PROBES) {
      this.#statfsProbes.delete(this.#statfsProbes.keys().next().value ?? "");
    }
    const probe: StatfsProbe = {
      identity,
      settledAt: undefined,
      result: statFilesystem(entry.mountPoint, this.#o.statsTimeoutMs),
    };
    const forget = () => {
      if (this.#statfsProbes.get(entry.mountPoint) === probe) this.#statfsProbes.delete(entry.mountPoint);
    };
    probe.result.then((r) => {
      if ("status" in r) forget();
      else probe.settledAt = Date.now();
    }, forget);
    this.#statfsProbes.set(entry.mountPoint, probe);
    return probe.result;
  }

  /**
   * The volume as this node sees it: a server that does not answer statfs within statsTimeoutMs
   * (probed in a child process, so a dead server costs a killed `stat`), or a mount the kernel
   * made read-only. The paths are optional (csi-sanity sends none): without a mounted one, the
   * NFS mounts of the volume's file system in the kubelet directory are probed; with none, nothing
   * adverse is known, as EFS is a network file system that any node may mount.
   */
  async NodeGetVolumeHealth(req: NodeGetVolumeHealthRequest): Promise<NodeGetVolumeHealthResponse> {
    const volumeId = requireString(req.volume_id, "volume_id");
    const handle = tryParseVolumeHandle(volumeId);
    if (!handle) throw notFound(`volume ${volumeId} does not exist: it is not an EFS volume handle`);
    const answer = (issues: HealthIssue[]) => volumeHealthReply(volumeId, issues);
    for await (const { mounts } of requestedMounts(req, this.#o.kubeletDirs, volumeId)) {
      const entry = mounts.at(-1);
      if (entry) return answer(await this.#probeHealth(entry));
    }
    for (const entry of await listMounts()) {
      if (nfsFileSystemId(entry) !== handle.fileSystemId) continue;
      if (!(await this.#o.kubeletDirs.confine(entry.mountPoint)).ok) continue;
      return answer(await this.#probeHealth(entry));
    }
    return answer([]);
  }

  async #probeHealth(entry: MountEntry): Promise<HealthIssue[]> {
    const probed = await statFilesystem(entry.mountPoint, this.#o.statsTimeoutMs);
    if ("status" in probed) return [probed];
    return healthFromMount(entry);
  }

  /** Unmounts everything at target; a server that stopped answering gets a forced, lazy unmount. */
  async #unmount(targetPath: string, ctx: RpcContext): Promise<number> {
    const timeoutMs = this.#o.unmountTimeoutMs;
    try {
      return await unmountAll(targetPath, { timeoutMs });
    } catch (err) {
      if (!(err instanceof CommandError && err.timedOut)) throw err;
      ctx.log.warn({ targetPath, timeoutMs }, "unmount timed out (is the EFS server reachable?): forcing it");
      await run("umount", ["--force", "--lazy", "--", targetPath], { timeoutMs });
      return 1 + (await unmountAll(targetPath, { timeoutMs }));
    }
  }
}

/**
 * statfs of a mounted path in a child process, so that a server that does not answer costs a
 * killed `stat`, not one of this process's few I/O threads. Without GNU stat it falls back to an
 * in-process statfs.
 */
export async function statFilesystem(path: string, timeoutMs: number): Promise<FsStats | HealthIssue> {
  let stdout: string;
  try {
    ({ stdout } = await run("stat", ["--file-system", "--format=%S %b %f %a %c %d", "--", path], {
      timeoutMs,
    }));
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    if (err.timedOut) {
      return {
        status: "INACCESSIBLE",
        reason: "ServerNotResponding",
        message: `the file system at ${path} did not answer statfs within ${timeoutMs / 1000} s: is the EFS server reachable?`,
      };
    }
    if (err.exitCode === null && err.signal === null) return fsStats(path);
    return {
      status: "INACCESSIBLE",
      reason: "FilesystemUnusable",
      message: `the file system at ${path} is not usable: ${err.stderr.trim() || err.message}`,
    };
  }
  const [blockSize = 0, blocks = 0, free = 0, available = 0, files = 0, freeFiles = 0] = stdout
    .trim()
    .split(/\s+/)
    .map(Number);
  return {
    totalBytes: blocks * blockSize,
    availableBytes: available * blockSize,
    usedBytes: (blocks - free) * blockSize,
    totalInodes: files,
    freeInodes: freeFiles,
    usedInodes: files - freeFiles,
  };
}

/**
 * The EFS file system an NFS mount names by DNS (fs-xxx.efs.<region>...), or undefined when its
 * source does not say (efs-utils with TLS mounts through a local port, 127.0.0.1:/).
 */
function nfsFileSystemId(entry: MountEntry): string | undefined {
  if (!/^(nfs4?|efs)$/.test(entry.fsType)) return undefined;
  const host = entry.source.slice(0, entry.source.lastIndexOf(":"));
  return /^(fs-[0-9a-f]+)(\.|$)/.exec(host)?.[1];
}

async function isExecutable(path: string): Promise<boolean> {
  return access(path, constants.X_OK).then(
    () => true,
    () => false,
  );
}

/**
 * A failed mount as the caller sees it: a file system that does not resolve, or a directory the
 * server does not have, is a volume that does not exist; anything else is the node's problem.
 */
function mountError(err: unknown, volumeId: string, handle: VolumeHandle, targetPath: string): CsiError {
  if (err instanceof CsiError) return err;
  if (err instanceof CommandError && !err.timedOut) {
    const output = `${err.stderr}\n${err.stdout}`;
    if (/Failed to resolve/i.test(output)) {
      return notFound(`volume ${volumeId}: file system ${handle.fileSystemId} was not found: ${err.message}`);
    }
    if (/access denied by server/i.test(output)) {
      return permissionDenied(
        `volume ${volumeId}: ${handle.fileSystemId} refused the mount (does access point ${handle.accessPointId ?? "-"} exist, and does the file system policy allow this node?): ${err.message}`,
      );
    }
    if (/reason given by server: No such file or directory/i.test(output)) {
      return notFound(
        `volume ${volumeId}: directory ${handle.path} does not exist on ${handle.fileSystemId}: ${err.message}`,
      );
    }
  }
  return asInternal(err, `mounting volume ${volumeId} at ${targetPath}`);
}
