// The command line as an operator meets it: --help and --version, one clear line for every bad
// flag before anything is served, a clear failure when a node cannot find out where it runs, and
// the documented skip of the LocalStack fake where it cannot run.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FLAGS } from "../../src/config.ts";
import { MAIN, REPO_ROOT } from "../harness/driver-process.ts";
import { FakeAwsUnavailable, startFakeAws } from "../harness/fake-aws.ts";
import { freePort } from "../harness/moto.ts";

const VERSION: string = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")).version;

/** Sockets, HOME and whatever a misbehaving driver might create go here. */
const dir = mkdtempSync(join(tmpdir(), "cli-test-"));

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the driver's entry point with a minimal environment (none of the test runner's CSI_*,
 * AWS_* or KUBERNETES_* variables leak in); kills it after killAfterMs so a driver that serves
 * instead of failing cannot hang the test.
 */
function runMain(args: string[], env: Record<string, string> = {}, killAfterMs = 30_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const lines = (text: string) => text.split("\n").filter((line) => line.trim() !== "");

describe("--help and --version", () => {
  it("--help lists every flag with its default and environment variable, on stdout, exit 0", async () => {
    const run = await runMain(["--help"]);
    expect(run.code).toBe(0);
    expect(run.stderr).toBe("");
    const help = lines(run.stdout);
    for (const [name, spec] of Object.entries(FLAGS)) {
      const line = help.find((l) => new RegExp(`^\\s+--${name}(\\s|$)`).test(l));
      expect(line, `--${name} in --help`).toBeDefined();
      if (spec.default) expect(line, `--${name}`).toContain(`default ${spec.default}`);
      if (spec.env) expect(line, `--${name}`).toContain(spec.env);
      expect(line, `--${name}`).toContain(spec.help);
    }
  });

  it("--version prints the package.json version", async () => {
    const run = await runMain(["--version"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(`aws-storage-csi ${VERSION}\n`);
    expect(run.stderr).toBe("");
  });
});

describe("bad command lines", () => {
  // gRPC's unix:// form takes an absolute path (three slashes): in unix://tmp/x.sock, "tmp" is a host.
  const authoritySocket = join(dir, "authority.sock");
  const table: [args: string[], flag: string][] = [
    [["--driver", "ebs", "--nope"], "--nope"],
    [["--driver", "ebs", "--mode", "sideways"], "--mode"],
    [["--driver", "ebs", "--endpoint", "tcp://x"], "--endpoint"],
    [["--driver", "ebs", "--mode", "controller", "--endpoint", `unix:/${authoritySocket}`], "--endpoint"],
    [["--mode", "controller"], "--driver"],
    [["--driver", "nfs"], "--driver"],
    [["--driver", "ebs", "--log-level", "loud"], "--log-level"],
    [["--driver", "ebs", "--http-endpoint", "nowhere"], "--http-endpoint"],
    [["--driver", "ebs", "--http-endpoint", "127.0.0.1:99999"], "--http-endpoint"],
    [["--driver", "ebs", "--extra-tags", "=value"], "--extra-tags"],
    [["--driver", "ebs", "--batching", "maybe"], "--batching"],
    [["--driver", "ebs", "--batch-window-ms", "-5"], "--batch-window-ms"],
    [["--driver", "ebs", "--volume-attach-limit", "lots"], "--volume-attach-limit"],
    [["--driver", "ebs", "--shutdown-timeout", "1.5"], "--shutdown-timeout"],
    [["--driver", "ebs", "--driver-name", "Not_A_Domain"], "--driver-name"],
    [["--driver"], "--driver"],
  ];

  it.each(table)("%j exits non-zero with one line naming %s, before serving anything", async (args, flag) => {
    const own = args.includes("--endpoint");
    const socket = args.at(-1)?.endsWith(authoritySocket)
      ? authoritySocket
      : join(dir, `bad-${flag.slice(2)}.sock`);
    const withEndpoint = own ? args : [...args, "--endpoint", `unix://${socket}`];
    const run = await runMain(withEndpoint, { AWS_REGION: "us-east-1" }, 10_000);
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    expect(lines(run.stderr)).toHaveLength(1);
    expect(run.stderr).toContain(flag);
    expect(run.stderr).not.toMatch(/\n\s+at /);
    expect(run.stdout).toBe("");
    expect(existsSync(socket)).toBe(false);
  });
});

describe("a node that cannot tell where it runs", () => {
  it("exits non-zero with one line saying what it tried (IMDS, Kubernetes, flags), serving nothing", async () => {
    const closedPort = await freePort();
    const imds = `http://127.0.0.1:${closedPort}`;
    const socket = join(dir, "node.sock");
    const run = await runMain(["--driver", "ebs", "--mode", "node", "--endpoint", `unix://${socket}`], {
      AWS_EC2_METADATA_SERVICE_ENDPOINT: imds,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "testing",
      AWS_SECRET_ACCESS_KEY: "testing",
    });
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    // JSON log lines (start-up) may come first; the failure itself is one plain line.
    const plain = lines(run.stderr).filter((line) => !line.startsWith("{"));
    expect(plain).toHaveLength(1);
    const message = plain[0] ?? "";
    expect(message).toContain(imds);
    expect(message).toMatch(/Kubernetes/);
    expect(message).toContain("--node-id");
    expect(message).not.toMatch(/\n\s+at /);
    expect(existsSync(socket)).toBe(false);
    console.log(`node without metadata says: ${message}`);
  });
});

describe("AWS_FAKE=localstack", () => {
  it("runs against LocalStack where it can, and otherwise says why and skips", async (ctx) => {
    const saved = process.env.AWS_FAKE;
    process.env.AWS_FAKE = "localstack";
    try {
      let aws: Awaited<ReturnType<typeof startFakeAws>>;
      try {
        aws = await startFakeAws();
      } catch (err) {
        if (!(err instanceof FakeAwsUnavailable)) throw err;
        console.log(`LocalStack skipped: ${err.message}`);
        expect(err.message).toMatch(/^AWS_FAKE=localstack cannot run: .+/);
        ctx.skip(err.message);
        return;
      }
      try {
        const instanceId = await aws.createInstance();
        expect(instanceId).toMatch(/^i-/);
      } finally {
        await aws.stop();
      }
    } finally {
      if (saved === undefined) delete process.env.AWS_FAKE;
      else process.env.AWS_FAKE = saved;
    }
  });
});
