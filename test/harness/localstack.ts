// LocalStack as the fake AWS, in host mode: localstack-core from PyPI run as a process on this
// machine (no container), installed by scripts/setup.sh into .cache/localstack with the dependency
// set pinned in localstack-constraints.txt. Its free services include EC2 (moto's models inside,
// LocalStack's own protocol layer and gateway in front) but not EFS: EFS tests stay on moto.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, terminate } from "./moto.ts";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const LOCALSTACK_PYTHON = join(REPO_ROOT, ".cache", "localstack", "bin", "python");
/** LocalStack's files (its service catalog cache, built on the first request, is reused). */
const FILESYSTEM_ROOT = join(REPO_ROOT, ".cache", "localstack-fs");
export const LOCALSTACK_VERSION = "4.14.0";
const START_TIMEOUT_MS = 60_000;
/** Runs LocalStack's main with PR_SET_PDEATHSIG: killed with the test process, even by SIGKILL. */
const DIE_WITH_PARENT = [
  "import ctypes, runpy, signal, sys",
  "ctypes.CDLL(None).prctl(1, signal.SIGKILL)",
  "sys.argv = ['localstack']",
  "runpy.run_module('localstack.runtime.main', run_name='__main__')",
].join("\n");
const STOP_TIMEOUT_MS = 10_000;

export interface LocalStack {
  url: string;
  /** Forgets every resource (LocalStack's state reset). */
  reset(): Promise<void>;
  stop(): Promise<void>;
}

/** Why LocalStack cannot run here, or undefined when it can. */
export function localStackMissing(): string | undefined {
  return existsSync(LOCALSTACK_PYTHON)
    ? undefined
    : `LocalStack ${LOCALSTACK_VERSION} is not installed in .cache/localstack (scripts/setup.sh installs it; it needs Python 3.12)`;
}

export async function startLocalStack(): Promise<LocalStack> {
  const missing = localStackMissing();
  if (missing) throw new Error(missing);
  await mkdir(FILESYSTEM_ROOT, { recursive: true });
  // The port is picked before LocalStack binds it: taken meanwhile, the start is tried again.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    let running: Running;
    try {
      running = await launch(port);
    } catch (err) {
      if (attempt < 3 && /address already in use|Errno 98/i.test(String(err))) continue;
      throw err;
    }
    const url = `http://127.0.0.1:${port}`;
    return {
      url,
      // LocalStack's free edition has no state reset: a new process on the same port is empty.
      async reset() {
        await running.stop();
        running = await launch(port);
      },
      stop: () => running.stop(),
    };
  }
}

interface Running {
  stop(): Promise<void>;
}

/** One LocalStack process on 127.0.0.1:port, healthy (EC2 running) when this resolves. */
async function launch(port: number): Promise<Running> {
  const child = spawn(LOCALSTACK_PYTHON, ["-c", DIE_WITH_PARENT], {
    env: {
      ...process.env,
      GATEWAY_LISTEN: `127.0.0.1:${port}`,
      LOCALSTACK_HOST: `127.0.0.1:${port}`,
      // Hypercorn binds the host given; the default server binds 0.0.0.0 whatever it is told.
      GATEWAY_SERVER: "hypercorn",
      SERVICES: "ec2,sts",
      EAGER_SERVICE_LOADING: "1",
      // This machine may look like a container (/.dockerenv): LocalStack would write to /var/lib.
      OVERRIDE_IN_DOCKER: "0",
      FILESYSTEM_ROOT,
      // No DNS server on port 53, no analytics, no certificate download (no internet here).
      DNS_ADDRESS: "0",
      DISABLE_EVENTS: "1",
      SKIP_SSL_CERT_DOWNLOAD: "1",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const stop = async () => {
    process.off("exit", killOnExit);
    await terminate(child, STOP_TIMEOUT_MS);
  };
  try {
    await waitHealthy(`http://127.0.0.1:${port}`, child, () => output);
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}

/** Until /_localstack/health says EC2 runs. */
async function waitHealthy(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `LocalStack exited during start-up (${child.exitCode ?? child.signalCode}):\n${output()}`,
      );
    }
    const health = await fetch(`${url}/_localstack/health`, { signal: AbortSignal.timeout(2000) })
      .then((r) => (r.ok ? (r.json() as Promise<{ services?: Record<string, string> }>) : undefined))
      .catch(() => undefined);
    if (health?.services?.["ec2"] === "running") return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`LocalStack did not become healthy on ${url} within ${START_TIMEOUT_MS} ms:\n${output()}`);
}
