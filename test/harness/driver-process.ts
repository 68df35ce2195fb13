import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CsiClient } from "./csi-client.ts";

// A test run that dies must not leave drivers behind.
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const MAIN = fileURLToPath(new URL("../../src/main.ts", import.meta.url));

export interface DriverProcessOptions {
  args: string[];
  env?: Record<string, string>;
  socketPath: string;
  /** Where the driver's JSON log goes; default: discarded unless DRIVER_LOG=1 (then inherited). */
  logFile?: string;
  /** Flags for node itself, before the script (e.g. --expose-gc, for memory tests). */
  nodeArgs?: string[];
}

/** The driver as its own process, started exactly as the container starts it (plus test flags). */
export class DriverProcess {
  readonly options: DriverProcessOptions;
  child: ChildProcess | undefined;
  stderr = "";

  constructor(options: DriverProcessOptions) {
    this.options = options;
  }

  async start(timeoutMs = 30_000): Promise<void> {
    const { args, env, socketPath, nodeArgs = [] } = this.options;
    this.stderr = "";
    // DRIVER_MAIN=dist/main.js runs the compiled driver, as the image does (benchmarks use it).
    const main = process.env.DRIVER_MAIN ?? MAIN;
    const child = spawn(
      process.execPath,
      [...nodeArgs, main, ...args, "--endpoint", `unix://${socketPath}`],
      {
        env: { ...process.env, ...env },
        stdio: ["ignore", "inherit", "pipe"],
      },
    );
    this.child = child;
    running.add(child);
    child.once("exit", () => running.delete(child));
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (this.stderr.length > 1_000_000) this.stderr = this.stderr.slice(-500_000);
      if (process.env.DRIVER_LOG === "1") process.stderr.write(chunk);
    });
    const exited = new Promise<never>((_, reject) =>
      child.once("exit", (code, signal) =>
        reject(new Error(`driver exited (${code ?? signal}) during start-up: ${this.stderr.slice(-2000)}`)),
      ),
    );
    const ready = (async () => {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (existsSync(socketPath)) {
          const client = new CsiClient(socketPath);
          try {
            await client.call("Identity", "GetPluginInfo", {}, 2000);
            return;
          } catch {
            // not ready yet
          } finally {
            client.close();
          }
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(
        `driver did not serve ${socketPath} within ${timeoutMs} ms: ${this.stderr.slice(-2000)}`,
      );
    })();
    await Promise.race([ready, exited]);
    exited.catch(() => undefined);
  }

  /** Sends a signal and waits for the process to end; resolves with its exit code or signal. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | string> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null)
      return child?.exitCode ?? "not running";
    const done = new Promise<number | string>((resolve) =>
      child.once("exit", (code, sig) => resolve(code ?? sig ?? "unknown")),
    );
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const result = await done;
    clearTimeout(timer);
    return result;
  }
}

/** Cleanups of a test environment, run last-registered first (see registerCleanup). */
export type Cleanups = (() => Promise<unknown>)[];

/** Runs every cleanup even when some fail, then reports the failures together. */
export async function runAll(cleanups: Cleanups): Promise<void> {
  const errors: unknown[] = [];
  for (const cleanup of cleanups.splice(0)) {
    await cleanup().catch((err: unknown) => errors.push(err));
  }
  if (errors.length > 0) throw new AggregateError(errors, `cleanup failed: ${errors.map(String).join("; ")}`);
}

/**
 * Starts the driver on `<dir>/csi.sock` as the tests run it (log level from DRIVER_LOG_LEVEL) and
 * opens a client; both are closed by the cleanups, before anything registered earlier.
 */
export async function startDriverWithClient(
  o: {
    dir: string;
    driver: "ebs" | "efs";
    mode: string;
    args: string[];
    env: Record<string, string>;
    nodeArgs?: string[] | undefined;
  },
  cleanups: Cleanups,
): Promise<{ socketPath: string; driver: DriverProcess; client: CsiClient }> {
  const socketPath = join(o.dir, "csi.sock");
  const driver = new DriverProcess({
    socketPath,
    nodeArgs: o.nodeArgs ?? [],
    args: [
      "--driver",
      o.driver,
      "--mode",
      o.mode,
      "--log-level",
      process.env.DRIVER_LOG_LEVEL ?? "info",
      // The test's directory stands in for /var/lib/kubelet: every node path lies below it.
      "--kubelet-dir",
      o.dir,
      ...o.args,
    ],
    env: o.env,
  });
  cleanups.unshift(() => driver.stop("SIGTERM"));
  await driver.start();
  const client = new CsiClient(socketPath);
  cleanups.unshift(async () => client.close());
  return { socketPath, driver, client };
}
