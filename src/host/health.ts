import { readFile, readlink, stat } from "node:fs/promises";
import path from "node:path";
import { findMountsAt, type MountEntry } from "./mounts.ts";

/**
 * One adverse condition of a volume, as CSI's VolumeHealthEntry states it (spec v1.14):
 * - DEGRADED: usable, not operating optimally (read-only after an error, errors awaiting fsck);
 * - INACCESSIBLE: not accessible from this node (shut down, device gone, server not answering);
 * - DATA_LOSS: permanent loss known or strongly suspected. Nothing the node sees proves that: a
 *   shut-down or read-only filesystem keeps what it had written, so this module never reports it.
 */
export interface HealthIssue {
  status: "DEGRADED" | "INACCESSIBLE" | "DATA_LOSS";
  /** CamelCase, unique per volume with its status. */
  reason: string;
  message: string;
}

/** errno codes of a filesystem that is mounted but no longer usable (shut down, device gone, stale NFS). */
const BROKEN_FS_ERRORS = new Set(["EIO", "ENOTCONN", "ESTALE", "EUCLEAN", "ENODEV", "ENXIO", "EHOSTDOWN"]);

/**
 * What the mount table says about a mounted filesystem's health:
 * - "shutdown": ext4 was shut down (EXT4_IOC_SHUTDOWN, or an error with errors=shutdown).
 * - errors=remount-ro made the kernel mark the filesystem read-only. Older kernels show that as
 *   "ro" in the super options while the mount itself still says "rw"; recent ones (seen on 6.18)
 *   keep "rw" and add "emergency_ro".
 */
export function healthFromMount(entry: MountEntry): HealthIssue[] {
  const where = `${entry.fsType} on ${entry.source} at ${entry.mountPoint}`;
  if (entry.superOptions.includes("shutdown")) {
    return [
      {
        status: "INACCESSIBLE",
        reason: "FilesystemShutDown",
        message: `${where} was shut down after an error: every access fails`,
      },
    ];
  }
  const mountRw = entry.mountOptions.includes("rw");
  if (mountRw && (entry.superOptions.includes("emergency_ro") || entry.superOptions.includes("ro"))) {
    return [
      {
        status: "DEGRADED",
        reason: "ReadOnlyAfterError",
        message: `the kernel made ${where} read-only after a filesystem error (${entry.superOptions.join(",")}): reads work, writes fail`,
      },
    ];
  }
  return [];
}

/**
 * The health of the filesystem mounted at mountPath: nothing mounted; not accessible (xfs shuts
 * down rather than going read-only: statfs still answers but stat gives EIO); made read-only or
 * shut down by the kernel; or, for ext*, errors recorded in the superblock that a fsck has not
 * cleared yet. An empty list: nothing adverse is known.
 */
export async function checkFilesystemHealth(
  mountPath: string,
  opts: {
    /** The mount at mountPath, when the caller has read it already. */
    mount?: MountEntry;
  } = {},
): Promise<HealthIssue[]> {
  const top = opts.mount ?? (await findMountsAt(mountPath)).at(-1);
  if (!top) {
    return [{ status: "INACCESSIBLE", reason: "NotMounted", message: `nothing is mounted at ${mountPath}` }];
  }
  try {
    await stat(mountPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (!BROKEN_FS_ERRORS.has(code)) throw err;
    return [
      {
        status: "INACCESSIBLE",
        reason: "FilesystemShutDown",
        message: `${top.fsType} at ${mountPath} is not accessible (${code}): the filesystem was shut down or its device is gone`,
      },
    ];
  }
  const issues = healthFromMount(top);
  if (issues.some((i) => i.status === "INACCESSIBLE")) return issues;
  if (top.fsType.startsWith("ext")) {
    const errors = await ext4ErrorCount(top);
    if (errors > 0) {
      issues.push({
        status: "DEGRADED",
        reason: "FilesystemErrorsRecorded",
        message: `${top.fsType} on ${top.source} has recorded ${errors} error(s) since its last fsck: run fsck while it is unmounted`,
      });
    }
  }
  return issues;
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
