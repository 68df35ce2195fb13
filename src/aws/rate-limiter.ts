/**
 * A client-side limiter for one AWS API action that learns the rate AWS allows from its throttle
 * answers, so that a burst of mutations waits in line here instead of spending attempts on
 * throttles and failing once the SDK's retry quota is spent.
 *
 * EC2 meters each API action with its own token bucket (a burst capacity and a refill rate per
 * second; accounts may have raised limits), so the limiter:
 * - sends at once until AWS throttles the action: every call the bucket is known to hold, and
 *   beyond those at most unpacedConcurrency at a time: a few calls in flight are all a throttle can
 *   catch when the bucket runs dry. EC2 gives the actions of one category (the mutating ones)
 *   buckets of the same size, each its own: the most calls one of them got through in a burst
 *   without a throttle, less what the prior refill added meanwhile, is a size the bucket of every
 *   other one has too (BucketSize, shared by the limiters of one client). Each limiter counts what
 *   it drew from its own bucket, refilled at the prior rate; a throttle that comes sooner than the
 *   size said lowers it to what its action had got through;
 * - then lets one call go every 1/rate seconds, first come first served, starting from a prior
 *   rate (EC2's documented refill) or from what it learned before;
 * - measures the refill between two throttles: the bucket is empty at both, so the calls accepted
 *   in between, divided by the time, are the refill (less when the bucket overflowed meanwhile, so
 *   never more than the truth), and paces a little below it, which also lets a few tokens pile up
 *   against jitter; when a cut left as many calls refused as before, the refusals do not follow
 *   this client's rate, and the rate stays;
 * - probes a few percent higher when calls have waited in line for a while without throttles (by
 *   twice as much after each probe that met no throttle), and waits twice as long before the next
 *   probe each time a probe runs into a throttle;
 * - sends a throttled attempt again itself, first in line: a throttle answer means AWS did not
 *   perform the call, so this is safe even for calls without a ClientToken (CreateSnapshot);
 * - goes back to unpaced after a quiet spell with nobody waiting.
 * A call waiting in line leaves it, unsent, when its caller's signal aborts.
 *
 * Written here rather than taken from the SDK: its adaptive mode (CUBIC) slows down only after the
 * throttled attempts it was shown, each one counted against the retry quota, and it fails calls
 * once the quota is spent; no library learns a token bucket's refill from throttles.
 *
 * Cost: a few steps per call; the line is an array, from which an aborted waiter is spliced out.
 */
import type { Logger } from "../log.ts";

/** Every tuning value in one place; see the module comment for what each is for. */
export const LIMITER_DEFAULTS = {
  /**
   * Calls in flight before the first throttle beyond those the bucket is known to hold: at most
   * this many can be throttled when the bucket runs dry, and the first throttle is most of what
   * 500 creates or deletes under a 50 / 5 per s bucket waste. 8 kept them at 1.006-1.016 calls per
   * volume on a quiet machine but reached 1.022 on a loaded one (the target is 1.02); 6 leaves room
   * for the probes and for jitter. 4 sent 100 deletes with 25 ms of AWS latency at half the speed
   * of 8 (npm run bench, when the bucket size was not yet shared).
   */
  unpacedConcurrency: 6,
  /** Share of the measured refill to send at: the rest piles up in the bucket against jitter. */
  safety: 0.98,
  /** Never slower than this, whatever the measurements say (e.g. throttles at random). */
  minPerSecond: 1,
  /** A share of refused calls at least this large, and unchanged by a cut, is taken as unrelated to the rate. */
  unrelatedShare: 0.1,
  /** Calls accepted since the last measurement needed for a new one; fewer say too little. */
  minSamples: 10,
  /** A probe raises the rate by this factor; each probe that met no throttle doubles the raise, up to maxProbeStep. */
  probeStep: 1.05,
  maxProbeStep: 1.5,
  /** Paced without throttles, with calls waiting, for this long: probe. */
  probeAfterMs: 30_000,
  /** Doubling after each probe that met a throttle stops here. */
  maxProbeAfterMs: 8 * 60_000,
  /** No throttle for this long and nobody waiting: unpaced again. */
  relaxAfterMs: 60_000,
  /** One call gives up after this many throttled attempts (AWS throttling everything, whatever the rate). */
  maxThrottledAttempts: 20,
};

export type LimiterTuning = typeof LIMITER_DEFAULTS;

