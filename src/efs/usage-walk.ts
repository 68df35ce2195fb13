/**
 * A volume's own usage, measured like `du -sx`: a walk of its directory tree that counts allocated
 * bytes (st_blocks * 512) and entries (inodes), never follows a symbolic link (lstat) and never
 * enters another mount. EFS's statfs counts the whole file system, every access point of it, so it
 * cannot tell one volume's usage; only a walk can.
 *
 * The node runs the walk in a child process (measureUsage), never in its own: a syscall on an NFS
 * mount whose server stopped answering blocks its thread, and a walk makes one per entry; in this
 * process that would take the libuv threads every mount, statfs and file operation needs, for
 * good. A child can be killed. It also keeps a long walk off the plugin's event loop. The child
 * runs this same module (see the end of the file).
 */
import { spawn } from "node:child_process";
import type { Dir, Stats } from "node:fs";
import { lstat, opendir } from "node:fs/promises";
import { join } from "node:path";
import { entryBeside } from "../host/exec.ts";
import { listMounts, resolveMountPath } from "../host/mounts.ts";

export interface WalkResult {
  /** Allocated bytes, st_blocks * 512, the root directory included; a file with several hard links counts once, as in du. */
  bytes: number;
  /** Entries counted, the root directory included: the inodes the volume uses. */
  inodes: number;
  /** Set when the walk stopped early at a limit: bytes and inodes are then a lower bound. */
  partial?: "entries" | "time";
  /** Entries that could not be read (permission denied, I/O error): not counted. */
  unreadable: number;
  /** Mount points below the root that were not entered. */
  skippedMounts: number;
}

export interface WalkLimits {
  /** Entries after which the walk stops (partial: "entries"). */
  maxEntries: number;
  /** Milliseconds after which the walk stops (partial: "time"). */
  maxMs: number;
}

export interface WalkOptions extends WalkLimits {
  /** Paths not to enter, as the walk spells them (root joined with names): mount points below the root. */
  mountPoints?: ReadonlySet<string>;
  signal?: AbortSignal;
  /** The clock the time limit is measured with. */
  now?: () => number;
}

/** How many entries go by between checks of the signal and the time limit. */
const CHECK_EVERY = 256;

/**
 * Walks root in this process. Only for trees that cannot hang (local disks, tests) or inside the
 * child measureUsage starts. One syscall at a time: the walk never loads the server with more.
 */
export async function walkUsage(root: string, o: WalkOptions): Promise<WalkResult> {
  const now = o.now ?? performance.now.bind(performance);
  const started = now();
  const mountPoints = o.mountPoints ?? new Set<string>();
  const top = await lstat(root);
  if (!top.isDirectory()) throw new Error(`${root} is not a directory`);
  const result: WalkResult = { bytes: top.blocks * 512, inodes: 1, unreadable: 0, skippedMounts: 0 };
  // Inode numbers of files with several links, so that each is counted once.
  const linked = new Set<number>();
  const pending = [root];
  let sinceCheck = 0;

  while (pending.length > 0) {
    const dir = pending.pop()!;
    let handle: Dir;
    try {
      handle = await opendir(dir);
    } catch (err) {
      if (!isGone(err)) result.unreadable++;
      continue;
    }
    // Iterating a Dir closes it at the end and at a break or throw.
    for await (const entry of readEntries(handle, result)) {
      if (++sinceCheck >= CHECK_EVERY) {
        sinceCheck = 0;
        o.signal?.throwIfAborted();
        if (now() - started >= o.maxMs) result.partial = "time";
      }
      if (result.inodes >= o.maxEntries) result.partial = "entries";
      if (result.partial) return result;

      const path = join(dir, entry);
      let st: Stats;
      try {
        st = await lstat(path);
      } catch (err) {
        if (!isGone(err)) result.unreadable++;
        continue;
      }
      if (st.dev !== top.dev || mountPoints.has(path)) {
        result.skippedMounts++;
        continue;
      }
      if (st.nlink > 1 && !st.isDirectory()) {
        if (linked.has(st.ino)) continue;
        linked.add(st.ino);
      }
      result.inodes++;
      result.bytes += st.blocks * 512;
      if (st.isDirectory()) pending.push(path);
    }
  }
  return result;
}

