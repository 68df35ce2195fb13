import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { waitUntil } from "../../src/backoff.ts";

// A test run that dies must not leave cluster components behind.
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** One long-running program of the cluster, its output in its own log file. */
export class Component {
  readonly name: string;
  readonly logFile: string;
  readonly #command: string[];
  readonly #env: Record<string, string>;
  #child: ChildProcess | undefined;
  #exit: Promise<string> | undefined;
  /** stop() was asked for: the exit that follows is not a crash. */
  #stopping = false;

  constructor(name: string, command: string[], logFile: string, env: Record<string, string> = {}) {
    this.name = name;
    this.#command = command;
    this.logFile = logFile;
    this.#env = env;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  start(): void {
    const out = openSync(this.logFile, "a");
    const [cmd, ...args] = this.#command;
    const child = spawn(cmd!, args, { stdio: ["ignore", out, out], env: { ...process.env, ...this.#env } });
    closeSync(out);
    this.#child = child;
    this.#stopping = false;
    running.add(child);
    this.#exit = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        running.delete(child);
        resolve(`${this.name} exited (${code ?? signal})`);
      }),
    );
  }

  /** Rejects as soon as the program exits: race it against a readiness check. */
  async exited(): Promise<never> {
    throw new Error(`${await this.#exit}: ${this.tail(30)}`);
  }

  /** Whether the program has exited without stop() asking it to. */
  get crashedAlready(): boolean {
    return this.#child !== undefined && !this.running && !this.#stopping;
  }

  /**
   * Rejects if the program exits without stop() asking it to (it crashed, or could not start);
   * never settles otherwise. Race it against a wait, so that a dead program fails the wait at once.
   */
  async crashed(): Promise<never> {
    const how = await this.#exit;
    if (how === undefined || this.#stopping) return new Promise<never>(() => undefined);
    throw new Error(`${how} unexpectedly: ${this.tail(30)}`);
  }

  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 20_000): Promise<void> {
    this.#stopping = true;
    const child = this.#child;
    if (!child || !this.running) return;
    const done = this.#exit!;
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await done;
    clearTimeout(timer);
  }

  /** The last lines of the log, for failure messages. */
  tail(lines = 40): string {
    try {
      return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }
}

/**
 * Polls (waitUntil, every 125-250 ms) until check returns a value; a check that throws counts as
 * "not yet", and the last such error is in the timeout's message. Fails at once if `also` rejects
 * (a process that exited).
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
  also?: Promise<never>,
): Promise<T> {
  let last: unknown;
  // Polling stops when `also` fails first.
  const stop = new AbortController();
  also?.catch(() => stop.abort());
  const poll = waitUntil(
    what,
    () =>
      check().catch((err: unknown) => {
        last = err;
        return undefined;
      }),
    { initialMs: 250, factor: 1, maxDelayMs: 250, timeoutMs, signal: stop.signal },
  ).catch((err: Error) => {
    throw last === undefined ? err : new Error(`${err.message}: ${String(last)}`);
  });
  return also ? Promise.race([poll, also]) : poll;
}
