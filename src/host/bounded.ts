import { currentCallSignal } from "../call-scope.ts";

/**
 * Host calls that cannot hang the plugin. A filesystem call on a dead NFS server, or on a path of
 * the kernel that never answers, does not return; the thread running it stays blocked. So every
 * in-process host call on a request path goes through `bounded`: the caller gets an answer when
 * its deadline passes (or after `timeoutMs`), the stuck call is remembered until it returns, and
 * once MAX_STUCK calls are stuck no new one starts, so the thread pool (UV_THREADPOOL_SIZE, set by
 * src/thread-pool.ts) keeps threads for everything else. The one exception: NodeGetVolumeStats on
 * an ext2/3/4 volume it has checked before reads lstat and statfs on the event loop, since those
 * filesystems answer both from memory (answersFromMemory in blockdev.ts).
 */

/** Default bound of one filesystem call: far above a healthy one, below kubelet's 2-minute call. */
export const HOST_CALL_TIMEOUT_MS = 30_000;
/** Threads of the pool that may be held by stuck calls; the rest stay free for healthy work. */
export const MAX_STUCK = 8;

/** A host call that did not return in time, or was not started because too many are stuck. */
export class HostTimeoutError extends Error {
  readonly what: string;
  constructor(what: string, why: string) {
    super(`${what} ${why}`);
    this.name = "HostTimeoutError";
    this.what = what;
  }
}

const stuck = new Map<number, { what: string; since: number }>();
let nextId = 0;

/** What is stuck now, oldest first: for errors and logs. */
export function stuckHostCalls(): { what: string; seconds: number }[] {
  const now = Date.now();
  return [...stuck.values()].map((s) => ({ what: s.what, seconds: Math.round((now - s.since) / 1000) }));
}

/**
 * Runs `call` (one host operation described by `what`, e.g. "mkdir /x") and settles when it does,
 * when the caller's deadline passes, or after timeoutMs, whichever comes first.
 */
export function bounded<T>(
  what: string,
  call: () => Promise<T>,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  if (stuck.size >= MAX_STUCK) {
    const list = stuckHostCalls()
      .slice(0, 3)
      .map((s) => `${s.what} (${s.seconds} s)`)
      .join(", ");
    return Promise.reject(
      new HostTimeoutError(what, `was not started: ${stuck.size} host calls are stuck (${list}, ...)`),
    );
  }
  const signal = opts.signal ?? currentCallSignal();
  const timeoutMs = opts.timeoutMs ?? HOST_CALL_TIMEOUT_MS;
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const pending = call();
    const giveUp = (why: string) => {
      if (settled) return;
      settled = true;
      cleanup();
      const id = nextId++;
      stuck.set(id, { what, since: Date.now() });
      const unstick = () => stuck.delete(id);
      pending.then(unstick, unstick);
      reject(new HostTimeoutError(what, why));
    };
    const timer = setTimeout(() => giveUp(`did not return within ${timeoutMs / 1000} s`), timeoutMs);
    const onAbort = () => giveUp("did not return before the caller's deadline");
    signal?.addEventListener("abort", onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    pending.then(
      (value) => {
        if (settled) return;
        settled = true;
        cleanup();
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        cleanup();
        reject(err);
      },
    );
    if (signal?.aborted) onAbort();
  });
}
