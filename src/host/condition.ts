import { readFile, readlink, stat } from "node:fs/promises";
import path from "node:path";
import { findMountsAt, type MountEntry } from "./mounts.ts";

/** The CSI VolumeCondition of a mounted filesystem. */
export interface FilesystemCondition {
  abnormal: boolean;
  message: string;
}

const HEALTHY: FilesystemCondition = { abnormal: false, message: "" };
/** errno codes of a filesystem that is mounted but no longer usable (shut down, device gone, stale NFS). */
const BROKEN_FS_ERRORS = new Set(["EIO", "ENOTCONN", "ESTALE", "EUCLEAN", "ENODEV", "ENXIO", "EHOSTDOWN"]);

/**
 * What the mount table says about a mounted filesystem's health:
 * - errors=remount-ro made the kernel mark the filesystem read-only. Older kernels show that as
 *   "ro" in the super options while the mount itself still says "rw"; recent ones (seen on 6.18)
 *   keep "rw" and add "emergency_ro".
 * - "shutdown": ext4 was shut down (EXT4_IOC_SHUTDOWN, or an error with errors=shutdown).
 * - a mount that the caller asked read-write but shows "ro".
 */
export function conditionFromMount(
  entry: MountEntry,
  opts: { readOnlyRequested?: boolean } = {},
): FilesystemCondition {
  const where = `${entry.fsType} on ${entry.source} at ${entry.mountPoint}`;
  if (entry.superOptions.includes("shutdown")) {
    return { abnormal: true, message: `${where} was shut down after an error: every access fails` };
  }
  const mountRw = entry.mountOptions.includes("rw");
  if (mountRw && (entry.superOptions.includes("emergency_ro") || entry.superOptions.includes("ro"))) {
    return {
      abnormal: true,
      message: `the kernel made ${where} read-only after a filesystem error (${entry.superOptions.join(",")})`,
    };
  }
  if (opts.readOnlyRequested === false && entry.mountOptions.includes("ro")) {
    return { abnormal: true, message: `${where} is mounted read-only, read-write was requested` };
  }
  return HEALTHY;
}

/**
 * The health of the filesystem mounted at mountPath, for NodeGetVolumeStats' VOLUME_CONDITION:
 * not mounted; not accessible (xfs shuts down rather than going read-only: statfs still answers
 * but stat gives EIO); made read-only or shut down by the kernel; or, for ext*, errors recorded in
 * the superblock that a fsck has not cleared yet.
 */
export async function checkFilesystemCondition(
  mountPath: string,
  opts: {
    readOnlyRequested?: boolean /** The mount at mountPath, when the caller has read it already. */;
    mount?: MountEntry;
  } = {},
): Promise<FilesystemCondition> {
  const top = opts.mount ?? (await findMountsAt(mountPath)).at(-1);
  if (!top) return { abnormal: true, message: `nothing is mounted at ${mountPath}` };
  try {
    await stat(mountPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (BROKEN_FS_ERRORS.has(code)) {
      return {
        abnormal: true,
        message: `${top.fsType} at ${mountPath} is not accessible (${code}): the filesystem was shut down or its device is gone`,
      };
    }
    throw err;
  }
  const fromMount = conditionFromMount(top, opts);
  if (fromMount.abnormal) return fromMount;
  if (top.fsType.startsWith("ext")) {
    const errors = await ext4ErrorCount(top);
    if (errors > 0) {
      return {
        abnormal: true,
        message: `${top.fsType} on ${top.source} has recorded ${errors} error(s) since its last fsck`,
      };
    }
  }
  return HEALTHY;
}

/** ext4 keeps an error counter in its superblock; /sys/fs/ext4/<device name>/errors_count shows it. */
async function ext4ErrorCount(entry: MountEntry): Promise<number> {
  try {
    const name = path.basename(await readlink(`/sys/dev/block/${entry.major}:${entry.minor}`));
    return Number((await readFile(`/sys/fs/ext4/${name}/errors_count`, "utf8")).trim()) || 0;
  } catch {
    return 0; // Not a block device filesystem, or a kernel without the counter: nothing to report.
  }
}
