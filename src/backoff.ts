export interface BackoffOptions {
  /** First delay, in milliseconds. */
  initialMs: number;
  factor: number;
  maxDelayMs: number;
  /** Give up after this long in total. */
  timeoutMs: number;
  signal?: AbortSignal;
}

export class WaitTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`timed out after ${Math.round(ms / 1000)}s waiting for ${what}`);
    this.name = "WaitTimeoutError";
  }
}

/** Delay for attempt n (0-based): exponential, capped, with "equal jitter" (half fixed, half random). */
export function backoffDelay(
  attempt: number,
  o: Pick<BackoffOptions, "initialMs" | "factor" | "maxDelayMs">,
) {
  const base = Math.min(o.maxDelayMs, o.initialMs * o.factor ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Calls `check` until it returns a value other than undefined, sleeping with backoff between tries.
 * The first check runs at once: fake clouds and fast paths answer without any wait.
 */
export async function waitUntil<T>(
  what: string,
  check: () => Promise<T | undefined>,
  o: BackoffOptions,
): Promise<T> {
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    const result = await check();
    if (result !== undefined) return result;
    const elapsed = Date.now() - started;
    if (elapsed >= o.timeoutMs) throw new WaitTimeoutError(what, elapsed);
    await sleep(Math.min(backoffDelay(attempt, o), o.timeoutMs - elapsed), o.signal);
  }
}
