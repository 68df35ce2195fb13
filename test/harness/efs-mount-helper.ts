// Installs the test-only mount.efs (fake-mount-efs.ts) at /sbin/mount.efs for the duration of a
// test run, backing up and restoring whatever was there, and builds a whole EFS setup on one
// machine around it: fake AWS, a file system, fake IMDS, the mount helper and the driver process.
// The driver itself runs its production `mount -t efs` command; only the helper is simulated.
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, realpath, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { listMounts } from "../../src/host/mounts.ts";
import type { CsiClient } from "./csi-client.ts";
import { type DriverProcess, runAll, startDriverWithClient } from "./driver-process.ts";
import { unmountUnder } from "./ebs-env.ts";
import { type EfsTlsTargets, startEfsTlsTargets } from "./efs-tls-target.ts";
import { type FakeAws, startFakeAws } from "./fake-aws.ts";
import type { FakeMountEfsConfig } from "./fake-mount-efs.ts";
import type { FakeMountNfs4Config } from "./fake-mount-nfs4.ts";
import { type Imds, startImds } from "./imds.ts";
import { processAlive } from "./moto.ts";

export const MOUNT_EFS_PATH = "/sbin/mount.efs";
// A prefix of what older runs wrote too ("... test-only mount.efs"): their leftovers are recognised.
const MARKER = "# aws-storage-csi test-only mount";
const HELPER_SCRIPT = fileURLToPath(new URL("./fake-mount-efs.ts", import.meta.url));

export interface FakeEfsMountHelper extends InstalledHelper {
  /** File system fs-x is served from `${root}/fs-x`. */
  root: string;
  fileSystemDir(fileSystemId: string): string;
}

export interface InstallOptions {
  /** The fake AWS the helper reads access points from. */
  endpoint: string;
  region: string;
  /** Where the served file systems and the helper's files go (a new temporary directory by default). */
  dir?: string;
  path?: string;
}

/**
 * Installs the fake mount.efs. Test files run in parallel workers and the machine has one helper
 * path: while another live process's fake is installed this waits its turn (up to
 * HELPER_WAIT_MS); a fake left by a dead process is replaced.
 */
export async function installFakeEfsMountHelper(options: InstallOptions): Promise<FakeEfsMountHelper> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), "fake-efs-")));
  const root = join(dir, "file-systems");
  await mkdir(root, { recursive: true });
  const config: FakeMountEfsConfig = {
    root,
    endpoint: options.endpoint,
    region: options.region,
    logFile: join(dir, "mount-efs-calls.jsonl"),
  };
  const helper = await installHelper({
    path: options.path ?? MOUNT_EFS_PATH,
    script: HELPER_SCRIPT,
    configFile: join(dir, "mount-efs-config.json"),
    config,
  });
  return {
    ...helper,
    root,
    fileSystemDir: (fileSystemId) => join(root, fileSystemId),
    async uninstall() {
      await helper.uninstall();
      if (!options.dir) await removeUnmounted(dir);
    },
  };
}

export const MOUNT_NFS4_PATH = "/sbin/mount.nfs4";
const NFS4_SCRIPT = fileURLToPath(new URL("./fake-mount-nfs4.ts", import.meta.url));

/** A test mount helper as installed: where, what it was called with, and its removal. */
export interface InstalledHelper {
  path: string;
  /** Every successful call so far: source, target and the options mount passed. */
  calls(): Promise<{ source: string; target: string; options: string[] }[]>;
  /** Removes the helper and puts back what was there before. Idempotent. */
  uninstall(): Promise<void>;
}

/**
 * Installs the fake mount.nfs4 (fake-mount-nfs4.ts) for mounts through the driver's TLS relay,
 * into `dir`, waiting its turn as installFakeEfsMountHelper does.
 */
export async function installFakeMountNfs4(dir: string, path = MOUNT_NFS4_PATH): Promise<InstalledHelper> {
  const config: FakeMountNfs4Config = { logFile: join(dir, "mount-nfs4-calls.jsonl") };
  return installHelper({
    path,
    script: NFS4_SCRIPT,
    configFile: join(dir, "mount-nfs4-config.json"),
    config,
  });
}

