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
import { type FakeAws, startFakeAws } from "./fake-aws.ts";
import type { FakeMountEfsConfig } from "./fake-mount-efs.ts";
import { type Imds, startImds } from "./imds.ts";

export const MOUNT_EFS_PATH = "/sbin/mount.efs";
const MARKER = "# aws-storage-csi test-only mount.efs";
const HELPER_SCRIPT = fileURLToPath(new URL("./fake-mount-efs.ts", import.meta.url));

export interface FakeEfsMountHelper {
  /** File system fs-x is served from `${root}/fs-x`. */
  root: string;
  /** Where the helper is installed. */
  path: string;
  fileSystemDir(fileSystemId: string): string;
  /** Every successful mount.efs call so far: source, target and the options mount passed. */
  calls(): Promise<{ source: string; target: string; options: string[] }[]>;
  /** Removes the helper and puts back what was there before. Idempotent. */
  uninstall(): Promise<void>;
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
 * Installs the fake helper. Test files run in parallel workers and the machine has one helper
 * path: while another live process's fake is installed this waits its turn (up to
 * HELPER_WAIT_MS); a fake left by a dead process is replaced.
 */
export async function installFakeEfsMountHelper(options: InstallOptions): Promise<FakeEfsMountHelper> {
  const path = options.path ?? MOUNT_EFS_PATH;
  const unlock = await lockHelperPath(path);
  try {
    return await install(options, path, unlock);
  } catch (err) {
    await unlock();
    throw err;
  }
}

async function install(
  options: InstallOptions,
  path: string,
  unlock: () => Promise<void>,
): Promise<FakeEfsMountHelper> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), "fake-efs-")));
  const root = join(dir, "file-systems");
  await mkdir(root, { recursive: true });
  const config: FakeMountEfsConfig = {
    root,
    endpoint: options.endpoint,
    region: options.region,
    logFile: join(dir, "mount-efs-calls.jsonl"),
  };
  const configPath = join(dir, "mount-efs-config.json");
  await writeFile(configPath, JSON.stringify(config, null, 2));
  await writeFile(config.logFile, "");

  const backup = `${path}.aws-storage-csi-backup`;
  const current = await readFile(path, "utf8").catch(() => undefined);
  if (current?.includes(MARKER)) {
    const owner = Number(/owner-pid=(\d+)/.exec(current)?.[1]);
    if (owner && owner !== process.pid && isAlive(owner)) {
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
    `exec ${shellQuote(process.execPath)} ${shellQuote(HELPER_SCRIPT)} --config ${shellQuote(configPath)} "$@"`,
    "",
  ].join("\n");
  await writeFile(path, wrapper);
  await chmod(path, 0o755);

  let installed = true;
  return {
    root,
    path,
    fileSystemDir: (fileSystemId) => join(root, fileSystemId),
    async calls() {
      const text = await readFile(config.logFile, "utf8");
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
      if (!options.dir) await removeUnmounted(dir);
    },
  };
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
    if (owner === mine || (pid > 0 && Number.isInteger(pid) && !isAlive(pid))) {
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

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export interface EfsEnvOptions {
  mode?: "controller" | "node" | "all";
  /** More driver flags, e.g. ["--delete-access-point-root-dir"]. */
  extraArgs?: string[];
  /** Install the fake mount.efs (needs root). Default: true. */
  mountHelper?: boolean;
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
  /** Undefined when started without the mount helper. */
  helper: FakeEfsMountHelper | undefined;
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
      options.mountHelper === false
        ? undefined
        : await installFakeEfsMountHelper({ endpoint: aws.endpoint, region: aws.region, dir });
    // The driver's publishes and the controller's temporary mounts (its TMPDIR is in dir) go first.
    if (helper) {
      cleanups.unshift(
        () => unmountUnder(dir),
        () => helper.uninstall(),
      );
    }

    await mkdir(join(dir, "tmp"));
    const { socketPath, driver, client } = await startDriverWithClient(
      {
        dir,
        driver: "efs",
        mode: options.mode ?? "all",
        args: options.extraArgs ?? [],
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