/** The names in a directory; a directory that fails while being read counts as unreadable, what it gave is kept. */
async function* readEntries(handle: Dir, result: WalkResult): AsyncGenerator<string> {
  try {
    for await (const dirent of handle) yield dirent.name;
  } catch (err) {
    if (!isGone(err)) result.unreadable++;
  }
}

const isGone = (err: unknown): boolean => {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
};

/** The child's entry: usage-walk-child beside this module (compiled: beside the bundle's chunks). */
const SCRIPT = entryBeside(import.meta.url, "usage-walk-child");
/** A child that outlives its time limit by this much is killed: it is stuck (a server that does not answer). */
const STUCK_AFTER_MS = 60_000;
/** After SIGKILL, how long to wait for the child to exit before giving up on it (it may be stuck in the kernel). */
const EXIT_WAIT_MS = 5_000;

export interface MeasureOptions extends WalkLimits {
  /** Kills the walk; the promise then rejects with the signal's reason once the child has exited. */
  signal?: AbortSignal;
}

/**
 * Walks root in a child process (the same Node.js binary running this module). Resolves when the
 * child has exited, so that nothing keeps the mount busy any more; rejects when it fails, is
 * aborted, or is stuck past its time limit.
 */
export function measureUsage(root: string, o: MeasureOptions): Promise<WalkResult> {
  const { promise, resolve: settle, reject } = Promise.withResolvers<WalkResult>();
  o.signal?.throwIfAborted();
  const request: ChildRequest = { root, maxEntries: o.maxEntries, maxMs: o.maxMs };
  const child = spawn(process.execPath, [SCRIPT, JSON.stringify(request)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    if (stderr.length < 64 * 1024) stderr += chunk;
  });

  let failure: Error | undefined;
  let done = false;
  const finish = (outcome: () => void) => {
    if (done) return;
    done = true;
    clearTimeout(stuck);
    o.signal?.removeEventListener("abort", onAbort);
    outcome();
  };
  const kill = (err: Error) => {
    failure ??= err;
    child.kill("SIGKILL");
    setTimeout(() => finish(() => reject(failure)), EXIT_WAIT_MS).unref();
  };
  const onAbort = () => kill(o.signal!.reason instanceof Error ? o.signal!.reason : new Error("aborted"));
  o.signal?.addEventListener("abort", onAbort, { once: true });
  const stuck = setTimeout(
    () => kill(new Error(`usage walk of ${root} did not end within ${(o.maxMs + STUCK_AFTER_MS) / 1000} s`)),
    o.maxMs + STUCK_AFTER_MS,
  );
  stuck.unref();

  child.once("error", (err) => finish(() => reject(failure ?? err)));
  child.once("close", (code, signal) =>
    finish(() => {
      if (failure) return reject(failure);
      if (code !== 0) {
        return reject(
          new Error(`usage walk of ${root} failed (${code ?? signal}): ${stderr.trim() || "no output"}`),
        );
      }
      try {
        settle(parseResult(stdout));
      } catch (err) {
        reject(err);
      }
    }),
  );
  return promise;
}

interface ChildRequest extends WalkLimits {
  root: string;
}

function parseResult(text: string): WalkResult {
  const r = JSON.parse(text) as Partial<WalkResult>;
  if (typeof r.bytes !== "number" || typeof r.inodes !== "number") {
    throw new Error(`usage walk answered without bytes or inodes: ${text.slice(0, 200)}`);
  }
  return {
    bytes: r.bytes,
    inodes: r.inodes,
    ...(r.partial ? { partial: r.partial } : {}),
    unreadable: r.unreadable ?? 0,
    skippedMounts: r.skippedMounts ?? 0,
  };
}

/** The child: walks the root as the kernel names it (mount points are matched by that name), prints the result. */
export async function runChild(arg: string): Promise<void> {
  const request = JSON.parse(arg) as ChildRequest;
  const root = await resolveMountPath(request.root);
  const mountPoints = new Set(
    (await listMounts()).map((m) => m.mountPoint).filter((p) => p.startsWith(`${root}/`)),
  );
  // An orphan stops: nobody waits for its answer (the plugin died or was restarted).
  const parent = process.ppid;
  const orphaned = new AbortController();
  setInterval(() => {
    if (process.ppid !== parent) orphaned.abort(new Error("the plugin that started this walk is gone"));
  }, 1000).unref();
  const result = await walkUsage(root, { ...request, mountPoints, signal: orphaned.signal });
  process.stdout.write(JSON.stringify(result));
}
