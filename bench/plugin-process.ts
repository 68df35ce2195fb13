/**
 * A CSI plugin process as the benchmarks run it, this driver or the official one: started on a
 * socket of its own, timed from spawn to its first ready Probe, and measured for memory.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { CsiClient } from "../test/harness/csi-client.ts";

/** USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture this runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

export interface PluginCommand {
  /** Who it is, in tables: "aws-storage-csi" or "official v1.44.0". */
  label: string;
  command: string;
  args: string[];
  env: Record<string, string>;
}

export interface RunningPlugin {
  child: ChildProcess;
  client: CsiClient;
  /** Milliseconds from spawn to the first Probe answered ready. */
  startMs: number;
  /** Resident set size now (VmRSS), MiB. */
  rssMiB(): Promise<number>;
  /** Peak resident set size so far (VmHWM), MiB. */
  peakRssMiB(): Promise<number>;
  /** CPU time used so far, user and system, all threads, ms (at the kernel's clock tick, 10 ms). */
  cpuMs(): Promise<number>;
  stop(): Promise<void>;
}

/** Polls Probe every 2 ms from spawn (as a livenessprobe started with the plugin would, only faster). */
export async function startPlugin(
  cmd: PluginCommand,
  socketPath: string,
  timeoutMs = 30_000,
): Promise<RunningPlugin> {
  let stderr = "";
  const started = performance.now();
  const child = spawn(cmd.command, cmd.args, {
    env: { ...process.env, ...cmd.env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code, signal) =>
      reject(new Error(`${cmd.label} exited (${code ?? signal}) during start-up: ${stderr}`)),
    ),
  );
  exited.catch(() => undefined);
  let client: CsiClient | undefined;
  const ready = async (): Promise<number> => {
    const deadline = started + timeoutMs;
    while (performance.now() < deadline) {
      if (existsSync(socketPath)) {
        client ??= new CsiClient(socketPath);
        const res = await client.call("Identity", "Probe", {}, 1000).catch(() => undefined);
        // An unset ready means ready (CSI: the plugin would have answered otherwise).
        if (res && res.ready?.value !== false) return performance.now() - started;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    throw new Error(`${cmd.label} not ready within ${timeoutMs} ms: ${stderr}`);
  };
  let startMs: number;
  try {
    startMs = await Promise.race([ready(), exited]);
  } catch (err) {
    child.kill("SIGKILL");
    client?.close();
    throw err;
  }
  const status = async (field: string) => {
    const text = await readFile(`/proc/${child.pid}/status`, "utf8").catch(() => "");
    return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? Number.NaN) / 1024;
  };
  return {
    child,
    client: client!,
    startMs,
    rssMiB: () => status("VmRSS"),
    peakRssMiB: () => status("VmHWM"),
    async cpuMs() {
      const stat = await readFile(`/proc/${child.pid}/stat`, "utf8");
      // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
    },
    async stop() {
      client?.close();
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await gone;
      clearTimeout(timer);
    },
  };
}
