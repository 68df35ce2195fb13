// The gRPC transport of the driver process, seen from outside: what it logs (never a secret), the
// shape of each log line, ABORTED for a busy volume, /metrics, graceful SIGTERM and stale sockets.
import { randomUUID } from "node:crypto";
import { existsSync, lstatSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { callFailure as failure } from "../harness/csi-client.ts";
import { DriverProcess } from "../harness/driver-process.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";
import { freePort } from "../harness/moto.ts";

const GiB = 1024 ** 3;
const SECRET = `s3cr3t-${randomUUID()}`;
const secrets = { password: SECRET, "aws-access-key": `AKIA-${SECRET}` };
const mountCap = { mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } };
const blockCap = { block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" } };

let env: EbsEnv;
let metricsPort: number;

beforeAll(async () => {
  metricsPort = await freePort();
  // --mode all serves the node service too (no disks attach: attach is off), for NodeStageVolume.
  env = await startEbsEnv({
    mode: "all",
    attach: false,
    extraArgs: ["--log-level", "debug", "--http-endpoint", `127.0.0.1:${metricsPort}`],
  });
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

let seq = 0;
const uniqueName = (what: string) => `pvc-${what}-${process.pid}-${++seq}`;

const controller = (method: string, request: object) => env.client.call("Controller", method, request);

/** Polls until `check` holds; fails with `what` after 10 s. */
async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (check()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface LogLine {
  level: string;
  time: string;
  msg: string;
  rid?: string;
  method?: string;
  code?: string;
  ms?: number;
  [key: string]: unknown;
}

function logLines(): LogLine[] {
  return env.driver.stderr
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      try {
        return JSON.parse(line) as LogLine;
      } catch {
        throw new Error(`a log line is not JSON: ${line}`);
      }
    });
}

describe("logs", () => {
  it("a secret sent with any call never reaches the log, while the calls themselves are logged", async () => {
    const name = uniqueName("secret");
    const created = await controller("CreateVolume", {
      name,
      capacity_range: { required_bytes: GiB },
      volume_capabilities: [mountCap],
      secrets,
    });
    const volumeId = created.volume.volume_id as string;
    // Failing calls log their errors: the secret must not ride along there either.
    const badParameter = await failure(
      controller("CreateVolume", {
        name: uniqueName("secret-bad"),
        volume_capabilities: [mountCap],
        parameters: { nope: "x" },
        secrets,
      }),
    );
    expect(badParameter.code).toBe(status.INVALID_ARGUMENT);
    const tooBig = await failure(
      controller("CreateVolume", {
        name: uniqueName("secret-big"),
        volume_capabilities: [mountCap],
        secrets: Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, SECRET])),
      }),
    );
    expect(tooBig.code).toBe(status.INVALID_ARGUMENT);
    expect(tooBig.details).not.toContain(SECRET);

    await controller("ControllerPublishVolume", {
      volume_id: volumeId,
      node_id: env.instanceId,
      volume_capability: mountCap,
      secrets,
    });
    await controller("ValidateVolumeCapabilities", {
      volume_id: volumeId,
      volume_capabilities: [mountCap],
      secrets,
    });
    await controller("ControllerExpandVolume", {
      volume_id: volumeId,
      capacity_range: { required_bytes: 2 * GiB },
      secrets,
    });
    await controller("ControllerModifyVolume", {
      volume_id: volumeId,
      mutable_parameters: { tagSpecification_1: "team=storage" },
      secrets,
    });
    await env.client.call("Node", "NodeStageVolume", {
      volume_id: volumeId,
      staging_target_path: join(env.dir, "staging"),
      volume_capability: blockCap,
      publish_context: { devicePath: "/dev/xvdaa" },
      secrets,
    });
    await controller("ControllerUnpublishVolume", { volume_id: volumeId, node_id: env.instanceId, secrets });
    await controller("DeleteVolume", { volume_id: volumeId, secrets });

    const log = env.driver.stderr;
    expect(log).not.toContain(SECRET);
    // The requests were logged (debug), with their secrets replaced.
    const calls = logLines().filter((l) => l.msg === "call");
    for (const method of [
      "CreateVolume",
      "ControllerPublishVolume",
      "ValidateVolumeCapabilities",
      "ControllerExpandVolume",
      "ControllerModifyVolume",
      "NodeStageVolume",
      "ControllerUnpublishVolume",
      "DeleteVolume",
    ]) {
      const logged = calls.filter((l) => l.method === method);
      expect(logged.length, method).toBeGreaterThan(0);
      for (const line of logged) {
        expect((line.request as { secrets?: unknown }).secrets, method).toBe("[redacted]");
        expect(line.rid).toMatch(/^[0-9a-f]{8}$/);
      }
    }
    expect(log).toContain(volumeId);
  });

  it("every log line is JSON; each call has one 'done' line with its request id, method, code and duration", async () => {
    // Calls of each outcome, so the log holds OK, INVALID_ARGUMENT and NOT_FOUND lines whatever ran before.
    await env.client.call("Identity", "Probe", {});
    await controller("ControllerGetCapabilities", {});
    await failure(
      controller("CreateVolume", {
        name: uniqueName("log"),
        volume_capabilities: [mountCap],
        parameters: { nope: "x" },
      }),
    );
    await failure(controller("ControllerGetVolume", { volume_id: "vol-0123456789abcdef0" }));
    await controller("DeleteVolume", { volume_id: "vol-0123456789abcdef0" });
    const lines = logLines();
    expect(lines.length).toBeGreaterThan(10);
    for (const line of lines) {
      expect(typeof line.level).toBe("string");
      expect(typeof line.msg).toBe("string");
      expect(Number.isNaN(Date.parse(line.time))).toBe(false);
    }
    const done = lines.filter((l) => l.msg === "done");
    expect(done.length).toBeGreaterThan(5);
    for (const line of done) {
      expect(line.rid).toMatch(/^[0-9a-f]{8}$/);
      expect(typeof line.method).toBe("string");
      expect(Object.keys(status)).toContain(line.code);
      expect(typeof line.ms).toBe("number");
      expect(line.ms).toBeGreaterThanOrEqual(0);
    }
    // One done line per call, and each call's lines share its request id.
    const rids = done.map((l) => l.rid);
    expect(new Set(rids).size).toBe(rids.length);
    const started = new Map(lines.filter((l) => l.msg === "call").map((l) => [l.rid, l.method]));
    for (const line of done) expect(started.get(line.rid), `${line.method} ${line.rid}`).toBe(line.method);
    expect(done.find((l) => l.method === "CreateVolume" && l.code === "INVALID_ARGUMENT")).toBeDefined();
    expect(done.find((l) => l.method === "DeleteVolume" && l.code === "OK")).toBeDefined();
    expect(done.find((l) => l.method === "ControllerGetVolume" && l.code === "NOT_FOUND")).toBeDefined();
    expect(done.find((l) => l.method === "Probe" && l.code === "OK")).toBeDefined();
    // A failed call says why, in the same line set as its request id.
    const failed = lines.find((l) => l.msg === "call failed" && l.code === "INVALID_ARGUMENT");
    expect(failed?.rid).toMatch(/^[0-9a-f]{8}$/);
    expect(String(failed?.error)).toContain("parameters.nope");
  });
});

