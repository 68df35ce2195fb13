// A test-only stand-in for amazon-efs-utils' /sbin/mount.efs, for machines without an NFS client.
// util-linux runs it as `mount.efs SOURCE TARGET [-sfnv] [-N NS] -o OPTIONS`; the installed wrapper
// (efs-mount-helper.ts) adds `--config FILE` first. It serves each file system from a local
// directory, ROOT/<fs-id>, and bind-mounts the requested directory at TARGET (read-only for `ro`).
//
// EFS's side is fake-efs-server.ts's; here efs-utils' own checks (accesspoint= without tls is
// refused). Not simulated: TLS and IAM (efs-utils' tunnel; this driver's own relay is tested with
// fake-mount-nfs4.ts and a TLS mount target).
import { appendFileSync, readFileSync } from "node:fs";
import { posix } from "node:path";
import { EFSClient } from "@aws-sdk/client-efs";
import {
  bindMount,
  exportedDirectory,
  MountFailure,
  parseHelperArgs,
  runMountHelper,
} from "./fake-efs-server.ts";

export interface FakeMountEfsConfig {
  /** File system fs-x is the directory ROOT/fs-x. */
  root: string;
  /** The fake AWS the access points are read from. */
  endpoint: string;
  region: string;
  /** Each successful call is appended here as a JSON line: { source, target, options }. */
  logFile: string;
}

async function mountEfs(argv: string[]): Promise<void> {
  const { config: configPath, source, target, options } = parseHelperArgs(argv, "mount.efs");
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
    const dir = await exportedDirectory({
      root: config.root,
      efs,
      fileSystemId,
      accessPointId,
      path,
      server,
    });
    bindMount(dir, target, has("ro"));
    appendFileSync(config.logFile, `${JSON.stringify({ source, target, options })}\n`);
  } finally {
    efs.destroy();
  }
}

runMountHelper(() => mountEfs(process.argv.slice(2)));
