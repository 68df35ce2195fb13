/**
 * Deleting an access point's root directory, for DeleteVolume with --delete-access-point-root-dir:
 * the controller mounts the file system's root on a temporary directory with the same mount
 * command the node uses, deletes that one directory, unmounts and removes the temporary directory.
 * controller.ts has already refused `/`, the basePath, paths outside it and directories that other
 * access points use; this file refuses to follow a symbolic link out of the mount.
 */
import { constants } from "node:fs";
import { access, lstat, mkdtemp, rm, rmdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { failedPrecondition } from "../csi/errors.ts";
import { run } from "../host/exec.ts";
import { findMountsAt, unmountAll } from "../host/mounts.ts";
import type { Logger } from "../log.ts";
import type { DeleteRootDirectory } from "./controller.ts";
import type { EfsMountInput } from "./mount.ts";
import { relayedMountCommand, type TlsMounts } from "./tls/tls-mounts.ts";

export interface RootDirectoryDeletionOptions {
  /** The region of the file systems, for their DNS names when mounting with plain NFS. */
  region: string;
  log: Logger;
  /** amazon-efs-utils' mount helper, used when it exists; undefined: never. */
  efsHelperPath: string | undefined;
  /** Where the temporary mount points are made; default the OS temporary directory. */
  tmpDir?: string;
  mountTimeoutMs?: number;
  /** Without efs-utils: the TLS relays its mount goes through (as a node's do). */
  tlsMounts?: TlsMounts | undefined;
}

export function createRootDirectoryDeletion(o: RootDirectoryDeletionOptions): DeleteRootDirectory {
  const timeoutMs = o.mountTimeoutMs ?? 100_000;
  return async (fileSystemId, path) => {
    const relative = posix.relative("/", posix.resolve("/", path));
    if (relative === "") throw failedPrecondition(`refusing to delete the root of ${fileSystemId}`);
    const helper = o.efsHelperPath;
    const efsUtils =
      helper !== undefined &&
      (await access(helper, constants.X_OK).then(
        () => true,
        () => false,
      ));
    // As the official driver mounts for this: TLS, and IAM (the controller's role needs ClientRootAccess).
    const input: EfsMountInput = {
      handle: { fileSystemId, path: "/" },
      readOnly: false,
      mountFlags: ["iam"],
      volumeContext: {},
      efsUtils,
      region: o.region,
    };
    const mountDir = await mkdtemp(join(o.tmpDir ?? tmpdir(), `efs-root-${fileSystemId}-`));
    let failure: unknown;
    try {
      const command = await relayedMountCommand(input, mountDir, o.tlsMounts);
      await run("mount", command.args, { timeoutMs });
      // Deleting below an unmounted directory would delete nothing, but say so rather than succeed.
      if ((await findMountsAt(mountDir)).length === 0) {
        throw new Error(`mount succeeded but nothing is mounted at ${mountDir}`);
      }
      const target = await findDeletableDirectory(mountDir, relative);
      if (target) await rm(target, { recursive: true });
      else o.log.info({ fileSystemId, path }, "root directory does not exist: nothing to delete");
    } catch (err) {
      failure = err;
    }
    try {
      await unmountAll(mountDir, { timeoutMs });
      await o.tlsMounts?.close(mountDir);
      // Only an unmounted, empty directory is removed: never anything recursively here.
      await rmdir(mountDir);
    } catch (err) {
      o.log.error({ mountDir, err: (err as Error).message }, "cleaning up the temporary mount failed");
      failure ??= err;
    }
    if (failure) throw failure;
  };
}

/**
 * The directory to delete, `root/relativePath`, or undefined when it does not exist. Refuses
 * (FAILED_PRECONDITION) when a component is a symbolic link: the link's target is resolved on this
 * machine, so following one could delete the controller's own files; or when the path is not a
 * directory.
 */
export async function findDeletableDirectory(
  root: string,
  relativePath: string,
): Promise<string | undefined> {
  const parts = relativePath.split("/").filter((p) => p !== "");
  if (parts.length === 0 || parts.some((p) => p === "." || p === "..")) {
    throw failedPrecondition(`refusing to delete "${relativePath}": not a directory below the root`);
  }
  let current = root;
  for (const [i, part] of parts.entries()) {
    current = join(current, part);
    const shown = `/${parts.slice(0, i + 1).join("/")}`;
    let info: Awaited<ReturnType<typeof lstat>>;
    try {
      info = await lstat(current);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    if (info.isSymbolicLink()) {
      throw failedPrecondition(`refusing to delete /${parts.join("/")}: ${shown} is a symbolic link`);
    }
    if (!info.isDirectory()) {
      if (i < parts.length - 1) return undefined;
      throw failedPrecondition(`refusing to delete /${parts.join("/")}: it is not a directory`);
    }
  }
  return current;
}
