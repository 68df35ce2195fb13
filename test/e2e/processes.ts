import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { createServer } from "node:net";

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

  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 20_000): Promise<void> {
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

/** Polls until check returns a value (not undefined), or fails with what it last saw. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
  also?: Promise<never>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  const poll = (async () => {
    while (Date.now() < deadline) {
      try {
        const value = await check();
        if (value !== undefined) return value;
      } catch (err) {
        last = err;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
  })();
  if (also) also.catch(() => undefined);
  return also ? Promise.race([poll, also]) : poll;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}