describe("concurrency", () => {
  it("a second call for a volume name that is still being created gets ABORTED; the first completes", async () => {
    const name = uniqueName("busy");
    const request = { name, capacity_range: { required_bytes: GiB }, volume_capabilities: [mountCap] };
    env.aws.proxy.resetStats();
    env.aws.proxy.faults.latencyMs = { CreateVolume: 2000 };
    try {
      const first = controller("CreateVolume", request);
      await until("the first CreateVolume to reach EC2", () => (env.aws.proxy.stats().CreateVolume ?? 0) > 0);
      const second = await failure(controller("CreateVolume", request));
      expect(second.code).toBe(status.ABORTED);
      expect(second.details).toContain(name);
      const volumeId = (await first).volume.volume_id;
      // Once the first is done, the retry is answered with the same volume.
      expect((await controller("CreateVolume", request)).volume.volume_id).toBe(volumeId);
      expect(env.aws.proxy.stats().CreateVolume).toBe(1);
      await controller("DeleteVolume", { volume_id: volumeId });
    } finally {
      env.aws.proxy.faults.latencyMs = undefined;
    }
  });
});

describe("/metrics", () => {
  it("serves the AWS API metrics by request (durations, errors, throttles) and CSI call durations", async () => {
    const volumeId = (
      await controller("CreateVolume", {
        name: uniqueName("metrics"),
        capacity_range: { required_bytes: GiB },
        volume_capabilities: [mountCap],
      })
    ).volume.volume_id;
    // A DeleteVolume of a well-formed unknown id: EC2 answers InvalidVolume.NotFound (the call is OK).
    await controller("DeleteVolume", { volume_id: "vol-0123456789abcdef0" });
    // Throttle DescribeVolumes: an empty bucket that refills, so the SDK's retries get through.
    env.aws.proxy.faults.throttle = { buckets: { DescribeVolumes: { capacity: 0, refillPerSecond: 5 } } };
    try {
      await controller("ControllerGetVolume", { volume_id: volumeId }).catch(() => undefined);
    } finally {
      env.aws.proxy.faults.throttle = undefined;
    }
    await controller("DeleteVolume", { volume_id: volumeId });

    const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(response.status).toBe(200);
    const text = await response.text();
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? Number.NaN);
    expect(
      value(/^aws_ebs_csi_api_request_duration_seconds_count\{request="CreateVolume"\} (\d+)/m),
    ).toBeGreaterThan(0);
    expect(
      value(/^aws_ebs_csi_api_request_duration_seconds_count\{request="DescribeVolumes"\} (\d+)/m),
    ).toBeGreaterThan(0);
    expect(
      value(
        /^aws_ebs_csi_api_request_errors_total\{request="DeleteVolume",error="InvalidVolume\.NotFound"\} (\d+)/m,
      ),
    ).toBeGreaterThan(0);
    expect(
      value(/^aws_ebs_csi_api_request_throttles_total\{request="DescribeVolumes"\} (\d+)/m),
    ).toBeGreaterThan(0);
    expect(
      value(/^csi_rpc_duration_seconds_count\{method="CreateVolume",code="OK"\} (\d+)/m),
    ).toBeGreaterThan(0);
    expect(
      value(/^csi_rpc_duration_seconds_count\{method="ControllerGetVolume",code="[A-Z_]+"\} (\d+)/m),
    ).toBeGreaterThan(0);
    expect(text).toMatch(/^# TYPE csi_rpc_duration_seconds histogram$/m);

    expect((await fetch(`http://127.0.0.1:${metricsPort}/`)).status).toBe(404);
  });
});

