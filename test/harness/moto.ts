// Launches moto's server (the fake AWS) on a loopback port of the kernel's choosing for one test run.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { createServer } from "node:net";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Moto {
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** The server's process (the benchmark gives it a CPU of its own). */
  pid: number | undefined;
  /** Forgets every resource in every service and region. */
  reset(): Promise<void>;
  /** Kills the server and waits for it to exit. */
  stop(): Promise<void>;
}

const MOTO_VERSION = "5.2.1";
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 5_000;
const repoRoot = fileURLToPath(new URL("../../", import.meta.url));
const venvMotoServer = join(repoRoot, ".cache", "venv", "bin", "moto_server");
const MOTO_PATCHES = fileURLToPath(new URL("./moto-patches", import.meta.url));

const installHint =
  `moto server not found. Install it with:\n` +
  `  python3 -m venv ${join(repoRoot, ".cache", "venv")} && ` +
  `${join(repoRoot, ".cache", "venv", "bin", "pip")} install 'moto[server]==${MOTO_VERSION}'\n` +
  `or point MOTO_SERVER at a moto_server executable.`;

// Sets PR_SET_PDEATHSIG (Linux) so the server is killed even if Node itself is SIGKILLed, then
// execs moto in the same process. argv: <parent pid> <command> <args...>.
const dieWithParent = [
  "import ctypes, os, signal, sys",
  "try: ctypes.CDLL(None).prctl(1, signal.SIGKILL)",
  "except Exception: pass",
  "if os.getppid() != int(sys.argv[1]): sys.exit(1)",
  "os.execvp(sys.argv[2], sys.argv[2:])",
].join("\n");

export async function startMoto(): Promise<Moto> {
  const command = findMotoCommand();
  // Port 0: the server binds a port the kernel picks and prints it. A port picked beforehand could
  // be taken meanwhile, by another test's moto even, which would then answer in its place.
  const args = [...command.slice(1), "-H", "127.0.0.1", "-p", "0"];
  const python = findOnPath("python3");
  // moto-patches/sitecustomize.py corrects moto where it behaves unlike AWS (see there).
  const env = {
    ...process.env,
    PYTHONPATH: [MOTO_PATCHES, process.env["PYTHONPATH"]].filter(Boolean).join(delimiter),
  };
  const child = python
    ? spawn(python, ["-c", dieWithParent, String(process.pid), command[0]!, ...args], { stdio: "pipe", env })
    : spawn(command[0]!, args, { stdio: "pipe", env });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);

  let output = "";
  let listening: string | undefined;
  const keepTail = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
    listening ??= /Running on (http:\/\/127\.0\.0\.1:\d+)/.exec(output)?.[1];
  };
  child.stdout?.on("data", keepTail);
  child.stderr?.on("data", keepTail);

  let url: string;
  try {
    url = await waitUntilAnswering(
      () => listening,
      child,
      () => output,
    );
  } catch (error) {
    await terminate(child);
    process.off("exit", killOnExit);
    throw error;
  }

  return {
    url,
    pid: child.pid,
    async reset() {
      const response = await fetch(`${url}/moto-api/reset`, { method: "POST" });
      if (!response.ok) throw new Error(`moto reset failed: HTTP ${response.status}`);
    },
    async stop() {
      await terminate(child);
      process.off("exit", killOnExit);
    },
  };
}

/** The command (and leading arguments) that runs moto's server, in order of preference. */
function findMotoCommand(): string[] {
  const fromEnv = process.env["MOTO_SERVER"];
  if (fromEnv) {
    if (!isExecutable(fromEnv))
      throw new Error(`MOTO_SERVER=${fromEnv} is not an executable file.\n${installHint}`);
    return [fromEnv];
  }
  if (isExecutable(venvMotoServer)) return [venvMotoServer];
  const onPath = findOnPath("moto_server");
  if (onPath) return [onPath];
  const python = findOnPath("python3");
  if (python && canImportMotoServer(python)) return [python, "-m", "moto.server"];
  throw new Error(installHint);
}

function canImportMotoServer(python: string): boolean {
  try {
    execFileSync(python, ["-c", "import moto.server"], { stdio: "ignore", timeout: 20_000 });
    return true;
  } catch {
    return false;
  }
}

function findOnPath(name: string): string | undefined {
  const dirs = (process.env["PATH"] ?? "").split(delimiter).filter(Boolean);
  return dirs.map((dir) => join(dir, name)).find(isExecutable);
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** A loopback port that was free a moment ago (the kernel picks it for port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Waits until the server has said where it listens and answers there; returns its URL. */
async function waitUntilAnswering(
  listening: () => string | undefined,
  child: ChildProcess,
  output: () => string,
): Promise<string> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `moto server exited during start-up (${child.exitCode ?? child.signalCode}):\n${output()}`,
      );
    }
    const url = listening();
    try {
      if (url) {
        await fetch(`${url}/moto-api/data.json`, { signal: AbortSignal.timeout(1000) });
        return url;
      }
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`moto server did not answer within ${START_TIMEOUT_MS} ms:\n${output()}`);
}

/** SIGTERM, SIGKILL after graceMs; resolves once the process has exited. */
export async function terminate(child: ChildProcess, graceMs = STOP_TIMEOUT_MS): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Whether a process with this pid exists (one of another user's counts too). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
