import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { BucketSize, LearningRateLimiter, type LimiterTuning } from "../../src/aws/rate-limiter.ts";
import { createLogger } from "../../src/log.ts";

/** Time for a request to reach AWS and for its answer to come back, each way. */
const HALF_TRIP_MS = 10;

const throttleError = () =>
  Object.assign(new Error("Request limit exceeded."), { name: "RequestLimitExceeded" });
const isThrottle = (err: unknown) => err instanceof Error && err.name === "RequestLimitExceeded";

/** EC2's metering of one action: a token bucket, on the (fake) clock. */
function tokenBucket(capacity: number, refillPerSecond: number) {
  let tokens = capacity;
  let at = Date.now();
  return {
    /** Whether a call arriving now is accepted; an accepted call takes a token. */
    take(): boolean {
      tokens = Math.min(capacity, tokens + ((Date.now() - at) / 1000) * refillPerSecond);
      at = Date.now();
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
    setRefill(perSecond: number) {
      this.take();
      tokens += 1; // take() above was a look, not a call
      refillPerSecond = perSecond;
    },
  };
}

/** A fake AWS call metered by `bucket`; counts every attempt, refused ones included. */
function meteredCall(
  bucket: ReturnType<typeof tokenBucket>,
  counts: { attempts: number; throttled: number },
) {
  return async <T>(value: T): Promise<T> => {
    counts.attempts++;
    await new Promise((r) => setTimeout(r, HALF_TRIP_MS));
    const accepted = bucket.take();
    await new Promise((r) => setTimeout(r, HALF_TRIP_MS));
    if (!accepted) {
      counts.throttled++;
      throw throttleError();
    }
    return value;
  };
}

function limiter(tuning: Partial<LimiterTuning> = {}, priorPerSecond = 5, bucketSize?: BucketSize) {
  return new LearningRateLimiter({
    action: "CreateVolume",
    priorPerSecond,
    isThrottle,
    log: createLogger("silent"),
    now: () => Date.now(),
    tuning,
    bucketSize,
  });
}

/** A call that also records the most calls in flight at once. */
function tracked(call: (i: number) => Promise<number>) {
  let inFlight = 0;
  const t = {
    maxInFlight: 0,
    call: async (i: number) => {
      t.maxInFlight = Math.max(t.maxInFlight, ++inFlight);
      try {
        return await call(i);
      } finally {
        inFlight--;
      }
    },
  };
  return t;
}

/** Runs `n` calls at once through the limiter, letting fake time pass until all are done. */
async function burst(l: LearningRateLimiter, n: number, call: (i: number) => Promise<number>) {
  const started = Date.now();
  const all = Promise.all(Array.from({ length: n }, (_, i) => l.run(() => call(i))));
  await vi.runAllTimersAsync();
  return { results: await all, seconds: (Date.now() - started) / 1000 };
}

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000, loopLimit: 1_000_000 });
});

afterEach(() => {
  vi.useRealTimers();
});

