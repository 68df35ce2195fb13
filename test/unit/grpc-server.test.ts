// The driver's gRPC server (src/server/grpc.ts, through serveCsi) on a real unix socket, as gRPC
// clients see it: grpc-js's client for what a sidecar or kubelet does, raw HTTP/2 for what a
// broken or hostile client could send. Every malformed call gets a status naming what is wrong,
// and the server goes on serving.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http, { type Server } from "node:http";
import http2 from "node:http2";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { csiServiceDefinitions } from "../../src/csi/proto.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import { GrpcServer, percentEncode } from "../../src/server/grpc.ts";
import { InflightKeys } from "../../src/server/inflight.ts";
import type { RpcContext } from "../../src/server/rpc.ts";
import { type RunningServer, serveCsi } from "../../src/server/server.ts";
import { CsiClient, callFailure as failure } from "../harness/csi-client.ts";

let dir: string;
let logFile: string;
let socket: string;
let server: RunningServer;
let client: CsiClient;
const inflight = new InflightKeys();

/** How the last waiting call ended, as its handler saw it. */
let lastAbort: { code: number; message: string } | undefined;
let release: (() => void) | undefined;

/** Waits until the caller goes, or until released; reports the abort reason. */
async function waitForAbort(_req: unknown, ctx: RpcContext): Promise<object> {
  await new Promise<void>((resolve) => {
    release = resolve;
    ctx.signal.addEventListener("abort", () => {
      const reason = ctx.signal.reason as CsiError;
      lastAbort = { code: reason.code, message: reason.message };
      resolve();
    });
  });
  if (ctx.signal.aborted) throw ctx.signal.reason;
  return {};
}

const identity = {
  async GetPluginInfo() {
    return { name: "ebs.csi.aws.com", vendor_version: "test" };
  },
  Probe: waitForAbort,
};
/**
 * What the handlers of calls that came together did, in order: "start <id>" when a handler started,
 * "sent <id>" when the HTTP server behind it (AWS, for the driver) received that handler's request.
 */
const events: string[] = [];
/** The event-loop turn each DeleteVolume handler started in, counted by a test's own setImmediate loop. */
const startTurns: number[] = [];
let turn = 0;
let aws: Server;
const awsAgent = new http.Agent({ keepAlive: true });

const controller = {
  /** Sends one HTTP request, as the driver's DeleteVolume sends one to EC2. */
  async DeleteVolume(req: { volume_id: string }) {
    events.push(`start ${req.volume_id}`);
    startTurns.push(turn);
    const { port } = aws.address() as { port: number };
    await new Promise<void>((resolve, reject) => {
      const out = http.request(
        { host: "127.0.0.1", port, path: `/${req.volume_id}`, agent: awsAgent },
        (res) => {
          res.resume();
          res.on("end", resolve);
        },
      );
      out.on("error", reject);
      out.end();
    });
    return {};
  },
  async CreateVolume(req: { name: string }) {
    throw new CsiError(status.INVALID_ARGUMENT, `name ${req.name}: not allowed`);
  },
  async ListVolumes() {
    return { entries: "not a list" };
  },
};

async function start(): Promise<void> {
  server = await serveCsi(
    socket,
    { identity, controller },
    {
      log: createLogger("debug", logFile),
      metrics: createMetrics("aws_ebs_csi"),
      inflight,
    },
  );
  client = new CsiClient(socket);
}

beforeAll(async () => {
  aws = http.createServer((req, res) => {
    events.push(`sent ${req.url?.slice(1)}`);
    res.end();
  });
  await new Promise<void>((resolve) => aws.listen(0, "127.0.0.1", resolve));
  dir = await mkdtemp(join(tmpdir(), "grpc-server-test-"));
  logFile = join(dir, "driver.log");
  socket = join(dir, "csi.sock");
  await start();
});

afterAll(async () => {
  awsAgent.destroy();
  aws?.close();
  client?.close();
  await server?.shutdown(1000);
  await rm(dir, { recursive: true, force: true });
});

afterEach(() => {
  release?.();
  release = undefined;
  lastAbort = undefined;
});