describe("process lifecycle", () => {
  it("SIGTERM lets a call in flight finish OK, then the process exits 0 and removes its socket", async () => {
    const name = uniqueName("sigterm");
    env.aws.proxy.resetStats();
    env.aws.proxy.faults.latencyMs = { CreateVolume: 2000 };
    try {
      const inFlight = controller("CreateVolume", {
        name,
        capacity_range: { required_bytes: GiB },
        volume_capabilities: [mountCap],
      });
      await until("CreateVolume to reach EC2", () => (env.aws.proxy.stats().CreateVolume ?? 0) > 0);
      const exit = await env.driver.stop("SIGTERM");
      const reply = await inFlight;
      expect(exit).toBe(0);
      expect(existsSync(env.socketPath)).toBe(false);
      const inMoto = await env.aws.ec2.send(
        new DescribeVolumesCommand({ Filters: [{ Name: "tag:CSIVolumeName", Values: [name] }] }),
      );
      expect(inMoto.Volumes?.map((v) => v.VolumeId)).toEqual([reply.volume.volume_id]);
      expect(env.driver.stderr).toContain("stopping: finishing in-flight calls");
    } finally {
      env.aws.proxy.faults.latencyMs = undefined;
      if (env.driver.child?.exitCode !== null) await env.driver.start();
    }
  });

  it("a socket file left by a SIGKILLed driver is removed and served again at the next start", async () => {
    expect(await env.driver.stop("SIGKILL")).toBe("SIGKILL");
    expect(lstatSync(env.socketPath).isSocket()).toBe(true);
    await env.driver.start();
    expect(env.driver.stderr).toContain("removed stale socket");
    const probe = await env.client.call("Identity", "Probe", {});
    expect(probe.ready?.value).toBe(true);
  });

  it("refuses to start, in one line, when something other than a socket sits at the socket path", async () => {
    const path = join(env.dir, "not-a-socket.sock");
    await writeFile(path, "precious\n");
    const driver = new DriverProcess({
      socketPath: path,
      args: ["--driver", "ebs", "--mode", "controller", "--log-level", "warn"],
      env: env.aws.env,
    });
    try {
      await expect(driver.start(15_000)).rejects.toThrow(/exited/);
      const lines = driver.stderr.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(path);
      expect(lines[0]).toContain("not a socket");
      expect(await readFile(path, "utf8")).toBe("precious\n");
    } finally {
      await driver.stop("SIGKILL");
    }
  });
});
