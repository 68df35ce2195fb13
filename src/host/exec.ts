import { spawn } from "node:child_process";
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
 * kernel (D state) never exits, and we must not wait for it. The program runs in a process group
 * of its own, so that stopping it stops what it started: mount runs mount.nfs4, which left alone
 * would still mount after the caller was told the call failed.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const okCodes = opts.okCodes ?? [0];
  return new Promise((resolve, reject) => {
    let settled = false;
    const child = spawn(cmd, args, { env: { ...process.env, LC_ALL: "C", LANG: "C" }, detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outputBytes = 0;
    const text = (chunks: Buffer[]) => Buffer.concat(chunks).toString("utf8");
    const fail = (o: { exitCode: number | null; signal: string | null; timedOut: boolean; why: string }) =>
      reject(new CommandError({ cmd, args, stdout: text(out), stderr: text(err), ...o }));
    const finish = () => {
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    /**
     * Kills the command and every process it started, and fails without waiting for them: one
     * stuck in the kernel never exits.
     */
    const stop = (why: string, timedOut: boolean) => {
      if (settled) return;
      finish();
      try {
        process.kill(-(child.pid as number), "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
      fail({ exitCode: null, signal: "SIGKILL", timedOut, why });
    };
    const collect = (chunks: Buffer[]) => (chunk: Buffer) => {
      outputBytes += chunk.length;
      if (outputBytes > MAX_OUTPUT_BYTES) stop(`wrote more than ${MAX_OUTPUT_BYTES} bytes of output`, false);
      else chunks.push(chunk);
    };
    child.stdout.on("data", collect(out));
    child.stderr.on("data", collect(err));
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (settled) return;
      finish();
      fail({ exitCode: null, signal: null, timedOut: false, why: `could not run (${e.code ?? e.message})` });
    });
    child.on("close", (exitCode, signal) => {
      if (settled) return;
      finish();
      if (exitCode !== null && okCodes.includes(exitCode)) {
        resolve({ stdout: text(out), stderr: text(err), code: exitCode });
      } else if (exitCode !== null) {
        fail({ exitCode, signal: null, timedOut: false, why: `failed (exit ${exitCode})` });
      } else {
        fail({ exitCode: null, signal, timedOut: false, why: `was killed by ${signal}` });
      }
    });
    const timer = setTimeout(() => stop(`timed out after ${formatMs(timeoutMs)}`, true), timeoutMs);
    const onAbort = () => stop("was stopped: the caller's deadline passed", true);
    if (opts.signal?.aborted) onAbort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    // A write to a process that exits early raises EPIPE here; the exit status tells the story.
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
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
