// A test-only stand-in for amazon-efs-utils' /sbin/mount.efs, for machines without an NFS client.
// util-linux runs it as `mount.efs SOURCE TARGET [-sfnv] [-N NS] -o OPTIONS`; the installed wrapper
// (efs-mount-helper.ts) adds `--config FILE` first. It serves each file system from a local
// directory, ROOT/<fs-id>, and bind-mounts the requested directory at TARGET (read-only for `ro`).
//
// What it simulates, as EFS does: an access point's root directory is created on first mount with
// the access point's CreationInfo owner, group and mode (read from the fake AWS, as EFS knows it);
// an unknown file system fails as efs-utils does ("Failed to resolve"); a missing directory fails
// as the NFS server answers ("No such file or directory"); accesspoint= without tls is refused.
// What it does not: TLS, IAM, the access point's POSIX identity (files keep the writer's uid), and
// statfs (the local filesystem's figures, not EFS's 8 EiB).
import { execFileSync } from "node:child_process";
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join, posix, relative } from "node:path";
import {
  type AccessPointDescription,
  DescribeAccessPointsCommand,
  DescribeFileSystemsCommand,
  EFSClient,
} from "@aws-sdk/client-efs";

export interface FakeMountEfsConfig {
  /** File system fs-x is the directory ROOT/fs-x. */
  root: string;
  /** The fake AWS the access points are read from. */
  endpoint: string;
  region: string;
  /** Each successful call is appended here as a JSON line: { source, target, options }. */
  logFile: string;
}

/** mount(8)'s exit code for a failed mount. */
const MOUNT_FAILURE = 32;

class MountFailure extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = MOUNT_FAILURE) {
    super(message);
    this.exitCode = exitCode;
  }
}

function parseArgs(argv: string[]): { config: string; source: string; target: string; options: string[] } {
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
  if (!config || !source || !target) throw new MountFailure("usage: mount.efs SOURCE TARGET [-o OPTIONS]", 1);
  return { config, source, target, options };
}

async function mountEfs(argv: string[]): Promise<void> {
  const { config: configPath, source, target, options } = parseArgs(argv);
  const config = JSON.parse(readFileSync(configPath, "utf8")) as FakeMountEfsConfig;
  const option = (key: string) =>
    options.find((o) => o === key || o.startsWith(`${key}=`))?.slice(key.length + 1);
  const has = (key: string) => options.includes(key);

  const match = /^(fs-[0-9a-f]+)(\.efs\.[a-z0-9-]+\.[a-z0-9.]+)?:(\/.*)?$/.exec(source);
  if (!match) throw new MountFailure(`${source} is not a valid EFS source: fs-id[:/path]`, 1);
  const fileSystemId = match[1]!;
  const path = posix.resolve("/", match[3] ?? "/");
  const accessPointId = option("accesspoint");
  if (accessPointId !== undefined && !has("tls")) {
    throw new MountFailure("The 'tls' option is required when mounting via 'accesspoint'", 1);
  }
  const server = has("tls") ? "127.0.0.1" : `${fileSystemId}.efs.${config.region}.amazonaws.com`;

  const efs = new EFSClient({
    region: config.region,
    endpoint: config.endpoint,
    credentials: { accessKeyId: "testing", secretAccessKey: "testing" },
  });
  try {
    const found = await efs
      .send(new DescribeFileSystemsCommand({ FileSystemId: fileSystemId }))
      .then((out) => out.FileSystems?.some((f) => f.FileSystemId === fileSystemId))
      .catch(() => false);
    if (!found) {
      throw new MountFailure(
        `Failed to resolve "${fileSystemId}.efs.${config.region}.amazonaws.com" - check that your file system ID is correct.`,
        1,
      );
    }
    const fsRoot = join(config.root, fileSystemId);
    mkdirSync(fsRoot, { recursive: true });

    let base = fsRoot;
    if (accessPointId !== undefined) {
      const ap = await efs
        .send(new DescribeAccessPointsCommand({ AccessPointId: accessPointId }))
        .then((out) => out.AccessPoints?.[0])
        .catch(() => undefined);
      if (!ap || ap.FileSystemId !== fileSystemId) {
        throw new MountFailure(`mount.nfs4: access denied by server while mounting ${server}:${path}`);
      }
      base = accessPointRoot(fsRoot, ap, server, path);
    }
    const dir = join(base, path);
    if (relative(base, dir).startsWith("..") || !existsSync(dir)) {
      throw new MountFailure(
        `mount.nfs4: mounting ${server}:${path} failed, reason given by server: No such file or directory`,
      );
    }
    execFileSync("mount", ["--bind", "--", dir, target], { stdio: "pipe" });
    if (has("ro")) {
      try {
        execFileSync("mount", ["-o", "bind,remount,ro", "--", target], { stdio: "pipe" });
      } catch (err) {
        execFileSync("umount", ["--", target], { stdio: "pipe" });
        throw err;
      }
    }
    appendFileSync(config.logFile, `${JSON.stringify({ source, target, options })}\n`);
  } finally {
    efs.destroy();
  }
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

mountEfs(process.argv.slice(2)).catch((err: unknown) => {
  const failure = err instanceof MountFailure ? err : undefined;
  const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
  process.stderr.write(`${failure?.message ?? stderr ?? String(err)}\n`);
  process.exit(failure?.exitCode ?? MOUNT_FAILURE);
});
