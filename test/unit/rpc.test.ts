// The RPC wrapper (bindService, through serveCsi on a real unix socket) when a service method fails
// in a way nobody planned: the caller gets INTERNAL with a short message and no stack, the operator
// gets the stack in the log, and the driver goes on serving.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import { InflightKeys } from "../../src/server/inflight.ts";
import { abortedOutcome } from "../../src/server/rpc.ts";
import { type RunningServer, serveCsi } from "../../src/server/server.ts";
import { CsiClient, callFailure as failure } from "../harness/csi-client.ts";

const BUG_MESSAGE = "Cannot read properties of undefined (reading 'VolumeId') at /work/secret/path.ts";

let dir: string;
let logFile: string;
let server: RunningServer;
let client: CsiClient;
const inflight = new InflightKeys();

/** A controller whose methods fail the ways a bug would. */
const brokenController = {
  async CreateVolume(): Promise<never> {
    const response = undefined as unknown as { Volume: { VolumeId: string } };
    return response.Volume.VolumeId as never;
  },
  async DeleteVolume(): Promise<never> {
    throw new Error(BUG_MESSAGE);
  },
  async ControllerPublishVolume(): Promise<never> {
    throw "a string, not an Error";
  },
  ListVolumes(): never {
    // Thrown before any promise exists.
    throw new RangeError("Invalid array length");
  },
  async ControllerUnpublishVolume(): Promise<never> {
    throw new CsiError(status.NOT_FOUND, "volume_id vol-1: no such volume");
  },
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "rpc-test-"));
  logFile = join(dir, "driver.log");
  const log = createLogger("debug", logFile);
  const identity = {
    async GetPluginInfo() {
      return { name: "ebs.csi.aws.com", vendor_version: "test" };
    },
  };
  server = await serveCsi(
    join(dir, "csi.sock"),
    { identity, controller: brokenController },
    { log, metrics: createMetrics("aws_ebs_csi"), inflight },
  );
  client = new CsiClient(server.socketPath);
});

afterAll(async () => {
  client?.close();
  await server?.shutdown(1000);
  await rm(dir, { recursive: true, force: true });
});

const call = (method: string, request: object) => client.call("Controller", method, request, 10_000);

describe("unexpected exceptions", () => {
  it.each([
    ["CreateVolume (TypeError in an async method)", "CreateVolume", { name: "pvc-1" }],
    ["DeleteVolume (Error carrying a path)", "DeleteVolume", { volume_id: "vol-1" }],
    [
      "ControllerPublishVolume (a thrown string)",
      "ControllerPublishVolume",
      { volume_id: "vol-2", node_id: "i-1" },
    ],
    ["ListVolumes (synchronous throw)", "ListVolumes", {}],
  ])("%s becomes INTERNAL with a short message and no stack", async (_label, method, request) => {
    const err = await failure(call(method, request));
    expect(err.code).toBe(status.INTERNAL);
    expect(err.details).toBe("internal error: see the plugin log");
  });

  it("the stack goes to the log for the operator, with the request id and a done line", async () => {
    await failure(call("DeleteVolume", { volume_id: "vol-logged" }));
    const lines = (await readFile(logFile, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const unexpected = lines.filter((l) => l.msg === "unexpected error" && l.method === "DeleteVolume");
    expect(unexpected.length).toBeGreaterThan(0);
    const last = unexpected.at(-1);
    expect(last.err.message).toBe(BUG_MESSAGE);
    expect(last.err.stack).toMatch(/\n\s+at /);
    const done = lines.find((l) => l.msg === "done" && l.rid === last.rid);
    expect(done).toMatchObject({ method: "DeleteVolume", code: "INTERNAL" });
  });

  it("a thrown CsiError keeps its code and message", async () => {
    const err = await failure(call("ControllerUnpublishVolume", { volume_id: "vol-1", node_id: "i-1" }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toBe("volume_id vol-1: no such volume");
  });

  it("a method the service lacks is UNIMPLEMENTED, naming it", async () => {
    const err = await failure(call("ControllerGetVolume", { volume_id: "vol-1" }));
    expect(err.code).toBe(status.UNIMPLEMENTED);
    expect(err.details).toContain("ControllerGetVolume");
  });

  it("a failed call releases its volume: the next call for it is not ABORTED, and the server still serves", async () => {
    for (let i = 0; i < 3; i++) {
      const err = await failure(call("CreateVolume", { name: "pvc-again" }));
      expect(err.code).toBe(status.INTERNAL);
    }
    expect(inflight.size).toBe(0);
    const info = await client.call("Identity", "GetPluginInfo", {});
    expect(info.name).toBe("ebs.csi.aws.com");
  });
});

describe("the done line", () => {
  it("is at debug for a successful polled call (kubelet repeats them), at info for a failure or another call", async () => {
    await client.call("Identity", "GetPluginInfo", {});
    // Polled, but failed: the failure is news.
    await failure(client.call("Identity", "Probe", {}, 10_000));
    await failure(call("ControllerUnpublishVolume", { volume_id: "vol-1", node_id: "i-1" }));
    const lines = (await readFile(logFile, "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const doneOf = (method: string) => lines.filter((l) => l.msg === "done" && l.method === method).at(-1);
    expect(doneOf("GetPluginInfo")).toMatchObject({ level: "debug", code: "OK" });
    expect(doneOf("Probe")).toMatchObject({ level: "info", code: "UNIMPLEMENTED" });
    expect(doneOf("ControllerUnpublishVolume")).toMatchObject({ level: "info", code: "NOT_FOUND" });
  });
});

describe("abortedOutcome: what a call answers once it was aborted", () => {
  const aborted = (reason: unknown) => {
    const c = new AbortController();
    c.abort(reason);
    return c.signal;
  };
  const deadline = new CsiError(status.DEADLINE_EXCEEDED, "the caller's deadline passed");

  it("the deadline, not the CANCELLED of the aborted AWS request (which a sidecar would not retry)", () => {
    const out = abortedOutcome(
      new CsiError(status.CANCELLED, "creating volume pvc-1: AbortError: Request aborted"),
      aborted(deadline),
    ) as CsiError;
    expect(out.code).toBe(status.DEADLINE_EXCEEDED);
    expect(out.message).toBe(
      "the caller's deadline passed; creating volume pvc-1: AbortError: Request aborted",
    );
  });

  it("an unexpected error of aborted work is not shown, only the abort", () => {
    const out = abortedOutcome(new TypeError("x is undefined"), aborted(deadline)) as CsiError;
    expect(out.code).toBe(status.DEADLINE_EXCEEDED);
    expect(out.message).toBe("the caller's deadline passed");
  });

  it("a call that was not aborted keeps its own failure", () => {
    const own = new CsiError(status.NOT_FOUND, "no such volume");
    expect(abortedOutcome(own, new AbortController().signal)).toBe(own);
    expect(abortedOutcome(own, aborted(new Error("not a CSI reason")))).toBe(own);
  });
});
