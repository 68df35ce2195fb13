import { type BigIntStatsFs, statfsSync } from "node:fs";
import { open, readFile, stat, statfs } from "node:fs/promises";
import { currentCallSignal } from "../call-scope.ts";
import { bounded } from "./bounded.ts";
import { CommandError, run } from "./exec.ts";
import { mount, splitDevNumber } from "./mounts.ts";

/** Filesystems the node formats and grows. */
export const FS_TYPES = ["ext2", "ext3", "ext4", "xfs"] as const;
export type FsType = (typeof FS_TYPES)[number];

export const isSupportedFsType = (s: string): s is FsType => (FS_TYPES as readonly string[]).includes(s);
const isExtFamily = (fsType: string): boolean => fsType === "ext2" || fsType === "ext3" || fsType === "ext4";

const PROBE_TIMEOUT_MS = 30_000;
/** mkfs and resize of a large volume (discard, inode tables) take longer than a mount. */
const FORMAT_TIMEOUT_MS = 10 * 60_000;
const RESIZE_TIMEOUT_MS = 10 * 60_000;
/** blkid -p: 2 = no signature found, 8 = several signatures that contradict each other. */
const BLKID_NOTHING_FOUND = 2;
const BLKID_AMBIVALENT = 8;

/** What blkid's low-level probe found on a device. */
export interface DeviceProbe {
  /** TYPE: a filesystem or other content signature (xfs, ext4, swap, LVM2_member, crypto_LUKS…). */
  fsType: string | undefined;
  /** PTTYPE: a partition table (dos, gpt). */
  ptType: string | undefined;
  uuid: string | undefined;
  label: string | undefined;
  /** blkid found signatures that contradict each other: treat as "holds data". */
  ambivalent: boolean;
  /** Every key blkid printed. */
  values: Record<string, string>;
}

/** True when nothing at all was recognised on the device: the only state in which it may be formatted. */
export const isBlank = (p: DeviceProbe): boolean => !p.fsType && !p.ptType && !p.ambivalent;

/** Parses `blkid -o export`: KEY=value lines, special characters in values escaped with a backslash. */
export function parseBlkidExport(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq <= 0) continue;
    values[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, "$1");
  }
  return values;
}

/**
 * Probes the device itself (`-p` bypasses blkid's cache, which can be stale right after attach).
 * blkid also answers "nothing found" for a path that does not exist or cannot be read, so the
 * device is checked first: a missing device must never look blank.
 */
export async function probeDevice(device: string): Promise<DeviceProbe> {
  await assertReadableBlockDevice(device);
  const { stdout, code } = await run("blkid", ["-p", "-o", "export", "--", device], {
    okCodes: [0, BLKID_NOTHING_FOUND, BLKID_AMBIVALENT],
    timeoutMs: PROBE_TIMEOUT_MS,
    signal: currentCallSignal(),
  });
  const values = parseBlkidExport(stdout);
  return {
    fsType: values["TYPE"] || undefined,
    ptType: values["PTTYPE"] || undefined,
    uuid: values["UUID"] || undefined,
    label: values["LABEL"] || undefined,
    ambivalent: code === BLKID_AMBIVALENT,
    values,
  };
}

async function assertReadableBlockDevice(device: string): Promise<void> {
  const st = await bounded(`stat ${device}`, () => stat(device));
  if (!st.isBlockDevice()) throw new Error(`${device} is not a block device`);
  const handle = await bounded(`open ${device}`, () => open(device, "r"));
  try {
    await bounded(`read ${device}`, () => handle.read(Buffer.alloc(4096), 0, 4096, 0));
  } finally {
    await handle.close();
  }
}

/** blockdev takes no "--": an absolute path can never be read as an option. */
function assertAbsolute(p: string, what: string): void {
  if (!p.startsWith("/")) throw new Error(`${what} must be an absolute path, not "${p}"`);
}

export async function deviceSizeBytes(device: string): Promise<number> {
  assertAbsolute(device, "device");
  const { stdout } = await run("blockdev", ["--getsize64", device], {
    timeoutMs: PROBE_TIMEOUT_MS,
    signal: currentCallSignal(),
  });
  const size = Number(stdout.trim());
  if (!Number.isSafeInteger(size) || size < 0)
    throw new Error(`blockdev --getsize64 ${device}: bad output "${stdout}"`);
  return size;
}

