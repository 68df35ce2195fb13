import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { DescribeAvailabilityZonesCommand, DescribeVolumesCommand, EC2Client } from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { LearningRateLimiter, type LimiterTuning } from "../../src/aws/rate-limiter.ts";
import {
  awsClientConfig,
  awsErrorCode,
  DEFAULT_MAX_ATTEMPTS,
  instrumentClient,
  isThrottlingError,
  paceThrottledCalls,
  sharedConnections,
} from "../../src/aws/sdk.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics, type Metrics } from "../../src/metrics.ts";

/** What the fake EC2 answers to the next requests, in order; the last entry repeats. */
type Answer = { status: number; code?: string };

const errorXml = (code: string, requestId: string) =>
  `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>${code}</Code>` +
  `<Message>fake ${code}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`;

const zonesXml = (requestId: string) =>
  `<DescribeAvailabilityZonesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">` +
  `<requestId>${requestId}</requestId><availabilityZoneInfo><item><zoneName>us-east-1a</zoneName>` +
  `<zoneState>available</zoneState></item></availabilityZoneInfo></DescribeAvailabilityZonesResponse>`;

let server: Server;
let url: string;
let answers: Answer[] = [];
let requests = 0;
let connections = 0;
/** While set, answers wait until this many requests are waiting (or 3 s passed), then all go. */
let hold: { until: number; waiting: (() => void)[]; most: number } | undefined;

beforeAll(async () => {
  process.env["AWS_ACCESS_KEY_ID"] = "testing";
  process.env["AWS_SECRET_ACCESS_KEY"] = "testing";
  server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (hold) {
        const h = hold;
        h.waiting.push(() => res.writeHead(200, { "content-type": "text/xml" }).end(zonesXml("held")));
        h.most = Math.max(h.most, h.waiting.length);
        if (h.waiting.length >= h.until) for (const send of h.waiting.splice(0)) send();
        return;
      }
      const answer = answers[Math.min(requests, answers.length - 1)] ?? { status: 200 };
      requests++;
      const requestId = `req-${requests}`;
      const body = answer.code ? errorXml(answer.code, requestId) : zonesXml(requestId);
      // EC2 sends the request id in a header too, and the SDK reads it from there.
      res.writeHead(answer.status, { "content-type": "text/xml", "x-amzn-requestid": requestId }).end(body);
    });
  });
  server.on("connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

let metrics: Metrics;
let logLines: Record<string, unknown>[];

beforeEach(() => {
  answers = [];
  requests = 0;
  metrics = createMetrics("aws_ebs_csi");
  logLines = [];
});

function client(maxAttempts?: number): EC2Client {
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) logLines.push(JSON.parse(line));
      done();
    },
  });
  const c = new EC2Client(awsClientConfig({ region: "us-east-1", endpoint: url, maxAttempts }));
  instrumentClient(c, metrics, createLogger("debug", sink));
  return c;
}

/** A counter's value, or for awsDuration the number of observations, for these labels. */
async function value(
  name: "awsAttempts" | "awsThrottles" | "awsErrors" | "awsDuration",
  labels: Record<string, string>,
): Promise<number> {
  const { values } = await metrics[name].get();
  const sample = (values as { metricName?: string; labels: object; value: number }[]).find(
    (v) =>
      (name !== "awsDuration" || v.metricName?.endsWith("_count")) &&
      Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want),
  );
  return sample?.value ?? 0;
}

const request = { request: "DescribeAvailabilityZones" };

describe("awsClientConfig", () => {
  it("requires a region", () => {
    expect(() => awsClientConfig({ region: undefined })).toThrow(/region/);
    expect(() => awsClientConfig({ region: "" })).toThrow(/region/);
  });

  it("uses adaptive retries, the default attempts and the endpoint only when set", () => {
    const config = awsClientConfig({ region: "eu-west-1" });
    expect(config).toMatchObject({
      region: "eu-west-1",
      retryMode: "adaptive",
      maxAttempts: DEFAULT_MAX_ATTEMPTS,
    });
    expect("endpoint" in config).toBe(false);
    expect(awsClientConfig({ region: "eu-west-1", endpoint: "http://x:1", maxAttempts: 2 })).toMatchObject({
      endpoint: "http://x:1",
      maxAttempts: 2,
    });
    expect(() => awsClientConfig({ region: "eu-west-1", maxAttempts: 0 })).toThrow(/maxAttempts/);
  });
});