/**
 * The size of the token bucket EC2 gives each action of one category, as far as calls have shown
 * it: the largest number of calls one action had accepted in a burst without a throttle, less the
 * prior refill over the burst. It only grows with such evidence, and shrinks when an action is
 * throttled having drawn fewer. Accounts with raised limits have larger buckets, which the
 * evidence then shows; a refill faster than the prior makes the estimate too large, which the
 * first throttle corrects.
 */
export class BucketSize {
  #tokens = 0;

  /** Calls a bucket of the category is known to hold; 0 before any evidence. */
  get tokens(): number {
    return this.#tokens;
  }

  /** An action had this many calls accepted, net of refill, without a throttle. */
  held(calls: number): void {
    if (calls > this.#tokens) this.#tokens = calls;
  }

  /** An action was throttled having drawn this many, net of refill: its bucket holds no more. */
  ranDryAt(calls: number): void {
    if (calls < this.#tokens) this.#tokens = Math.max(0, calls);
  }
}

export interface RateLimiterOptions {
  /** The API action, for logs and errors. */
  action: string;
  /** Calls per second assumed at the first throttle, before anything was measured. */
  priorPerSecond: number;
  isThrottle: (err: unknown) => boolean;
  log: Logger;
  /** The bucket size the limiters of one client's actions of a category learn together; none: each on its own. */
  bucketSize?: BucketSize;
  /** Milliseconds on a monotonic clock; tests pass a fake one. */
  now?: () => number;
  tuning?: Partial<LimiterTuning>;
}

export interface LimiterState {
  action: string;
  /** Calls per second when paced; undefined when calls go at once. */
  ratePerSecond: number | undefined;
  queued: number;
  inFlight: number;
  /** Throttled attempts seen since the limiter was made. */
  throttles: number;
}

/** A call sent: when, and whether unpaced beyond the known bucket size. */
interface Sent {
  at: number;
  beyond: boolean;
}

interface Waiter {
  resolve: (sent: Sent) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

export class LearningRateLimiter {
  readonly #action: string;
  readonly #prior: number;
  readonly #isThrottle: (err: unknown) => boolean;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #t: LimiterTuning;
  readonly #bucketSize: BucketSize | undefined;

  /** Calls per second; undefined: unpaced. */
  #rate: number | undefined;
  /** The last rate measured or settled on, kept for the next time the action is throttled. */
  #learned: number | undefined;
  /** When the next paced call may go. */
  #nextAt = 0;
  #inFlight = 0;
  /** Calls in flight that were sent unpaced beyond the known bucket size. */
  #beyond = 0;
  /**
   * What this action's calls drew from its bucket, as if it had been full before the first: one
   * per call sent, less the prior refill since (never below 0), as of `at`.
   */
  #drawn = { tokens: 0, at: 0 };
  readonly #queue: Waiter[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Since the last throttle that found the bucket empty: when, and the calls sent since then that were accepted and refused. */
  #window = { start: 0, accepted: 0, refused: 0 };
  /** The share of refused calls in the window that last cut the rate; undefined before the first cut. */
  #cutShare: number | undefined;
  #lastThrottleAt = Number.NEGATIVE_INFINITY;
  #lastChangeAt = 0;
  /** The rate before the current probe; undefined when not probing. */
  #beforeProbe: number | undefined;
  #probeAfterMs: number;
  #probeStep: number;
  #throttles = 0;

  constructor(o: RateLimiterOptions) {
    this.#t = { ...LIMITER_DEFAULTS, ...o.tuning };
    if (!(o.priorPerSecond > 0)) {
      throw new Error(
        `${o.action} limiter: priorPerSecond must be a positive number, not ${o.priorPerSecond}`,
      );
    }
    if (!Number.isInteger(this.#t.unpacedConcurrency) || this.#t.unpacedConcurrency < 1) {
      throw new Error(
        `${o.action} limiter: unpacedConcurrency must be a positive integer, not ${this.#t.unpacedConcurrency}`,
      );
    }
    this.#action = o.action;
    this.#prior = o.priorPerSecond;
    this.#bucketSize = o.bucketSize;
    this.#isThrottle = o.isThrottle;
    this.#log = o.log;
    this.#now = o.now ?? (() => performance.now());
    this.#probeAfterMs = this.#t.probeAfterMs;
    this.#probeStep = this.#t.probeStep;
  }

  state(): LimiterState {
    return {
      action: this.#action,
      ratePerSecond: this.#rate,
      queued: this.#queue.length,
      inFlight: this.#inFlight,
      throttles: this.#throttles,
    };
  }

  /**
   * Runs `send` when the line and the rate allow, again (first in line) after each throttle answer.
   * Other errors, and the last throttle after maxThrottledAttempts, go to the caller as they are.
   */
  async run<T>(send: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    for (let throttled = 0; ; ) {
      const sent = await this.#acquire(signal, throttled > 0);
      try {
        const result = await send();
        this.#landed(sent);
        this.#accepted(sent.at);
        return result;
      } catch (err) {
        this.#landed(sent);
        const throttle = this.#isThrottle(err);
        if (throttle) this.#throttled(sent.at);
        if (!throttle || ++throttled >= this.#t.maxThrottledAttempts) throw err;
      } finally {
        this.#pump();
      }
    }
  }

  #landed(sent: Sent): void {
    this.#inFlight--;
    if (sent.beyond) this.#beyond--;
  }

  #acquire(signal: AbortSignal | undefined, first: boolean): Promise<Sent> {
    if (signal?.aborted) return Promise.reject(this.#abortError(signal));
    this.#relaxIfQuiet();
    if (this.#queue.length === 0 && this.#mayStart()) return Promise.resolve(this.#start());
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.#queue.indexOf(waiter);
          if (i >= 0) this.#queue.splice(i, 1);
          reject(this.#abortError(signal));
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      if (first) this.#queue.unshift(waiter);
      else this.#queue.push(waiter);
      this.#pump();
    });
  }

  #mayStart(): boolean {
    if (this.#rate === undefined)
      return this.#covered(this.#now()) || this.#beyond < this.#t.unpacedConcurrency;
    return this.#now() >= this.#nextAt;
  }

  /** Whether the bucket is known to hold one more call than this action has drawn from it. */
  #covered(now: number): boolean {
    const size = this.#bucketSize?.tokens ?? 0;
    return size > 0 && this.#drawnNow(now) + 1 <= size;
  }

  /** The calls this action drew from its bucket (sent ones included), less the prior refill until `now`. */
  #drawnNow(now: number): number {
    const refilled = ((now - this.#drawn.at) / 1000) * this.#prior;
    return Math.max(0, this.#drawn.tokens - refilled);
  }

  /** Takes a send slot. */
  #start(): Sent {
    const now = this.#now();
    const beyond = this.#rate === undefined && !this.#covered(now);
    this.#drawn = { tokens: this.#drawnNow(now) + 1, at: now };
    this.#inFlight++;
    if (beyond) this.#beyond++;
    if (this.#rate !== undefined) {
      this.#probeIfDue(now);
      this.#nextAt = Math.max(this.#nextAt, now) + 1000 / this.#rate;
    }
    return { at: now, beyond };
  }

  /** Lets waiting calls go while slots are free; when paced, wakes up for the next slot. */
  #pump(): void {
    while (this.#queue.length > 0 && this.#mayStart()) {
      const waiter = this.#queue.shift() as Waiter;
      if (waiter.onAbort) waiter.signal?.removeEventListener("abort", waiter.onAbort);
      waiter.resolve(this.#start());
    }
    if (this.#queue.length > 0 && this.#rate !== undefined && this.#timer === undefined) {
      this.#timer = setTimeout(
        () => {
          this.#timer = undefined;
          this.#pump();
        },
        Math.max(0, this.#nextAt - this.#now()),
      );
    }
  }

  #accepted(sentAt: number): void {
    // Calls sent before the window opened took their token before the bucket was seen empty.
    if (this.#rate !== undefined && sentAt >= this.#window.start) this.#window.accepted++;
    // Unpaced and not throttled: the bucket held what was drawn, but for the calls still in flight.
    if (this.#rate === undefined) this.#bucketSize?.held(this.#drawnNow(this.#now()) - this.#inFlight);
  }

  #throttled(sentAt: number): void {
    const now = this.#now();
    this.#throttles++;
    this.#lastThrottleAt = now;
    if (this.#rate === undefined) {
      // The bucket ran dry before this call: it held at most the calls accepted so far (this one and
      // those still in flight not among them).
      this.#bucketSize?.ranDryAt(this.#drawnNow(now) - this.#inFlight - 1);
      const rate = this.#learned ?? this.#prior * this.#t.safety;
      this.#log.info(
        { request: this.#action, ratePerSecond: round(rate) },
        `AWS ${this.#action} throttled: pacing calls at ${round(rate)}/s`,
      );
      this.#cutShare = undefined;
      this.#setRate(rate, now);
      return;
    }
    // Sent before the bucket was last seen empty: it says nothing the window does not know.
    if (sentAt < this.#window.start) return;
    this.#window.refused++;
    if (this.#window.accepted < this.#t.minSamples) {
      // Too few calls to measure: leave the bucket one token's time before the next.
      this.#nextAt = Math.max(this.#nextAt, now + 1000 / this.#rate);
      return;
    }
    // Less one: the bucket held up to a token at each end of the window.
    const measured = ((this.#window.accepted - 1) * 1000) / (now - this.#window.start);
    const share = this.#window.refused / (this.#window.accepted + this.#window.refused);
    // The last cut, with no probe since, left about the same large share refused: the refusals do
    // not follow this client's rate (other reasons to throttle, faults injected at random), and
    // cutting again would only slow the calls down to the floor. A rate just over the refill has
    // a small share refused, and is cut.
    const last = this.#cutShare;
    if (
      this.#beforeProbe === undefined &&
      last !== undefined &&
      share >= this.#t.unrelatedShare &&
      share >= last / 2 &&
      share <= last * 2
    ) {
      this.#window = { start: now, accepted: 0, refused: 0 };
      this.#nextAt = Math.max(this.#nextAt, now + 1000 / this.#rate);
      return;
    }
    this.#cutShare = share;
    // A probe that met a throttle: the rate before it held for a whole probe interval, and the
    // measurement may be low when the bucket overflowed meanwhile.
    const estimate = Math.min(this.#rate, Math.max(measured, this.#beforeProbe ?? 0));
    const rate = Math.max(this.#t.minPerSecond, estimate * this.#t.safety);
    if (this.#beforeProbe !== undefined && rate <= this.#beforeProbe * 1.01) {
      this.#probeAfterMs = Math.min(this.#t.maxProbeAfterMs, this.#probeAfterMs * 2);
    } else if (this.#beforeProbe !== undefined) {
      this.#probeAfterMs = this.#t.probeAfterMs;
    }
    this.#log.debug(
      { request: this.#action, measuredPerSecond: round(measured), ratePerSecond: round(rate) },
      `AWS ${this.#action} throttled again: pacing at ${round(rate)}/s`,
    );
    this.#setRate(rate, now);
  }

  /** A new rate, starting from an empty bucket: the first call waits one and a half tokens' time. */
  #setRate(rate: number, now: number): void {
    this.#rate = rate;
    this.#learned = rate;
    this.#beforeProbe = undefined;
    this.#probeStep = this.#t.probeStep;
    this.#lastChangeAt = now;
    this.#window = { start: now, accepted: 0, refused: 0 };
    this.#nextAt = now + 1500 / rate;
  }

  #probeIfDue(now: number): void {
    if (this.#rate === undefined || this.#queue.length === 0) return;
    if (now - this.#lastChangeAt < this.#probeAfterMs) return;
    // The last probe met no throttle: the limit may be far above, as on accounts with raised limits.
    if (this.#beforeProbe !== undefined) {
      this.#probeStep = Math.min(this.#t.maxProbeStep, 1 + (this.#probeStep - 1) * 2);
    }
    this.#beforeProbe = this.#rate;
    this.#rate *= this.#probeStep;
    this.#learned = this.#rate;
    this.#lastChangeAt = now;
    this.#log.debug(
      { request: this.#action, ratePerSecond: round(this.#rate) },
      `AWS ${this.#action} probing at ${round(this.#rate)}/s`,
    );
  }

  #relaxIfQuiet(): void {
    if (this.#rate === undefined || this.#queue.length > 0) return;
    if (this.#now() - this.#lastThrottleAt < this.#t.relaxAfterMs) return;
    this.#log.info(
      { request: this.#action, learnedPerSecond: round(this.#rate) },
      `AWS ${this.#action} not throttled for ${this.#t.relaxAfterMs / 1000}s: calls go at once again`,
    );
    this.#rate = undefined;
    this.#beforeProbe = undefined;
    this.#probeAfterMs = this.#t.probeAfterMs;
    this.#probeStep = this.#t.probeStep;
  }

  #abortError(signal: AbortSignal): Error {
    const err = new Error(
      `AWS ${this.#action} not sent: the caller gave up while the call waited for its turn (${this.#queue.length} waiting, ${round(this.#rate ?? 0)}/s)`,
      { cause: signal.reason },
    );
    err.name = "AbortError";
    return err;
  }
}

const round = (n: number): number => Math.round(n * 100) / 100;
