/**
 * Drives a fuzz run against a driver process and judges it: sends generated calls with bounded
 * concurrency, each with a deadline; classifies every reply; measures the driver's RSS after a
 * forced collection; and looks for what a call must never leave on the machine (mounts, files or
 * loop devices outside the kubelet directory).
 */
import { existsSync } from "node:fs";
import { readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { type ServiceError, status } from "@grpc/grpc-js";
import { listMounts, unmount } from "../../src/host/mounts.ts";
import { listLoopDevices } from "../harness/attach-sim.ts";
import type { CsiClient } from "../harness/csi-client.ts";
import type { DriverProcess } from "../harness/driver-process.ts";
import { abbreviate, type FuzzTargets, generateCall, OUTSIDE_MARKER, shorten } from "./generate.ts";

export interface CallResult {
  index: number;
  method: string;
  /** A gRPC status name, or NO_REPLY when nothing came back within the deadline. */
  code: string;
  message: string;
  ms: number;
}

export interface SendOptions {
  client: CsiClient;
  targets: FuzzTargets;
  seed: number;
  /** Calls [from, from + count) of the seed's sequence. */
  from: number;
  count: number;
  concurrency: number;
  deadlineMs: number;
}

/** Margin past the deadline before a call with no answer at all counts as hung. */
const HANG_MARGIN_MS = 10_000;

/** Sends the calls, `concurrency` at a time; resolves with one result per call, in index order. */
export async function sendCalls(o: SendOptions): Promise<CallResult[]> {
  const results: CallResult[] = new Array(o.count);
  let next = 0;
  const worker = async () => {
    while (next < o.count) {
      const i = next++;
      results[i] = await sendOne(o, o.from + i);
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  return results;
}

async function sendOne(o: SendOptions, index: number): Promise<CallResult> {
  const { service, method, request } = generateCall(o.targets, o.seed, index);
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<"hang">((resolve) => {
    timer = setTimeout(() => resolve("hang"), o.deadlineMs + HANG_MARGIN_MS);
  });
  const call = o.client.call(service, method, request, o.deadlineMs).then(
    (reply) => ({ code: "OK", message: JSON.stringify(reply) }),
    (err: ServiceError) => ({ code: status[err.code] ?? String(err.code), message: err.details ?? "" }),
  );
  const outcome = await Promise.race([call, hang]).finally(() => clearTimeout(timer));
  const ms = Math.round(performance.now() - started);
  if (outcome === "hang") return { index, method, code: "NO_REPLY", message: "no answer at all", ms };
  // The client ends a call itself at its deadline: the driver did not answer in time.
  const late = outcome.code === "DEADLINE_EXCEEDED" && ms >= o.deadlineMs;
  return { index, method, code: late ? "NO_REPLY" : outcome.code, message: outcome.message, ms };
}

/** What a reply must not carry: a stack frame or a path of the plugin's source. */
const LEAKS: [string, RegExp][] = [
  ["stack trace", /\n\s+at \S/],
  ["stack frame", /\bat [\w.<>]+ \(.*:\d+:\d+\)/],
  ["source path", /\/src\//],
  ["source file", /\.[cm]?[tj]s:\d/],
  ["node_modules", /node_modules/],
];

/** Why a result is a failure, or undefined when it is fine. */
export function problemOf(result: CallResult, requestText: string): string | undefined {
  if (result.code === "NO_REPLY") return `no reply within the deadline (${result.ms} ms)`;
  if (result.code === "UNKNOWN" || result.code === "INTERNAL") return `answered ${result.code}`;
  for (const [what, pattern] of LEAKS) {
    // A message may quote the request: only what the request did not bring counts.
    if (pattern.test(result.message) && !pattern.test(requestText)) return `reply carries a ${what}`;
  }
  return undefined;
}

export interface Failure {
  index: number;
  method: string;
  problem: string;
  code: string;
  message: string;
  request: string;
}

/** The failures among the results, each with its request regenerated and shortened. */
export function failuresOf(results: CallResult[], targets: FuzzTargets, seed: number): Failure[] {
  const failures: Failure[] = [];
  for (const r of results) {
    const { request } = generateCall(targets, seed, r.index);
    const problem = problemOf(r, JSON.stringify(request));
    if (!problem) continue;
    failures.push({
      index: r.index,
      method: r.method,
      problem,
      code: r.code,
      message: abbreviate(r.message).slice(0, 1000),
      request: JSON.stringify(shorten(request)),
    });
  }
  return failures;
}

/** Per RPC, how many calls got each status code. */
export function codeTable(results: CallResult[]): string {
  const counts = new Map<string, Map<string, number>>();
  const codes = new Set<string>();
  for (const r of results) {
    const row = counts.get(r.method) ?? new Map<string, number>();
    row.set(r.code, (row.get(r.code) ?? 0) + 1);
    counts.set(r.method, row);
    codes.add(r.code);
  }
  const columns = [...codes].sort((a, b) => (a === "OK" ? -1 : b === "OK" ? 1 : a.localeCompare(b)));
  const width = Math.max(...[...counts.keys()].map((m) => m.length), 6);
  const cell = (text: string, col: string) => text.padStart(Math.max(col.length, 5));
  const lines = [`${"RPC".padEnd(width)}  ${columns.map((c) => cell(c, c)).join(" ")}`];
  for (const [method, row] of [...counts].sort(([a], [b]) => a.localeCompare(b))) {
    lines.push(
      `${method.padEnd(width)}  ${columns.map((c) => cell(String(row.get(c) ?? "."), c)).join(" ")}`,
    );
  }
  return lines.join("\n");
}

// --- memory ---

/** The process's resident set in bytes, from /proc/<pid>/status. */
export async function rssBytes(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(text)?.[1];
  if (!kib) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(kib) * 1024;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * RSS after full collections: started with --expose-gc, the driver collects on SIGUSR2 (src/cli.ts).
 * It must be a memory-reducing one (`gc({ type: "major", flavor: "last-resort" })`): a plain gc()
 * leaves V8's pool of freed 256 KiB pages resident, which after a round of big requests is 100+
 * MiB that V8 reuses but does not return. Twice, with pauses, so that finalizers run in between.
 */
export async function rssAfterGc(driver: DriverProcess): Promise<number> {
  const pid = driver.child?.pid;
  if (!pid || !isRunning(driver)) throw new Error("the driver is not running");
  for (let i = 0; i < 2; i++) {
    process.kill(pid, "SIGUSR2");
    await sleep(1000);
  }
  return rssBytes(pid);
}

export const isRunning = (driver: DriverProcess): boolean =>
  driver.child !== undefined && driver.child.exitCode === null && driver.child.signalCode === null;

/** The heap figures prom-client exports (--http-endpoint), to tell a leak from memory V8 keeps. */
export async function heapFigures(metricsUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(metricsUrl)).text();
  const wanted = [
    "nodejs_heap_size_used_bytes",
    "nodejs_heap_size_total_bytes",
    "nodejs_external_memory_bytes",
  ];
  const out: Record<string, number> = {};
  for (const name of wanted) {
    const value = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, "m").exec(text)?.[1];
    if (value !== undefined) out[name.replace(/^nodejs_|_bytes$/g, "")] = Number(value);
  }
  return out;
}

/**
 * The runtime settings of the image (the Dockerfile's last stage): NODE_OPTIONS as node flags, and
 * the allocator's MALLOC_* variables, so that the memory measured is the deployed driver's.
 */
export async function imageRuntime(
  dockerfile: string,
): Promise<{ nodeArgs: string[]; env: Record<string, string> }> {
  const text = await readFile(dockerfile, "utf8");
  const lastStage = text.slice(text.lastIndexOf("\nFROM "));
  const nodeArgs: string[] = [];
  const env: Record<string, string> = {};
  for (const [, key, value] of lastStage.matchAll(/^ENV ([A-Z_][A-Z0-9_]*)=(\S*)\s*$/gm)) {
    if (key === "NODE_OPTIONS") nodeArgs.push(...value!.split(" ").filter(Boolean));
    else if (key!.startsWith("MALLOC_")) env[key!] = value!;
  }
  return { nodeArgs, env };
}

export const mib = (bytes: number) => `${(bytes / 1024 ** 2).toFixed(1)} MiB`;

/**
 * The resident memory by kind of mapping, from /proc/<pid>/smaps: the brk heap (main malloc
 * arena), other anonymous memory (V8's heap, thread arenas, mmapped buffers) and files (code).
 */
export async function residentByKind(pid: number): Promise<Record<string, number>> {
  const text = await readFile(`/proc/${pid}/smaps`, "utf8");
  const out: Record<string, number> = { brk: 0, anonymous: 0, files: 0 };
  let kind = "anonymous";
  for (const line of text.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      const name = header[1] ?? "";
      kind = name === "[heap]" ? "brk" : name.startsWith("/") ? "files" : "anonymous";
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)?.[1];
    if (rss) out[kind] = (out[kind] ?? 0) + Number(rss) * 1024;
  }
  return out;
}

// --- the machine ---

/**
 * Directories where a call that escaped the kubelet directory would leave marked names: those the
 * generator aims at, and the driver's working directory (it is the test's) and its parent, where
 * relative paths lead.
 */
export function watchedDirs(outsideDir: string): string[] {
  return [
    "/",
    "/etc",
    "/dev",
    "/dev/shm",
    "/proc",
    "/proc/self",
    "/sys",
    "/sys/kernel",
    tmpdir(),
    process.cwd(),
    dirname(process.cwd()),
    outsideDir,
  ];
}

export interface Escapes {
  /** Mount points outside the kubelet directory that the run made. */
  mounts: string[];
  /** Files and directories the run made outside the kubelet directory. */
  files: string[];
}

/**
 * What the fuzz made outside the kubelet directory: new mounts and names carrying the marker (or
 * anything inside the escape link's target). Other tests running at the same time make mounts of
 * their own, but never with the marker or in outsideDir.
 */
export async function findEscapes(kubeletDir: string, outsideDir: string): Promise<Escapes> {
  const ours = (p: string) =>
    p.includes(OUTSIDE_MARKER) || p === outsideDir || p.startsWith(`${outsideDir}/`);
  const inside = (p: string) => p.startsWith(`${kubeletDir}/`);
  const mounts = (await listMounts()).map((m) => m.mountPoint).filter((p) => ours(p) && !inside(p));
  const files: string[] = [];
  for (const dir of watchedDirs(outsideDir)) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const p = join(dir, name);
      if (name.startsWith(OUTSIDE_MARKER) || dir === outsideDir) files.push(p);
    }
  }
  return { mounts: [...new Set(mounts)], files: [...new Set(files)] };
}

/** Unmounts and removes what findEscapes found, so that a failed run leaves the machine clean. */
export async function removeEscapes(escapes: Escapes): Promise<void> {
  for (const mountPoint of [...escapes.mounts].sort((a, b) => b.length - a.length)) {
    for (let i = 0; i < 5; i++) await unmount(mountPoint).catch(() => undefined);
  }
  const stillMounted = (await listMounts()).map((m) => m.mountPoint);
  for (const file of escapes.files) {
    // Never delete through a mount: whatever is still mounted below stays, and is reported.
    if (stillMounted.some((m) => m === file || m.startsWith(`${file}/`))) continue;
    if (existsSync(file)) await rm(file, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Loop devices backed by files in dir (the attach simulation's): after stop(), none may be left. */
export async function loopDevicesOf(dir: string): Promise<string[]> {
  return (await listLoopDevices())
    .filter((d) => d.backFile.startsWith(`${dir}/`))
    .map((d) => `${d.name} (${d.backFile})`);
}

/** Mount points below dir. */
export async function mountsBelow(dir: string): Promise<string[]> {
  return (await listMounts()).map((m) => m.mountPoint).filter((p) => p.startsWith(`${dir}/`));
}