describe("instrumentClient", () => {
  it("replaces the SDK's own call logging, which built a record of every call even for no logger", async () => {
    // Besides call records the SDK logs how it resolved its configuration: those are not per call.
    const sdkRecords: unknown[] = [];
    const callRecord = (entry: unknown) =>
      typeof entry === "object" && entry !== null && "commandName" in entry;
    const record = (entry: unknown) => sdkRecords.push(entry);
    const logger = { debug: record, info: record, warn: record, error: record, trace: record };
    const withLogger = () =>
      new EC2Client({ ...awsClientConfig({ region: "us-east-1", endpoint: url }), logger });
    const plain = withLogger();
    await plain.send(new DescribeAvailabilityZonesCommand({}));
    plain.destroy();
    // The SDK's middleware (by the name instrumentClient removes) records the call.
    expect(sdkRecords).toContainEqual(
      expect.objectContaining({ commandName: "DescribeAvailabilityZonesCommand" }),
    );
    sdkRecords.length = 0;
    const instrumented = withLogger();
    instrumentClient(instrumented, metrics, createLogger("silent"));
    await instrumented.send(new DescribeAvailabilityZonesCommand({}));
    instrumented.destroy();
    expect(sdkRecords.filter(callRecord)).toEqual([]);
    expect(await value("awsAttempts", request)).toBe(1);
  });

  it("counts every attempt and each throttle, and one call that succeeded after retries", async () => {
    answers = [
      { status: 503, code: "RequestLimitExceeded" },
      { status: 500, code: "InternalError" },
      { status: 200 },
    ];
    const out = await client().send(new DescribeAvailabilityZonesCommand({}));
    expect(out.AvailabilityZones?.[0]?.ZoneName).toBe("us-east-1a");
    expect(requests).toBe(3);
    expect(await value("awsAttempts", request)).toBe(3);
    expect(await value("awsThrottles", request)).toBe(1);
    expect(await value("awsDuration", request)).toBe(1);
    expect((await metrics.awsErrors.get()).values).toHaveLength(0);
    const debug = logLines.filter((l) => l["level"] === "debug");
    expect(debug.map((l) => l["error"])).toEqual(["RequestLimitExceeded", "InternalError"]);
    expect(debug.map((l) => l["requestId"])).toEqual(["req-1", "req-2"]);
  });

  it("records a final failure once, with its AWS code, and logs it at warn with the request id", async () => {
    answers = [{ status: 403, code: "UnauthorizedOperation" }];
    await expect(client().send(new DescribeAvailabilityZonesCommand({}))).rejects.toThrow(
      /UnauthorizedOperation/,
    );
    expect(requests).toBe(1);
    expect(await value("awsAttempts", request)).toBe(1);
    expect(await value("awsErrors", { ...request, error: "UnauthorizedOperation" })).toBe(1);
    expect(await value("awsDuration", request)).toBe(1);
    const warn = logLines.filter((l) => l["level"] === "warn");
    expect(warn).toHaveLength(1);
    expect(warn[0]).toMatchObject({
      request: "DescribeAvailabilityZones",
      error: "UnauthorizedOperation",
      requestId: "req-1",
    });
  });

  it("gives up after maxAttempts throttles and counts each of them", async () => {
    answers = [{ status: 503, code: "RequestLimitExceeded" }];
    await expect(client(2).send(new DescribeAvailabilityZonesCommand({}))).rejects.toThrow(
      /RequestLimitExceeded/,
    );
    expect(requests).toBe(2);
    expect(await value("awsAttempts", request)).toBe(2);
    expect(await value("awsThrottles", request)).toBe(2);
    expect(await value("awsErrors", { ...request, error: "RequestLimitExceeded" })).toBe(1);
  });

  it("labels a call that never got an answer with the network error code", async () => {
    const c = new EC2Client(
      awsClientConfig({ region: "us-east-1", endpoint: "http://127.0.0.1:1", maxAttempts: 1 }),
    );
    instrumentClient(c, metrics, createLogger("silent"));
    await expect(c.send(new DescribeAvailabilityZonesCommand({}))).rejects.toThrow();
    expect(await value("awsErrors", { ...request, error: "ECONNREFUSED" })).toBe(1);
  });

  it("never logs request parameters", async () => {
    answers = [{ status: 400, code: "InvalidParameterValue" }];
    const secretish = "vol-0123456789abcdef0";
    await expect(
      client().send(new DescribeVolumesCommand({ Filters: [{ Name: "tag:secret", Values: [secretish] }] })),
    ).rejects.toThrow();
    expect(logLines.length).toBeGreaterThan(0);
    expect(JSON.stringify(logLines)).not.toContain(secretish);
    expect(JSON.stringify(logLines)).not.toContain("tag:secret");
  });
});

describe("error helpers", () => {
  it("reads the AWS code, else the network code, and recognises throttles", () => {
    expect(awsErrorCode(Object.assign(new Error("x"), { name: "VolumeInUse" }))).toBe("VolumeInUse");
    expect(awsErrorCode(Object.assign(new Error("x"), { code: "ECONNRESET" }))).toBe("ECONNRESET");
    expect(awsErrorCode("weird")).toBe("Unknown");
    expect(isThrottlingError(Object.assign(new Error("x"), { name: "RequestLimitExceeded" }))).toBe(true);
    expect(
      isThrottlingError(Object.assign(new Error("x"), { name: "X", $metadata: { httpStatusCode: 429 } })),
    ).toBe(true);
    expect(isThrottlingError(Object.assign(new Error("x"), { name: "VolumeInUse" }))).toBe(false);
  });
});