/** sysfs gives a block device's size in 512-byte sectors, whatever its logical block size. */
const SYSFS_SECTOR_BYTES = 512;

/**
 * The size of the block device with device number rdev (found at path), read from sysfs: no
 * process is started for it, as kubelet asks for a block volume's size every minute. Where sysfs
 * does not say, `blockdev --getsize64 path` does.
 */
export async function blockDeviceSizeBytes(rdev: number, path: string): Promise<number> {
  const { major, minor } = splitDevNumber(BigInt(rdev));
  const sizeFile = `/sys/dev/block/${major}:${minor}/size`;
  const text = await bounded(`read ${sizeFile}`, () => readFile(sizeFile, "utf8")).catch(() => undefined);
  const sectors = Number(text?.trim() || Number.NaN);
  if (Number.isSafeInteger(sectors * SYSFS_SECTOR_BYTES) && sectors >= 0) return sectors * SYSFS_SECTOR_BYTES;
  return deviceSizeBytes(path);
}

/**
 * Runs mkfs. The caller must have seen the device blank (safeFormatAndMount does): no force flag
 * is passed, so that mkfs itself is a second guard where it has one.
 * - ext*: no -F. mke2fs checks for an existing filesystem only when stdin and stdout are a
 *   terminal, so -F would not change what it overwrites here; without it, any other "does this
 *   make sense?" question reads EOF from the closed stdin and fails instead of going ahead.
 *   -m0: no blocks reserved for root (5% by default) on a data volume, as the official driver does,
 *   so df shows the same free space after a switch.
 * - xfs: no -f. mkfs.xfs then refuses a device with any filesystem or partition table signature.
 */
export async function formatDevice(
  device: string,
  fsType: FsType,
  opts: { mkfsOptions?: string[]; timeoutMs?: number } = {},
): Promise<void> {
  const args = [...(isExtFamily(fsType) ? ["-m0"] : []), ...(opts.mkfsOptions ?? []), "--", device];
  await run(`mkfs.${fsType}`, args, { timeoutMs: opts.timeoutMs ?? FORMAT_TIMEOUT_MS });
}

/**
 * The official EBS driver's format keys. It lowercases StorageClass keys into the volume context;
 * we accept any case. `fsTypes` lists where mkfs has the option (the official driver rejects the rest).
 */
const MKFS_KEYS: readonly {
  key: string;
  fsTypes: readonly FsType[];
  toArgs: (value: string, fsType: FsType) => string[];
}[] = [
  {
    key: "blockSize",
    fsTypes: ["ext2", "ext3", "ext4", "xfs"],
    toArgs: (v, fs) => ["-b", fs === "xfs" ? `size=${v}` : v],
  },
  {
    key: "inodeSize",
    fsTypes: ["ext2", "ext3", "ext4", "xfs"],
    toArgs: (v, fs) => (fs === "xfs" ? ["-i", `size=${v}`] : ["-I", v]),
  },
  { key: "bytesPerInode", fsTypes: ["ext2", "ext3", "ext4"], toArgs: (v) => ["-i", v] },
  { key: "numberOfInodes", fsTypes: ["ext2", "ext3", "ext4"], toArgs: (v) => ["-N", v] },
  {
    key: "ext4BigAlloc",
    fsTypes: ["ext4"],
    toArgs: (v) => (v.toLowerCase() === "true" ? ["-O", "bigalloc"] : []),
  },
  { key: "ext4ClusterSize", fsTypes: ["ext4"], toArgs: (v) => ["-C", v] },
];

export type MkfsArgsResult = { ok: true; args: string[] } | { ok: false; key: string; reason: string };

/**
 * Turns the format keys of a volume context (blockSize, inodeSize, bytesPerInode, numberOfInodes,
 * ext4BigAlloc, ext4ClusterSize; other keys are ignored) into mkfs arguments for fsType. A key that
 * does not apply to fsType, or a malformed value, gives { ok: false } naming the key, for the caller
 * to turn into INVALID_ARGUMENT. Values are alphanumeric as in the official driver (mkfs accepts
 * suffixes such as "4k"), which also keeps them from being read as flags.
 */