describe("LearningRateLimiter", () => {
  it("sends at once, a few at a time, while AWS does not throttle", async () => {
    const l = limiter({ unpacedConcurrency: 4 });
    const counts = { attempts: 0, throttled: 0 };
    const call = meteredCall(tokenBucket(1000, 5), counts);
    const { results, seconds } = await burst(l, 40, call);
    expect(results).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(counts).toEqual({ attempts: 40, throttled: 0 });
    // 10 rounds of 4 calls, 20 ms each.
    expect(seconds).toBeCloseTo(0.2, 2);
    expect(l.state()).toMatchObject({ ratePerSecond: undefined, throttles: 0, queued: 0, inFlight: 0 });
  });

  it("after the first throttle paces at the learned rate: the bucket's floor, a handful of throttles", async () => {
    const l = limiter();
    const counts = { attempts: 0, throttled: 0 };
    const call = meteredCall(tokenBucket(50, 5), counts);
    const { results, seconds } = await burst(l, 500, call);
    expect(results).toHaveLength(500);
    // The floor: 50 at once, the other 450 at 5 per second.
    expect(seconds).toBeGreaterThanOrEqual(90);
    expect(seconds).toBeLessThanOrEqual(90 * 1.05);
    expect(counts.throttled).toBeLessThanOrEqual(10);
    expect(l.state().ratePerSecond).toBeGreaterThan(4.5);
    expect(l.state().ratePerSecond).toBeLessThanOrEqual(5.3);
  });

  it("probes up to a raised limit, a few throttles at a time", async () => {
    const l = limiter();
    const counts = { attempts: 0, throttled: 0 };
    const call = meteredCall(tokenBucket(50, 20), counts);
    await burst(l, 6000, call);
    // The prior (5/s) was far too low: the limiter found most of the 20/s without spending many calls.
    expect(l.state().ratePerSecond).toBeGreaterThan(15);
    expect(counts.throttled).toBeLessThanOrEqual(30);
    expect(counts.throttled / 6000).toBeLessThan(0.005);
  });

  it("adapts down when the bucket refills slower than the prior", async () => {
    const l = limiter();
    const counts = { attempts: 0, throttled: 0 };
    const call = meteredCall(tokenBucket(20, 2), counts);
    const { results, seconds } = await burst(l, 200, call);
    expect(results).toHaveLength(200);
    // Measured about 2/s (a little less), then probing carefully upwards again.
    expect(l.state().ratePerSecond).toBeGreaterThan(1.5);
    expect(l.state().ratePerSecond).toBeLessThan(2.5);
    expect(counts.throttled).toBeLessThanOrEqual(25);
    // The first measurement, over few calls, is on the low side: probes make up for it.
    expect(seconds).toBeLessThan((180 / 2) * 1.15);
  });

  it("does not slow down to the floor when AWS refuses calls whatever the rate", async () => {
    const l = limiter();
    let attempts = 0;
    let refused = 0;
    // 3 attempts in 10 refused, at any rate: no bucket to learn.
    const { results, seconds } = await burst(l, 300, async (i) => {
      await new Promise((r) => setTimeout(r, 2 * HALF_TRIP_MS));
      if ([0, 3, 6].includes(attempts++ % 10)) {
        refused++;
        throw throttleError();
      }
      return i;
    });
    expect(results).toHaveLength(300);
    expect(refused).toBeGreaterThan(100);
    // A cut or two, not a slide to minPerSecond: 430 attempts at 1/s would take 430 s.
    expect(l.state().ratePerSecond).toBeGreaterThan(2.5);
    expect(seconds).toBeLessThan(200);
  });

  it("serves waiting calls first come, first served, a throttled one first of all", async () => {
    const l = limiter({ unpacedConcurrency: 1 });
    const order: number[] = [];
    let refuse = true;
    const calls = Array.from({ length: 6 }, (_, i) =>
      l.run(async () => {
        await new Promise((r) => setTimeout(r, 10));
        if (i === 0 && refuse) {
          refuse = false;
          throw throttleError();
        }
        order.push(i);
        return i;
      }),
    );
    await vi.runAllTimersAsync();
    expect(await Promise.all(calls)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    expect(l.state()).toMatchObject({ throttles: 1, ratePerSecond: 4.9 });
  });

  it("a waiting call whose caller gives up leaves the line unsent; the others keep their turn", async () => {
    const l = limiter({ unpacedConcurrency: 1 });
    const sent: number[] = [];
    // One throttle: from then on one call per 1/4.9 s.
    let refused = false;
    const send = (i: number) => async () => {
      sent.push(i);
      if (!refused) {
        refused = true;
        throw throttleError();
      }
      return i;
    };
    const abort = new AbortController();
    const first = l.run(send(0));
    const second = l.run(send(1), abort.signal);
    const third = l.run(send(2));
    const secondFailure = second.catch((err: unknown) => err);
    await vi.advanceTimersByTimeAsync(0);
    expect(l.state().queued).toBe(3);
    abort.abort(new Error("deadline passed"));
    const err = (await secondFailure) as Error;
    expect(err.name).toBe("AbortError");
    expect(err.message).toMatch(/CreateVolume not sent: the caller gave up/);
    expect(l.state().queued).toBe(2);
    await vi.runAllTimersAsync();
    expect(await first).toBe(0);
    expect(await third).toBe(2);
    expect(sent).toEqual([0, 0, 2]);
  });

  it("an aborted signal fails the call before it is sent", async () => {
    const l = limiter();
    const send = vi.fn(async () => 1);
    await expect(l.run(send, AbortSignal.abort())).rejects.toMatchObject({ name: "AbortError" });
    expect(send).not.toHaveBeenCalled();
  });

  it("goes back to unpaced after a quiet spell, and starts from the learned rate at the next throttle", async () => {
    const l = limiter({ relaxAfterMs: 60_000 });
    const counts = { attempts: 0, throttled: 0 };
    const bucket = tokenBucket(10, 3);
    await burst(l, 100, meteredCall(bucket, counts));
    const learned = l.state().ratePerSecond as number;
    expect(learned).toBeLessThanOrEqual(3);
    // Not after a minute without throttles and nobody waiting: calls go at once again.
    await vi.advanceTimersByTimeAsync(60_000);
    const ran = Date.now();
    await burst(l, 8, meteredCall(bucket, counts));
    expect(Date.now() - ran).toBeLessThan(100);
    expect(l.state().ratePerSecond).toBeUndefined();
    // The next throttle paces at the rate learned, not at the prior.
    const before = counts.throttled;
    await burst(l, 40, meteredCall(bucket, counts));
    expect(counts.throttled).toBeGreaterThan(before);
    expect(l.state().ratePerSecond).toBe(learned);
  });

  it("passes other errors on without sending again, and gives up after maxThrottledAttempts throttles", async () => {
    const l = limiter({ maxThrottledAttempts: 3 });
    const failing = vi.fn(async () => {
      throw Object.assign(new Error("boom"), { name: "InternalError" });
    });
    const failed = l.run(failing).catch((err: unknown) => err);
    await vi.runAllTimersAsync();
    expect(await failed).toMatchObject({ name: "InternalError" });
    expect(failing).toHaveBeenCalledTimes(1);

    const throttled = vi.fn(async () => {
      throw throttleError();
    });
    const gaveUp = l.run(throttled).catch((err: unknown) => err);
    await vi.runAllTimersAsync();
    expect(await gaveUp).toMatchObject({ name: "RequestLimitExceeded" });
    expect(throttled).toHaveBeenCalledTimes(3);
    expect(l.state()).toMatchObject({ queued: 0, inFlight: 0 });
  });

  it("rejects a prior rate or concurrency that cannot work, naming the field", () => {
    expect(() => limiter({}, 0)).toThrow(
      /CreateVolume limiter: priorPerSecond must be a positive number, not 0/,
    );
    expect(() => limiter({ unpacedConcurrency: 0 })).toThrow(/unpacedConcurrency must be a positive integer/);
  });
});

describe("LearningRateLimiter with a bucket size shared by the actions of a category", () => {
  it("an action sends at once as many calls as another one got through in a burst", async () => {
    const size = new BucketSize();
    const creates = { attempts: 0, throttled: 0 };
    await burst(limiter({ unpacedConcurrency: 4 }, 5, size), 100, meteredCall(tokenBucket(200, 5), creates));
    expect(creates.throttled).toBe(0);
    // 100 calls in 25 rounds of 20 ms: 0.5 s, in which the prior refill (5/s) added about 2.5.
    expect(size.tokens).toBeGreaterThan(95);
    expect(size.tokens).toBeLessThanOrEqual(100);

    const deletes = { attempts: 0, throttled: 0 };
    const t = tracked(meteredCall(tokenBucket(200, 5), deletes));
    const { results, seconds } = await burst(limiter({ unpacedConcurrency: 4 }, 5, size), 100, t.call);
    expect(results).toHaveLength(100);
    expect(deletes).toEqual({ attempts: 100, throttled: 0 });
    // All at once: the size covers 95 and more, unpacedConcurrency the rest (without the shared
    // size: 4 at a time, 0.5 s).
    expect(t.maxInFlight).toBe(100);
    expect(seconds).toBeLessThanOrEqual(0.03);
  });

  it("under a bucket of 50: the next action spends its burst at once and wastes a handful of calls", async () => {
    const size = new BucketSize();
    const creates = { attempts: 0, throttled: 0 };
    await burst(limiter({}, 5, size), 200, meteredCall(tokenBucket(50, 5), creates));
    expect(creates.throttled).toBeLessThanOrEqual(10);
    // What the creates got through before the first throttle, less the refill meanwhile.
    expect(size.tokens).toBeGreaterThan(45);
    expect(size.tokens).toBeLessThanOrEqual(50);

    const deletes = { attempts: 0, throttled: 0 };
    const { seconds } = await burst(limiter({}, 5, size), 200, meteredCall(tokenBucket(50, 5), deletes));
    expect(deletes.throttled).toBeLessThanOrEqual(10);
    // The floor: 50 at once, the other 150 at 5 per second.
    expect(seconds).toBeGreaterThanOrEqual(30);
    expect(seconds).toBeLessThanOrEqual(30 * 1.05);
  });

  it("calls slower than the prior refill show no size: the bucket may be small", async () => {
    const size = new BucketSize();
    const l = limiter({ unpacedConcurrency: 4 }, 5, size);
    const call = meteredCall(tokenBucket(200, 5), { attempts: 0, throttled: 0 });
    for (let i = 0; i < 30; i++) {
      const done = l.run(() => call(i));
      await vi.advanceTimersByTimeAsync(300);
      await done;
    }
    // Each call's token was back (at 5/s) before the next one: one token drawn at a time.
    expect(size.tokens).toBeLessThanOrEqual(1);
  });

  it("a throttle that comes sooner than the size said lowers it, for every action", async () => {
    const size = new BucketSize();
    size.held(100); // shown by an action, say, before the account's limits were lowered
    const first = { attempts: 0, throttled: 0 };
    await burst(limiter({}, 5, size), 100, meteredCall(tokenBucket(30, 5), first));
    // The first burst believed the size and lost the calls in flight beyond the bucket.
    expect(first.throttled).toBeGreaterThan(10);
    expect(size.tokens).toBeLessThanOrEqual(30);

    const next = { attempts: 0, throttled: 0 };
    await burst(limiter({}, 5, size), 100, meteredCall(tokenBucket(30, 5), next));
    expect(next.throttled).toBeLessThanOrEqual(10);
  });

  it("an action without a shared size keeps to unpacedConcurrency", async () => {
    const size = new BucketSize();
    size.held(100);
    const t = tracked(meteredCall(tokenBucket(200, 5), { attempts: 0, throttled: 0 }));
    await burst(limiter({ unpacedConcurrency: 4 }), 50, t.call);
    expect(t.maxInFlight).toBe(4);
  });
});