/** Installs `script` at `path` (a wrapper that runs it with --config), locked, backing up what was there. */
async function installHelper(o: {
  path: string;
  script: string;
  configFile: string;
  config: { logFile: string };
}): Promise<InstalledHelper> {
  const { path } = o;
  const unlock = await lockHelperPath(path);
  try {
    await writeFile(o.configFile, JSON.stringify(o.config, null, 2));
    await writeFile(o.config.logFile, "");
    const backup = `${path}.aws-storage-csi-backup`;
    const current = await readFile(path, "utf8").catch(() => undefined);
    if (current?.includes(MARKER)) {
      const owner = Number(/owner-pid=(\d+)/.exec(current)?.[1]);
      if (owner && owner !== process.pid && processAlive(owner)) {
        throw new Error(
          `${path} is the test mount helper of another running test (pid ${owner}); run one at a time`,
        );
      }
      // A fake left by a crashed run: its backup (if any) is still the original.
    } else if (current !== undefined || existsSync(path)) {
      await rename(path, backup);
    }
    const wrapper = [
      "#!/bin/sh",
      MARKER,
      `# owner-pid=${process.pid}`,
      `exec ${shellQuote(process.execPath)} ${shellQuote(o.script)} --config ${shellQuote(o.configFile)} "$@"`,
      "",
    ].join("\n");
    await writeFile(path, wrapper);
    await chmod(path, 0o755);

    let installed = true;
    return {
      path,
      async calls() {
        const text = await readFile(o.config.logFile, "utf8");
        return text
          .split("\n")
          .filter((line) => line !== "")
          .map((line) => JSON.parse(line));
      },
      async uninstall() {
        if (!installed) return;
        installed = false;
        const now = await readFile(path, "utf8").catch(() => undefined);
        if (now?.includes(`owner-pid=${process.pid}`)) await rm(path, { force: true });
        if (existsSync(backup) && !existsSync(path)) await rename(backup, path);
        await unlock();
      },
    };
  } catch (err) {
    await unlock();
    throw err;
  }
}

/** How long an install waits for another test file's helper to be uninstalled. */
const HELPER_WAIT_MS = 15 * 60_000;

/**
 * Takes the helper path for this process: a lock file created exclusively, holding the owner's
 * pid; a lock whose owner died is taken over. Resolves with the function that releases it.
 */