export function mkfsArgsFromVolumeContext(fsType: FsType, context: Record<string, string>): MkfsArgsResult {
  const byLowerKey = new Map(
    Object.entries(context).map(([k, v]) => [k.toLowerCase(), { key: k, value: v }]),
  );
  const args: string[] = [];
  for (const spec of MKFS_KEYS) {
    const found = byLowerKey.get(spec.key.toLowerCase());
    if (!found) continue;
    const { key, value } = found;
    if (!spec.fsTypes.includes(fsType)) {
      return { ok: false, key, reason: `not supported with filesystem type ${fsType}` };
    }
    if (spec.key === "ext4BigAlloc") {
      if (!/^(true|false)$/i.test(value))
        return { ok: false, key, reason: `must be "true" or "false", not "${value}"` };
    } else if (!/^[A-Za-z0-9]+$/.test(value)) {
      return { ok: false, key, reason: `must be alphanumeric (e.g. 4096), not "${value}"` };
    }
    args.push(...spec.toArgs(value, fsType));
  }
  if (args.includes("-C") && !args.includes("bigalloc")) {
    const key = byLowerKey.get("ext4clustersize")?.key ?? "ext4ClusterSize";
    return { ok: false, key, reason: "needs ext4BigAlloc=true (mkfs.ext4 -C requires the bigalloc feature)" };
  }
  return { ok: true, args };
}

export type FormatRefusal = "other-filesystem" | "partition-table" | "ambiguous-signatures";

/** safeFormatAndMount found data on the device and left it untouched. */
export class FormatRefusedError extends Error {
  readonly device: string;
  readonly requestedFsType: string;
  readonly reason: FormatRefusal;
  /** The filesystem or partition table type found on the device. */
  readonly found: string;

  constructor(device: string, requestedFsType: string, reason: FormatRefusal, found: string) {
    const what =
      reason === "other-filesystem"
        ? `it already holds a filesystem of type ${found}, not ${requestedFsType}`
        : reason === "partition-table"
          ? `it has a partition table (${found})`
          : `blkid found contradicting signatures on it (${found})`;
    super(`refusing to format ${device} as ${requestedFsType}: ${what}; its data was left untouched`);
    this.name = "FormatRefusedError";
    this.device = device;
    this.requestedFsType = requestedFsType;
    this.reason = reason;
    this.found = found;
  }
}

/**
 * Whether a device holding `found` may be mounted as `requested`. The ext4 driver mounts ext2 and
 * ext3 without changing their on-disk format, and the official driver (mount -t ext4) accepts them.
 */
export const isCompatibleFs = (requested: FsType, found: string): boolean =>
  found === requested || (requested === "ext4" && (found === "ext2" || found === "ext3"));

/**
 * Mounts device at target as fsType, formatting it first only if blkid finds nothing at all on it.
 * Another filesystem, a partition table or contradicting signatures give a FormatRefusedError and
 * nothing is written. xfs is mounted with nouuid, so a volume restored from a snapshot can be mounted
 * next to its origin (same UUID) on one node.
 */
export async function safeFormatAndMount(
  device: string,
  target: string,
  fsType: FsType,
  mountOptions: string[] = [],
  mkfsOptions: string[] = [],
): Promise<{ formatted: boolean; foundFsType: string | undefined }> {
  const probe = await probeDevice(device);
  if (probe.ambivalent) {
    const found = [probe.fsType, probe.ptType].filter(Boolean).join(", ") || "unknown";
    throw new FormatRefusedError(device, fsType, "ambiguous-signatures", found);
  }
  if (probe.ptType) throw new FormatRefusedError(device, fsType, "partition-table", probe.ptType);
  if (probe.fsType && !isCompatibleFs(fsType, probe.fsType)) {
    throw new FormatRefusedError(device, fsType, "other-filesystem", probe.fsType);
  }
  const formatted = !probe.fsType;
  if (formatted) await formatDevice(device, fsType, { mkfsOptions });
  const options =
    fsType === "xfs" && !mountOptions.includes("nouuid") ? [...mountOptions, "nouuid"] : mountOptions;
  await mount(device, target, fsType, options);
  return { formatted, foundFsType: probe.fsType };
}

