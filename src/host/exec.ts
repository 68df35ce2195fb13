import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * The path of a Node.js entry point (`name`, no extension) that sits beside the module at
 * moduleUrl: its .ts source when the sources run as they are, its .js file in the build, where
 * scripts/build.ts puts every entry point beside the chunks that start it.
 */
export function entryBeside(moduleUrl: string, name: string): string {
  return fileURLToPath(new URL(`./${name}.${moduleUrl.endsWith(".ts") ? "ts" : "js"}`, moduleUrl));
}

export interface RunOptions {
  /** Kill the command and fail after this long. Default DEFAULT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Written to the command's stdin. Without it stdin is closed at once, so a prompt reads EOF and fails. */
  input?: string;
  /** Exit codes that count as success (their output is returned). Default [0]. */
  okCodes?: number[];
  /** Kill the command when this aborts (the caller's deadline). Not for mkfs or resize: half done is worse. */
  signal?: AbortSignal | undefined;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
const STDERR_LINES_IN_MESSAGE = 5;

/** A command that could not start, exited with a code not in okCodes, was killed, or timed out. */
export class CommandError extends Error {
  readonly cmd: string;
  readonly args: readonly string[];
  /** null when the command did not exit by itself (not started, killed, timed out). */
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;

  constructor(o: {
    cmd: string;
    args: readonly string[];
    exitCode: number | null;
    signal: string | null;
    stdout: string;
    stderr: string;
    timedOut: boolean;
    why: string;
  }) {
    const detail = firstLines(o.stderr.trim() || o.stdout.trim(), STDERR_LINES_IN_MESSAGE);
    super(`${commandLine(o.cmd, o.args)} ${o.why}${detail ? `: ${detail}` : ""}`);
    this.name = "CommandError";
    this.cmd = o.cmd;
    this.args = o.args;
    this.exitCode = o.exitCode;
    this.signal = o.signal;
    this.stdout = o.stdout;
    this.stderr = o.stderr;
    this.timedOut = o.timedOut;
  }
}

/**
 * Runs a program without a shell. The locale is forced to C so that callers may match stderr
 * (e.g. "target is busy"). The timeout is enforced by our own timer: a process stuck in the
 * kernel (D state) never exits, and we must not wait for it.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const okCodes = opts.okCodes ?? [0];
  return new Promise((resolve, reject) => {
    let settled = false;
    const child = execFile(
      cmd,
      args,
      {
        encoding: "utf8",
        maxBuffer: MAX_OUTPUT_BYTES,
        env: { ...process.env, LC_ALL: "C", LANG: "C" },
      },
      (err, stdout, stderr) => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        if (!err) return resolve({ stdout, stderr, code: 0 });
        const exitCode = typeof err.code === "number" ? err.code : null;
        if (exitCode !== null && okCodes.includes(exitCode))
          return resolve({ stdout, stderr, code: exitCode });
        const signal = err.signal ?? null;
        const why =
          exitCode !== null
            ? `failed (exit ${exitCode})`
            : signal
              ? `was killed by ${signal}`
              : `could not run (${typeof err.code === "string" ? err.code : err.message})`;
        reject(new CommandError({ cmd, args, exitCode, signal, stdout, stderr, timedOut: false, why }));
      },
    );
    /** Kills the command and fails without waiting for it: one stuck in the kernel never exits. */
    const stop = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      const o = { cmd, args, exitCode: null, signal: "SIGKILL", stdout: "", stderr: "", timedOut: true, why };
      reject(new CommandError(o));
    };
    const timer = setTimeout(() => stop(`timed out after ${formatMs(timeoutMs)}`), timeoutMs);
    const onAbort = () => stop("was stopped: the caller's deadline passed");
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.once("exit", () => opts.signal?.removeEventListener("abort", onAbort));
    // A write to a process that exits early raises EPIPE here; the exit status tells the story.
    child.stdin?.on("error", () => {});
    child.stdin?.end(opts.input ?? "");
  });
}

function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (a === "" || /[\s"'\\]/.test(a) ? JSON.stringify(a) : a)).join(" ");
}

function firstLines(text: string, n: number): string {
  const lines = text.split("\n");
  return lines.length <= n ? text : `${lines.slice(0, n).join("\n")}\n…`;
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 100) / 10}s` : `${ms}ms`;
}