async function lockHelperPath(path: string): Promise<() => Promise<void>> {
  const lock = `${path}.aws-storage-csi-lock`;
  const mine = String(process.pid);
  const deadline = Date.now() + HELPER_WAIT_MS;
  const release = async () => {
    if ((await readFile(lock, "utf8").catch(() => "")) === mine) await rm(lock, { force: true });
  };
  for (;;) {
    try {
      await writeFile(lock, mine, { flag: "wx" });
      return release;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const owner = await readFile(lock, "utf8").catch(() => "");
    const pid = Number(owner);
    // An empty lock is being written: wait for its owner's pid like for any other.
    if (owner === mine || (pid > 0 && Number.isInteger(pid) && !processAlive(pid))) {
      await rm(lock, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${path} is the test mount helper of another running test (pid ${owner}) since ${HELPER_WAIT_MS / 60_000} minutes`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export interface EfsEnvOptions {
  mode?: "controller" | "node" | "all";
  /** More driver flags, e.g. ["--delete-access-point-root-dir"]. */
  extraArgs?: string[];
  /** Install the fake mount.efs (needs root). Default: true. */
  mountHelper?: boolean;
  /**
   * Mount through the driver's own TLS relay instead (needs root): no mount.efs for the driver
   * (--efs-mount-helper=none), the fake mount.nfs4, and TLS stand-ins for the mount targets.
   */
  tls?: boolean;
  /** With TLS: the mount targets' certificate is for this name (default: *.efs.<region>.amazonaws.com). */
  certificateName?: string;
  /** With TLS: give the driver the mount targets' CA (default: true). */
  trustTargets?: boolean;
  /** With TLS: the mount targets speak plain TCP, not TLS. */
  plainTargets?: boolean;
  /** Flags for node itself, e.g. ["--expose-gc"] (memory tests). */
  nodeArgs?: string[];
  /** More environment for the driver process. */
  env?: Record<string, string>;
}

/** A whole EFS setup on one machine: fake AWS with one file system, fake IMDS, the helper, the driver. */
export interface EfsEnv {
  aws: FakeAws;
  fileSystemId: string;
  instanceId: string;
  zone: string;
  imds: Imds;
  /** Undefined when started without the mount helper, or with TLS. */
  helper: FakeEfsMountHelper | undefined;
  /** With TLS: the fake mount.nfs4 and the mount targets. */
  tls: { mountNfs4: InstalledHelper; targets: EfsTlsTargets; root: string } | undefined;
  /** A temporary directory for this environment: socket, served file systems, target paths. */
  dir: string;
  socketPath: string;
  driver: DriverProcess;
  client: CsiClient;
  /** Stops everything and removes every mount, file and process it made, also after failures. */
  stop(): Promise<void>;
}

export async function startEfsEnv(options: EfsEnvOptions = {}): Promise<EfsEnv> {
  // Resolved: the mount table names mounts by real paths, and cleanup finds them below dir by prefix.
  const dir = await realpath(await mkdtemp(join(tmpdir(), "efs-env-")));
  const cleanups: (() => Promise<unknown>)[] = [() => removeUnmounted(dir)];
  try {
    const aws = await startFakeAws();
    cleanups.unshift(() => aws.stop());
    const fileSystemId = await aws.createFileSystem();
    const zone = `${aws.region}a`;
    const instanceId = await aws.createInstance({ zone });
    const imds = await startImds({ instanceId, instanceType: "m5.large", zone, region: aws.region });
    cleanups.unshift(() => imds.stop());
    const helper =
      options.mountHelper === false || options.tls
        ? undefined
        : await installFakeEfsMountHelper({ endpoint: aws.endpoint, region: aws.region, dir });
    // The driver's publishes and the controller's temporary mounts (its TMPDIR is in dir) go first.
    if (helper) {
      cleanups.unshift(
        () => unmountUnder(dir),
        () => helper.uninstall(),
      );
    }
    let tls: EfsEnv["tls"];
    const tlsArgs: string[] = [];
    if (options.tls) {
      const root = join(dir, "file-systems");
      await mkdir(root);
      const targets = await startEfsTlsTargets({
        aws,
        fileSystemId,
        root,
        dir,
        ...(options.certificateName ? { certificateName: options.certificateName } : {}),
        ...(options.plainTargets ? { plain: true } : {}),
      });
      cleanups.unshift(() => targets.stop());
      const mountNfs4 = await installFakeMountNfs4(dir);
      cleanups.unshift(
        () => unmountUnder(dir),
        () => mountNfs4.uninstall(),
      );
      tls = { mountNfs4, targets, root };
      tlsArgs.push("--efs-mount-helper=none");
      if (options.trustTargets !== false) tlsArgs.push(`--efs-tls-ca-file=${targets.caFile}`);
    }

    await mkdir(join(dir, "tmp"));
    const { socketPath, driver, client } = await startDriverWithClient(
      {
        dir,
        driver: "efs",
        mode: options.mode ?? "all",
        args: [...tlsArgs, ...(options.extraArgs ?? [])],
        env: {
          ...options.env,
          ...aws.env,
          AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url,
          TMPDIR: join(dir, "tmp"),
        },
        nodeArgs: options.nodeArgs,
      },
      cleanups,
    );

    return {
      aws,
      fileSystemId,
      instanceId,
      zone,
      imds,
      helper,
      tls,
      dir,
      socketPath,
      driver,
      client,
      stop: () => runAll(cleanups),
    };
  } catch (err) {
    await runAll(cleanups).catch(() => undefined);
    throw err;
  }
}

/** Removes dir, unless something is still mounted below it: a recursive delete would go through the mount. */
async function removeUnmounted(dir: string): Promise<void> {
  const left = (await listMounts()).filter((m) => m.mountPoint.startsWith(`${dir}/`));
  if (left.length > 0) {
    throw new Error(
      `not removing ${dir}: still mounted below it: ${left.map((m) => m.mountPoint).join(", ")}`,
    );
  }
  await rm(dir, { recursive: true, force: true });
}