/**
 * Grows the filesystem to fill its (grown) device, online. Idempotent: both tools succeed and do
 * nothing when the filesystem already has the device's size.
 */
export async function resizeFilesystem(device: string, mountPath: string, fsType: FsType): Promise<void> {
  if (fsType === "xfs") {
    await run("xfs_growfs", ["-d", "--", mountPath], { timeoutMs: RESIZE_TIMEOUT_MS });
    return;
  }
  try {
    await run("resize2fs", ["--", device], { timeoutMs: RESIZE_TIMEOUT_MS });
  } catch (err) {
    // The kernel's EXT4_IOC_RESIZE_FS demands CAP_SYS_RESOURCE, which unprivileged containers lack.
    if (err instanceof CommandError && /Permission denied to resize/.test(err.stderr)) {
      throw new Error(
        `${err.message} (online ext4 resize needs CAP_SYS_RESOURCE: run the node plugin privileged)`,
        {
          cause: err,
        },
      );
    }
    throw err;
  }
}

export interface FsStats {
  totalBytes: number;
  availableBytes: number;
  usedBytes: number;
  totalInodes: number;
  freeInodes: number;
  usedInodes: number;
}

/**
 * Space and inodes of the filesystem holding path. "available" is what an unprivileged user can
 * still write (bavail), "used" counts from the free blocks (bfree), as df does. Read as bigint:
 * NFS reports ~8 EiB, beyond 2^53; the numbers lose precision there, never sign.
 */
export async function fsStats(path: string): Promise<FsStats> {
  return toFsStats(await bounded(`statfs ${path}`, () => statfs(path, { bigint: true })));
}

/**
 * fsStats on the calling thread, for a filesystem that answers statfs from memory (see
 * answersFromMemory): no thread-pool round trip, and no bound either.
 */
export function fsStatsNow(path: string): FsStats {
  return toFsStats(statfsSync(path, { bigint: true }));
}

/**
 * Whether statfs, and lstat of the filesystem's root, are answered from memory, never waiting for
 * the disk, so that they may run on the event loop: ext2/3/4 keep their free counts in memory,
 * and a mounted root's inode is always cached. Not with project quotas, where statfs reads the
 * quota from disk; not xfs, whose statfs waits for its inode garbage collection on some kernels;
 * never a network filesystem.
 */
export function answersFromMemory(fsType: string, superOptions: readonly string[]): boolean {
  return /^ext[234]$/.test(fsType) && !superOptions.some((o) => o.includes("quota"));
}

function toFsStats(s: BigIntStatsFs): FsStats {
  return {
    totalBytes: Number(s.blocks * s.bsize),
    availableBytes: Number(s.bavail * s.bsize),
    usedBytes: Number((s.blocks - s.bfree) * s.bsize),
    totalInodes: Number(s.files),
    freeInodes: Number(s.ffree),
    usedInodes: Number(s.files - s.ffree),
  };
}

/**
 * The size the filesystem itself claims (not what statfs shows, which leaves out its metadata),
 * to tell whether a grown device still needs resizeFilesystem.
 */
export async function filesystemSizeBytes(
  device: string,
  mountPath: string,
  fsType: FsType,
): Promise<number> {
  if (fsType === "xfs") {
    // data     =                       bsize=4096   blocks=262144, imaxpct=25
    const { stdout } = await run("xfs_info", ["--", mountPath], { timeoutMs: PROBE_TIMEOUT_MS });
    const match = /^data\s+=\s+bsize=(\d+)\s+blocks=(\d+)/m.exec(stdout);
    if (!match) throw new Error(`xfs_info ${mountPath}: no data section in its output`);
    return Number(match[1]) * Number(match[2]);
  }
  const { stdout } = await run("dumpe2fs", ["-h", "--", device], { timeoutMs: PROBE_TIMEOUT_MS });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(stdout)?.[1]);
  const size = field("Block count") * field("Block size");
  if (!Number.isFinite(size))
    throw new Error(`dumpe2fs -h ${device}: no block count or block size in its output`);
  return size;
}
