// The project's own container runtime for tests: Debian's podman and buildah on a store of their
// own (.cache/containers, vfs), with settings for this kind of sandbox (containers.conf), and
// podman's Docker-compatible API served on a socket for testcontainers. The host's own podman
// settings, images and containers are neither read nor touched.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { processAlive, terminate } from "../harness/moto.ts";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const CONTAINERS_DIR = join(REPO_ROOT, ".cache", "containers");
const SERVICE_START_MS = 30_000;

/** Label on every container the tests start: the pid of the test process that owns it. */
export const OWNER_LABEL = "aws-storage-csi.test-owner-pid";

/** The environment podman and buildah run with: the project's store and settings. */
export function containerEnv(): NodeJS.ProcessEnv {
  const storageConf = join(CONTAINERS_DIR, "storage.conf");
  mkdirSync(CONTAINERS_DIR, { recursive: true });
  writeFileSync(
    storageConf,
    [
      "# Written by test/containers/podman.ts: the tests' own image store.",
      "[storage]",
      // vfs: plain copies, no overlay mounts (which need kernel or FUSE support a sandbox may lack).
      'driver = "vfs"',
      `graphroot = "${join(CONTAINERS_DIR, "storage")}"`,
      `runroot = "${join(CONTAINERS_DIR, "run")}"`,
      "",
    ].join("\n"),
  );
  return {
    ...process.env,
    CONTAINERS_CONF: join(REPO_ROOT, "test", "containers", "containers.conf"),
    CONTAINERS_STORAGE_CONF: storageConf,
    STORAGE_DRIVER: "vfs",
    // buildah runs build steps in a chroot: no user namespaces or nested containers needed.
    BUILDAH_ISOLATION: "chroot",
  };
}

/** Why podman cannot run containers here, or undefined when it can. */
export async function podmanMissing(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "not root (the tests' podman runs rootful, on its own store)";
  for (const tool of ["podman", "buildah", "mmdebstrap", "slirp4netns"]) {
    try {
      await promisify(execFile)(tool, ["--version"], { timeout: 15_000 });
    } catch {
      return `${tool} is not installed (scripts/setup.sh installs podman buildah mmdebstrap slirp4netns as root on Debian)`;
    }
  }
  return undefined;
}

/** Runs podman (or buildah) on the project's store; resolves with its standard output. */
export async function podman(
  args: string[],
  { tool = "podman", timeoutMs = 120_000 }: { tool?: "podman" | "buildah"; timeoutMs?: number } = {},
): Promise<string> {
  const { stdout } = await promisify(execFile)(tool, args, {
    env: containerEnv(),
    maxBuffer: 16 * 1024 * 1024,
    timeout: timeoutMs,
  });
  return stdout;
}

/**
 * Removes the containers that test processes no longer running left behind (a run killed before
 * its clean-up: testcontainers' own reaper, Ryuk, is an image of a registry this machine does not
 * reach, so it is off). Containers of live test processes are left alone.
 */
export async function removeLeftoverContainers(): Promise<string[]> {
  const lines = await podman([
    "ps",
    "--all",
    "--filter",
    `label=${OWNER_LABEL}`,
    "--format",
    "{{.ID}} {{.Labels}}",
  ]);
  const stale: string[] = [];
  for (const line of lines.split("\n").filter(Boolean)) {
    const [id] = line.split(" ");
    const pid = Number(new RegExp(`${OWNER_LABEL.replaceAll(".", "\\.")}:(\\d+)`).exec(line)?.[1]);
    if (id && !(pid > 0 && processAlive(pid))) stale.push(id);
  }
  if (stale.length > 0) await podman(["rm", "--force", "--volumes", ...stale]);
  // And the API sockets of podman services that died with their test process.
  for (const entry of await readdir(CONTAINERS_DIR).catch(() => [])) {
    const pid = Number(/^podman-(\d+)-\d+\.sock$/.exec(entry)?.[1]);
    if (pid > 0 && !processAlive(pid)) await rm(join(CONTAINERS_DIR, entry), { force: true });
  }
  return stale;
}

export interface PodmanService {
  /** For DOCKER_HOST: unix://<socket> */
  dockerHost: string;
  stop(): Promise<void>;
}

/**
 * podman's Docker-compatible API on a socket of this process's own, for as long as it runs (the
 * service dies with the test process, even by SIGKILL; its containers are then left for
 * removeLeftoverContainers).
 */
export async function startPodmanService(): Promise<PodmanService> {
  const socket = join(CONTAINERS_DIR, `podman-${process.pid}-${Date.now()}.sock`);
  const child: ChildProcess = spawn(
    "setpriv",
    ["--pdeathsig", "KILL", "podman", "system", "service", "--time=0", `unix://${socket}`],
    { env: containerEnv(), stdio: ["ignore", "ignore", "pipe"] },
  );
  let output = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
  });
  const killOnExit = () => {
    child.kill("SIGKILL");
    rmSync(socket, { force: true });
  };
  process.on("exit", killOnExit);
  const stop = async () => {
    process.off("exit", killOnExit);
    await terminate(child, 10_000);
    await rm(socket, { force: true });
  };
  const deadline = Date.now() + SERVICE_START_MS;
  while (!(await pings(socket))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`podman system service did not answer on ${socket}:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { dockerHost: `unix://${socket}`, stop };
}

function pings(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: "/_ping", timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}