/** One raw HTTP/2 request on the socket: the answer's headers, trailers and body. */
async function raw(
  headers: http2.OutgoingHttpHeaders,
  body: Buffer = Buffer.alloc(0),
): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: Buffer }> {
  const session = http2.connect("http://localhost", { createConnection: () => connect(socket) });
  try {
    return await new Promise((resolve, reject) => {
      const req = session.request({ ":method": "POST", "content-type": "application/grpc", ...headers });
      let answer: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      req.on("response", (h) => {
        answer = h;
      });
      req.on("trailers", (t) => {
        trailers = t;
      });
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => resolve({ headers: answer, trailers, body: Buffer.concat(chunks) }));
      req.on("error", reject);
      req.end(body);
    });
  } finally {
    session.close();
  }
}

/** A length-prefixed gRPC message. */
function frame(message: Buffer, compressed = false): Buffer {
  const head = Buffer.alloc(5);
  head[0] = compressed ? 1 : 0;
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

const PLUGIN_INFO = "/csi.v1.Identity/GetPluginInfo";
/** The grpc-status and decoded grpc-message of a headers-only answer. */
const statusOf = (h: http2.IncomingHttpHeaders) => ({
  code: Number(h["grpc-status"]),
  message: decodeURIComponent(String(h["grpc-message"] ?? "")),
});

describe("calls as gRPC clients make them", () => {
  it("answers a unary call with its message and status OK, many at once on one connection", async () => {
    const answers = await Promise.all(
      Array.from({ length: 200 }, () => client.call("Identity", "GetPluginInfo", {})),
    );
    expect(answers.every((a) => a.name === "ebs.csi.aws.com" && a.vendor_version === "test")).toBe(true);
  });

  it("starts calls that came together a few per event-loop turn: the first one's request leaves before the last starts", async () => {
    // Started in the turn that read them, every call would run to its first wait before Node sent
    // anything: the first request to AWS would leave only after the last call was prepared. 100 at
    // once, as the external-provisioner's workers send them to a controller.
    events.length = 0;
    const ids = Array.from({ length: 100 }, (_, i) => `vol-${i}`);
    await Promise.all(ids.map((id) => client.call("Controller", "DeleteVolume", { volume_id: id })));
    expect(events.filter((e) => e.startsWith("start"))).toEqual(ids.map((id) => `start ${id}`));
    expect(events.indexOf("sent vol-0")).toBeGreaterThanOrEqual(0);
    expect(events.indexOf("sent vol-0")).toBeLessThan(events.indexOf("start vol-99"));
  });

  it("starts the first call of a burst in a turn of its own, then groups twice as large, up to twelve", async () => {
    // A controller's calls: the first one's request leaves without waiting for eleven others to be
    // prepared, and the rest still go in large groups.
    startTurns.length = 0;
    let counting = true;
    const tick = () => {
      turn++;
      if (counting) setImmediate(tick);
    };
    setImmediate(tick);
    const ids = Array.from({ length: 100 }, (_, i) => `vol-${i}`);
    try {
      await Promise.all(ids.map((id) => client.call("Controller", "DeleteVolume", { volume_id: id })));
    } finally {
      counting = false;
    }
    const groups: number[] = [];
    startTurns.forEach((t, i) => {
      if (i > 0 && t === startTurns[i - 1]) groups[groups.length - 1]! += 1;
      else groups.push(1);
    });
    expect(groups.reduce((a, b) => a + b, 0)).toBe(100);
    expect(groups[0]).toBe(1);
    expect(Math.max(...groups)).toBe(12);
    // The calls may be read over more than one turn: a group that follows an empty queue starts
    // at one again, but none is ever more than twice the one before.
    for (let i = 1; i < groups.length; i++) expect(groups[i]!).toBeLessThanOrEqual(2 * groups[i - 1]!);
  });

  it("sends a failure's message as the caller wrote it, whatever its characters", async () => {
    const name = 'pvc-é✓ 100% "quoted"\ttab';
    const err = await failure(client.call("Controller", "CreateVolume", { name }));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toBe(`name ${name}: not allowed`);
  });

  it("percent-encodes grpc-message as the protocol says: UTF-8, non-printable bytes and '%' as %XX", () => {
    expect(percentEncode("plain text: ok")).toBe("plain text: ok");
    expect(percentEncode("100% é\n")).toBe("100%25 %C3%A9%0A");
  });

  it("a response the message type cannot encode is INTERNAL, not a crash", async () => {
    const err = await failure(client.call("Controller", "ListVolumes", {}));
    expect(err.code).toBe(status.INTERNAL);
    expect(await client.call("Identity", "GetPluginInfo", {})).toMatchObject({ name: "ebs.csi.aws.com" });
  });

  it("tells the handler when the caller cancels (RST_STREAM), with CANCELLED", async () => {
    const session = http2.connect("http://localhost", { createConnection: () => connect(socket) });
    const req = session.request({
      ":method": "POST",
      ":path": "/csi.v1.Identity/Probe",
      "content-type": "application/grpc",
    });
    req.on("error", () => undefined);
    req.end(frame(Buffer.alloc(0)));
    await expect.poll(() => release).toBeDefined();
    req.close(http2.constants.NGHTTP2_CANCEL);
    await expect
      .poll(() => lastAbort)
      .toEqual({ code: status.CANCELLED, message: "the caller cancelled the call" });
    await expect.poll(() => inflight.size).toBe(0);
    session.close();
  });

  it("stops the handler at the caller's deadline (grpc-timeout), with DEADLINE_EXCEEDED", async () => {
    const err = await failure(client.call("Identity", "Probe", {}, 300));
    expect(err.code).toBe(status.DEADLINE_EXCEEDED);
    await expect.poll(() => lastAbort?.code).toBe(status.DEADLINE_EXCEEDED);
  });

  it("a deadline in grpc-timeout's other units is read as such (2S is two seconds)", async () => {
    const started = Date.now();
    const answer = raw({ ":path": "/csi.v1.Identity/Probe", "grpc-timeout": "1S" }, frame(Buffer.alloc(0)));
    await expect.poll(() => lastAbort, { timeout: 5000 }).toBeDefined();
    expect(lastAbort?.code).toBe(status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(statusOf((await answer).headers).code).toBe(status.DEADLINE_EXCEEDED);
  });
});

describe("malformed calls get a status naming the fault, and the server goes on serving", () => {
  afterEach(async () => {
    expect(await client.call("Identity", "GetPluginInfo", {})).toMatchObject({ name: "ebs.csi.aws.com" });
  });

  it("an unknown method: UNIMPLEMENTED naming its path", async () => {
    const { headers } = await raw({ ":path": "/csi.v1.Node/NoSuchCall" }, frame(Buffer.alloc(0)));
    expect(statusOf(headers)).toEqual({
      code: status.UNIMPLEMENTED,
      message: "unknown method /csi.v1.Node/NoSuchCall",
    });
  });

  it("a service this plugin does not serve: UNIMPLEMENTED (a controller plugin has no Node service)", async () => {
    const err = await failure(client.call("Node", "NodeGetInfo", {}));
    expect(err.code).toBe(status.UNIMPLEMENTED);
    expect(err.details).toContain("/csi.v1.Node/NodeGetInfo");
  });

  it("not gRPC: HTTP 415 for another content type, 405 for another method", async () => {
    expect((await raw({ ":path": PLUGIN_INFO, "content-type": "text/plain" })).headers[":status"]).toBe(415);
    expect(
      (await raw({ ":path": PLUGIN_INFO, ":method": "PUT", "content-type": "application/grpc" })).headers[
        ":status"
      ],
    ).toBe(405);
  });

  it.each([
    ["no message at all", Buffer.alloc(0), "no request message"],
    ["a message cut short", frame(Buffer.from([0x0a, 0x02, 0x61])).subarray(0, 7), "cut short"],
    ["two messages", Buffer.concat([frame(Buffer.alloc(0)), frame(Buffer.alloc(0))]), "more than one"],
    [
      "bytes that are no GetPluginInfoRequest",
      frame(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f])),
      "not a valid",
    ],
  ])("%s: INTERNAL", async (_label, body, says) => {
    const { headers } = await raw({ ":path": PLUGIN_INFO }, body);
    expect(statusOf(headers).code).toBe(status.INTERNAL);
    expect(statusOf(headers).message).toContain(says);
  });

  it("a malformed grpc-timeout: INTERNAL naming the header", async () => {
    const { headers } = await raw({ ":path": PLUGIN_INFO, "grpc-timeout": "soon" }, frame(Buffer.alloc(0)));
    expect(statusOf(headers)).toEqual({ code: status.INTERNAL, message: "malformed grpc-timeout: soon" });
  });

  it("a compressed message: UNIMPLEMENTED for an encoding, INTERNAL without one", async () => {
    const gzip = await raw({ ":path": PLUGIN_INFO, "grpc-encoding": "gzip" }, frame(Buffer.alloc(3), true));
    expect(statusOf(gzip.headers).code).toBe(status.UNIMPLEMENTED);
    expect(statusOf(gzip.headers).message).toContain("grpc-encoding gzip is not supported");
    const none = await raw({ ":path": PLUGIN_INFO }, frame(Buffer.alloc(3), true));
    expect(statusOf(none.headers).code).toBe(status.INTERNAL);
  });

  it("a message over 4 MiB: RESOURCE_EXHAUSTED once its length is read", async () => {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(5 * 1024 * 1024, 1);
    const { headers } = await raw({ ":path": PLUGIN_INFO }, Buffer.concat([head, Buffer.alloc(64 * 1024)]));
    expect(statusOf(headers).code).toBe(status.RESOURCE_EXHAUSTED);
    expect(statusOf(headers).message).toContain("larger than the limit of 4194304");
  });

  it("a message of exactly 4 MiB is read (and this one is no GetPluginInfoRequest)", async () => {
    const { headers } = await raw({ ":path": PLUGIN_INFO }, frame(Buffer.alloc(4 * 1024 * 1024, 0xff)));
    expect(statusOf(headers).code).toBe(status.INTERNAL);
    expect(statusOf(headers).message).toContain("not a valid GetPluginInfo message");
  });

  it("a client that does not speak HTTP/2 is disconnected", async () => {
    const closed = await new Promise<boolean>((resolve) => {
      const s = connect(socket, () => s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
      s.on("data", () => undefined);
      s.on("close", () => resolve(true));
      s.on("error", () => undefined);
      setTimeout(() => resolve(false), 5000).unref();
    });
    expect(closed).toBe(true);
  });
});

describe("options", () => {
  it("refuses a count of calls per turn that would never start one (0, negative, fractional)", () => {
    for (const callsPerTurn of [0, -1, 1.5, Number.NaN]) {
      expect(
        () =>
          new GrpcServer(new Map(), {
            maxReceiveBytes: 1024,
            callsPerTurn,
            rampUp: false,
            log: createLogger("silent"),
          }),
      ).toThrow(`callsPerTurn must be a positive integer, not ${callsPerTurn}`);
    }
  });
});

describe("shutdown", () => {
  it("lets a call in flight finish, then closes; a call still running at the timeout is closed", async () => {
    const definitions = csiServiceDefinitions();
    expect(definitions.Identity["Probe"]?.path).toBe("/csi.v1.Identity/Probe");
    const slow = client.call("Identity", "Probe", {}, 60_000);
    await expect.poll(() => release).toBeDefined();
    // Finishes half-way through the grace period: the call gets its answer.
    setTimeout(() => release?.(), 200);
    await server.shutdown(5000);
    await expect(slow).resolves.toEqual({ ready: null });

    client.close();
    await start();
    release = undefined;
    const stuck = failure(client.call("Identity", "Probe", {}, 60_000));
    await expect.poll(() => release).toBeDefined();
    const started = Date.now();
    await server.shutdown(300);
    expect(Date.now() - started).toBeLessThan(5000);
    // The connection was closed under it: gRPC clients report that as UNAVAILABLE.
    expect((await stuck).code).toBe(status.UNAVAILABLE);
    await expect.poll(() => lastAbort?.code).toBe(status.CANCELLED);
    const log = await readFile(logFile, "utf8");
    expect(log).toContain("in-flight calls did not finish in time");
    client.close();
    await start();
  });
});
