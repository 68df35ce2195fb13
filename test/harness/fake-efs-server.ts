// What the test-only mount helpers (fake-mount-efs.ts, fake-mount-nfs4.ts) and the stand-in TLS
// mount target (efs-tls-target.ts) share: EFS's side of a mount, the directory a file system or
// access point exports, served from ROOT/<fs-id> on this machine, and the bind mount that stands
// in for the kernel's NFS mount of it.
//
// As EFS does: an access point's root directory is created on first mount with the access point's
// CreationInfo owner, group and mode (read from the fake AWS); an unknown file system fails as
// efs-utils does ("Failed to resolve"); a missing directory fails as the NFS server answers
// ("No such file or directory"). Not simulated: the access point's POSIX identity (files keep the
// writer's uid) and statfs (the local filesystem's figures, not EFS's 8 EiB).
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync } from "node:fs";
import { join, posix, relative } from "node:path";
import {
  type AccessPointDescription,
  DescribeAccessPointsCommand,
  DescribeFileSystemsCommand,
  type EFSClient,
} from "@aws-sdk/client-efs";

/** mount(8)'s exit code for a failed mount. */
export const MOUNT_FAILURE = 32;

export class MountFailure extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = MOUNT_FAILURE) {
    super(message);
    this.exitCode = exitCode;
  }
}

export interface ExportRequest {
  /** File system fs-x is the directory ROOT/fs-x. */
  root: string;
  efs: EFSClient;
  fileSystemId: string;
  accessPointId: string | undefined;
  /** The path asked for, below the access point's root directory when there is one. */
  path: string;
  /** The server as mount.nfs4 names it in its messages. */
  server: string;
}

/** The local directory that stands for `path` of the file system (or access point). */
export async function exportedDirectory(r: ExportRequest): Promise<string> {
  const found = await r.efs
    .send(new DescribeFileSystemsCommand({ FileSystemId: r.fileSystemId }))
    .then((out) => out.FileSystems?.some((f) => f.FileSystemId === r.fileSystemId))
    .catch(() => false);
  if (!found) {
    throw new MountFailure(
      `Failed to resolve "${r.fileSystemId}.efs.${await r.efs.config.region()}.amazonaws.com" - check that your file system ID is correct.`,
      1,
    );
  }
  const fsRoot = join(r.root, r.fileSystemId);
  mkdirSync(fsRoot, { recursive: true });
  const path = posix.resolve("/", r.path);
  let base = fsRoot;
  if (r.accessPointId !== undefined) {
    const ap = await r.efs
      .send(new DescribeAccessPointsCommand({ AccessPointId: r.accessPointId }))
      .then((out) => out.AccessPoints?.[0])
      .catch(() => undefined);
    if (!ap || ap.FileSystemId !== r.fileSystemId) {
      throw new MountFailure(`mount.nfs4: access denied by server while mounting ${r.server}:${path}`);
    }
    base = accessPointRoot(fsRoot, ap, r.server, path);
  }
  const dir = join(base, path);
  if (relative(base, dir).startsWith("..") || !existsSync(dir)) {
    throw new MountFailure(
      `mount.nfs4: mounting ${r.server}:${path} failed, reason given by server: No such file or directory`,
    );
  }
  return dir;
}

/** The access point's root directory, created on first mount from its CreationInfo, as EFS does. */
function accessPointRoot(fsRoot: string, ap: AccessPointDescription, server: string, path: string): string {
  const rootPath = posix.resolve("/", ap.RootDirectory?.Path ?? "/");
  const dir = join(fsRoot, rootPath);
  if (existsSync(dir)) return dir;
  const info = ap.RootDirectory?.CreationInfo;
  if (!info) {
    // EFS creates a missing root directory only when the access point has CreationInfo.
    throw new MountFailure(`mount.nfs4: access denied by server while mounting ${server}:${path}`);
  }
  // Missing parents are made root-owned 0755 (an assumption: AWS documents only the root directory).
  mkdirSync(join(dir, ".."), { recursive: true, mode: 0o755 });
  mkdirSync(dir);
  chownSync(dir, info.OwnerUid ?? 0, info.OwnerGid ?? 0);
  chmodSync(dir, Number.parseInt(info.Permissions ?? "755", 8));
  return dir;
}

/** The kernel's NFS mount, stood in for: a bind mount of the exported directory, read-only for `ro`. */
export function bindMount(dir: string, target: string, readOnly: boolean): void {
  execFileSync("mount", ["--bind", "--", dir, target], { stdio: "pipe" });
  if (!readOnly) return;
  try {
    execFileSync("mount", ["-o", "bind,remount,ro", "--", target], { stdio: "pipe" });
  } catch (err) {
    execFileSync("umount", ["--", target], { stdio: "pipe" });
    throw err;
  }
}

/** Runs a helper's main: a failure is printed as mount.nfs4 would, with mount's exit code. */
export function runMountHelper(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    const failure = err instanceof MountFailure ? err : undefined;
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    process.stderr.write(`${failure?.message ?? stderr ?? String(err)}\n`);
    process.exit(failure?.exitCode ?? MOUNT_FAILURE);
  });
}

/** mount(8)'s helper arguments: `SOURCE TARGET [-sfnv] [-N NS] -o OPTIONS`, after `--config FILE`. */
export function parseHelperArgs(
  argv: string[],
  name: string,
): { config: string; source: string; target: string; options: string[] } {
  const positional: string[] = [];
  let config = "";
  let options: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--config") config = argv[++i] ?? "";
    else if (arg === "-o") options = (argv[++i] ?? "").split(",").filter((o) => o !== "");
    else if (arg === "-N" || arg === "-t") i++;
    else if (arg.startsWith("-"))
      continue; // -s -f -n -v
    else positional.push(arg);
  }
  const [source = "", target = ""] = positional;
  if (!config || !source || !target) throw new MountFailure(`usage: ${name} SOURCE TARGET [-o OPTIONS]`, 1);
  return { config, source, target, options };
}