describe("paceThrottledCalls", () => {
  const throttled = { status: 503, code: "RequestLimitExceeded" };

  function pacedClient(maxAttempts: number, limiter: LearningRateLimiter): EC2Client {
    const c = client(maxAttempts);
    paceThrottledCalls(c, {
      limiterFor: (action) => (action === "DescribeAvailabilityZones" ? limiter : undefined),
    });
    return c;
  }

  const limiter = (tuning: Partial<LimiterTuning> = {}) =>
    new LearningRateLimiter({
      action: "DescribeAvailabilityZones",
      priorPerSecond: 200,
      isThrottle: isThrottlingError,
      log: createLogger("silent"),
      tuning,
    });

  it("sends throttled attempts again itself: they spend none of the SDK's attempts", async () => {
    answers = [throttled, throttled, throttled, throttled, { status: 200 }];
    const l = limiter();
    const out = await pacedClient(2, l).send(new DescribeAvailabilityZonesCommand({}));
    expect(out.AvailabilityZones?.[0]?.ZoneName).toBe("us-east-1a");
    expect(out.$metadata.attempts).toBe(1);
    expect(requests).toBe(5);
    expect(await value("awsThrottles", request)).toBe(4);
    expect(await value("awsAttempts", request)).toBe(5);
    expect(l.state()).toMatchObject({ throttles: 4, queued: 0, inFlight: 0 });
    expect(l.state().ratePerSecond).toBeGreaterThan(0);
  });

  it("leaves other failures to the SDK's retries, and never sends a call with one attempt twice after them", async () => {
    answers = [{ status: 500, code: "InternalError" }, { status: 200 }];
    await pacedClient(2, limiter()).send(new DescribeAvailabilityZonesCommand({}));
    expect(requests).toBe(2);
    requests = 0;
    answers = [{ status: 500, code: "InternalError" }, { status: 200 }];
    await expect(pacedClient(1, limiter()).send(new DescribeAvailabilityZonesCommand({}))).rejects.toThrow(
      /InternalError/,
    );
    expect(requests).toBe(1);
  });

  it("a call waiting for its turn leaves when its abort signal fires, without being sent", async () => {
    answers = [throttled, { status: 200 }];
    // After the throttle: one call per 10 s, so the second call waits.
    const l = new LearningRateLimiter({
      action: "DescribeAvailabilityZones",
      priorPerSecond: 0.1,
      isThrottle: isThrottlingError,
      log: createLogger("silent"),
      tuning: { unpacedConcurrency: 1, safety: 1 },
    });
    const c = pacedClient(5, l);
    const firstAbort = new AbortController();
    const first = c.send(new DescribeAvailabilityZonesCommand({}), { abortSignal: firstAbort.signal });
    await new Promise((r) => setTimeout(r, 100));
    expect(requests).toBe(1);
    expect(l.state().queued).toBe(1);
    const abort = new AbortController();
    const second = c.send(new DescribeAvailabilityZonesCommand({}), { abortSignal: abort.signal });
    await new Promise((r) => setTimeout(r, 50));
    expect(l.state().queued).toBe(2);
    abort.abort();
    await expect(second).rejects.toMatchObject({ name: "AbortError" });
    expect(l.state().queued).toBe(1);
    expect(requests).toBe(1);
    // The first, throttled once, is still first in line: it too leaves unsent when it aborts.
    firstAbort.abort();
    await expect(first).rejects.toMatchObject({ name: "AbortError" });
    expect(l.state()).toMatchObject({ queued: 0, inFlight: 0, throttles: 1 });
    expect(requests).toBe(1);
    c.destroy();
  });
});

describe("one connection pool for the clients of a service", () => {
  const ec2 = (connections?: ReturnType<typeof sharedConnections>) =>
    new EC2Client(awsClientConfig({ region: "us-east-1", endpoint: url, connections }));

  /** Connections the server accepted while a, then b, sent one request each. */
  async function connectionsOpened(a: EC2Client, b: EC2Client): Promise<number> {
    connections = 0;
    await a.send(new DescribeAvailabilityZonesCommand({}));
    await b.send(new DescribeAvailabilityZonesCommand({}));
    a.destroy();
    b.destroy();
    return connections;
  }

  it("a client's request goes over a connection another client opened", async () => {
    const pool = sharedConnections();
    expect(await connectionsOpened(ec2(pool), ec2(pool))).toBe(1);
    // Each with a pool of its own, the second client opens a connection of its own.
    expect(await connectionsOpened(ec2(), ec2())).toBe(2);
  });

  it("sends more than the SDK's 50 requests at once: a sidecar's burst does not wait for sockets", async () => {
    const c = ec2(sharedConnections());
    const h = { until: 80, waiting: [] as (() => void)[], most: 0 };
    hold = h;
    const timer = setTimeout(() => {
      for (const send of h.waiting.splice(0)) send();
      hold = undefined;
    }, 3000);
    try {
      await Promise.all(Array.from({ length: 80 }, () => c.send(new DescribeAvailabilityZonesCommand({}))));
    } finally {
      clearTimeout(timer);
      hold = undefined;
      c.destroy();
    }
    expect(h.most).toBe(80);
  });
});
