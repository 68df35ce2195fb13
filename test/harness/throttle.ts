// Request throttling like EC2's: a random share of calls and/or a token bucket per API action.

export interface BucketConfig {
  capacity: number;
  refillPerSecond: number;
}

export interface ThrottleConfig {
  /** Fraction (0..1) of calls throttled at random. */
  rate?: number;
  /** A bucket per action name; "*" configures a separate bucket for every action not listed. */
  buckets?: Record<string, BucketConfig>;
}

export interface Throttle {
  /** Whether this call is refused; a call that is let through takes a token from its bucket. */
  refuses(action: string, config: ThrottleConfig | undefined): boolean;
  reset(): void;
}

interface Bucket {
  tokens: number;
  refilledAt: number;
}

export function createThrottle(now: () => number = () => performance.now()): Throttle {
  let buckets = new Map<string, Bucket>();
  let bucketsFor: ThrottleConfig | undefined;

  return {
    refuses(action, config) {
      if (!config) return false;
      // A new config object starts with full buckets, so each test sees the capacity it set.
      if (config !== bucketsFor) {
        buckets = new Map();
        bucketsFor = config;
      }
      if (config.rate && Math.random() < config.rate) return true;
      const limits = config.buckets?.[action] ?? config.buckets?.["*"];
      if (!limits) return false;
      const bucket = buckets.get(action) ?? { tokens: limits.capacity, refilledAt: now() };
      const elapsedSeconds = (now() - bucket.refilledAt) / 1000;
      bucket.tokens = Math.min(limits.capacity, bucket.tokens + elapsedSeconds * limits.refillPerSecond);
      bucket.refilledAt = now();
      buckets.set(action, bucket);
      if (bucket.tokens < 1) return true;
      bucket.tokens -= 1;
      return false;
    },
    reset() {
      buckets = new Map();
      bucketsFor = undefined;
    },
  };
}
