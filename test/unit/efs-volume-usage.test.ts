// The node's background usage measurement: when volumes are walked, how many at once, which
// target, and what unpublishing stops. The walk itself is a stand-in here (efs-usage-walk.test.ts
// tests the real one).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { WalkResult } from "../../src/efs/usage-walk.ts";
import { VolumeUsageTracker } from "../../src/efs/volume-usage.ts";
import { createLogger, type Logger } from "../../src/log.ts";

const REFRESH = 300_000;

interface FakeWalk {
  target: string;
  signal: AbortSignal;
  finish(result: Partial<WalkResult>): void;
  fail(err: Error): void;
}

function setup(o: { maxConcurrentWalks?: number; unmounted?: Set<string> } = {}) {
  const walks: FakeWalk[] = [];
  const warnings: string[] = [];
  const log: Logger = createLogger("silent");
  log.warn = ((_fields: unknown, message: string) => {
    warnings.push(message);
  }) as Logger["warn"];
  const unmounted = o.unmounted ?? new Set<string>();
  const tracker = new VolumeUsageTracker({
    log,
    refreshMs: REFRESH,
    maxConcurrentWalks: o.maxConcurrentWalks ?? 1,
    isMounted: async (target) => !unmounted.has(target),
    measure: (target, signal) =>
      new Promise<WalkResult>((resolve, reject) => {
        const walk: FakeWalk = {
          target,
          signal,
          finish: (r) => resolve({ bytes: 0, inodes: 0, unreadable: 0, skippedMounts: 0, ...r }),
          fail: reject,
        };
        // Like the child process: an abort ends the walk.
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
        walks.push(walk);
      }),
  });
  const running = () => walks.filter((w) => !w.signal.aborted && !settled.has(w));
  const settled = new Set<FakeWalk>();
  const finish = async (walk: FakeWalk, r: Partial<WalkResult>) => {
    settled.add(walk);
    walk.finish(r);
    await vi.advanceTimersByTimeAsync(0);
  };
  return { tracker, walks, running, finish, warnings };
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("VolumeUsageTracker", () => {
  it("walks a volume as soon as it is tracked, then every refresh interval", async () => {
    const { tracker, walks, finish } = setup();
    tracker.track("vol-1", "/pods/a");
    await vi.advanceTimersByTimeAsync(0);
    expect(walks.map((w) => w.target)).toEqual(["/pods/a"]);
    // Nothing measured yet: the caller reports zeros.
    expect(tracker.usage("vol-1")).toBeUndefined();

    await finish(walks[0]!, { bytes: 4096, inodes: 1 });
    expect(tracker.usage("vol-1")).toEqual({ bytes: 4096, inodes: 1, partial: false });
    // Another stats call does not start another walk: the figures are fresh enough.
    tracker.track("vol-1", "/pods/a");
    await vi.advanceTimersByTimeAsync(REFRESH - 1);
    expect(walks).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(walks).toHaveLength(2);
    await finish(walks[1]!, { bytes: 8192, inodes: 2 });
    expect(tracker.usage("vol-1")).toEqual({ bytes: 8192, inodes: 2, partial: false });
    await tracker.close();
  });

  it("walks one volume at a time on the node, the others wait their turn", async () => {
    const { tracker, walks, running, finish } = setup();
    for (const id of ["vol-1", "vol-2", "vol-3"]) tracker.track(id, `/pods/${id}`);
    await vi.advanceTimersByTimeAsync(0);
    expect(running().map((w) => w.target)).toEqual(["/pods/vol-1"]);
    await finish(walks[0]!, { bytes: 1 });
    expect(running().map((w) => w.target)).toEqual(["/pods/vol-2"]);
    await finish(walks[1]!, { bytes: 2 });
    await finish(walks[2]!, { bytes: 3 });
    expect(["vol-1", "vol-2", "vol-3"].map((id) => tracker.usage(id)?.bytes)).toEqual([1, 2, 3]);
    await tracker.close();
  });

  it("shares one walk among the targets of a volume", async () => {
    const { tracker, walks } = setup({ maxConcurrentWalks: 4 });
    tracker.track("vol-1", "/pods/a");
    tracker.track("vol-1", "/pods/b");
    await vi.advanceTimersByTimeAsync(0);
    expect(walks).toHaveLength(1);
    await tracker.close();
  });

  it("stops the walk and forgets the volume when its last target is unpublished", async () => {
    const { tracker, walks, running } = setup();
    tracker.track("vol-1", "/pods/a");
    tracker.track("vol-2", "/pods/x");
    await vi.advanceTimersByTimeAsync(0);
    await tracker.untrack("vol-1", "/pods/a");
    expect(walks[0]!.signal.aborted).toBe(true);
    expect(tracker.usage("vol-1")).toBeUndefined();
    // The walk slot went to the next volume; vol-1 is walked no more.
    await vi.advanceTimersByTimeAsync(0);
    expect(running().map((w) => w.target)).toEqual(["/pods/x"]);
    await vi.advanceTimersByTimeAsync(REFRESH * 3);
    expect(walks.filter((w) => w.target === "/pods/a")).toHaveLength(1);
    await tracker.close();
  });

  it("stops a walk of the target being unpublished and walks another target of the volume instead", async () => {
    const { tracker, walks, finish } = setup();
    tracker.track("vol-1", "/pods/a");
    tracker.track("vol-1", "/pods/b");
    await vi.advanceTimersByTimeAsync(0);
    expect(walks[0]!.target).toBe("/pods/a");
    await tracker.untrack("vol-1", "/pods/a");
    expect(walks[0]!.signal.aborted).toBe(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(walks[1]!.target).toBe("/pods/b");
    await finish(walks[1]!, { bytes: 10, inodes: 1 });
    expect(tracker.usage("vol-1")?.bytes).toBe(10);

    // Unpublishing a target that is not being walked stops nothing.
    tracker.track("vol-1", "/pods/c");
    await vi.advanceTimersByTimeAsync(REFRESH);
    expect(walks[2]!.target).toBe("/pods/b");
    await tracker.untrack("vol-1", "/pods/c");
    expect(walks[2]!.signal.aborted).toBe(false);
    await tracker.close();
    expect(walks[2]!.signal.aborted).toBe(true);
  });

  it("skips targets no longer mounted, and keeps the last figures when a walk fails", async () => {
    const unmounted = new Set(["/pods/gone"]);
    const { tracker, walks, finish, warnings } = setup({ unmounted });
    tracker.track("vol-1", "/pods/gone");
    tracker.track("vol-1", "/pods/live");
    await vi.advanceTimersByTimeAsync(0);
    expect(walks.map((w) => w.target)).toEqual(["/pods/live"]);
    await finish(walks[0]!, { bytes: 100, inodes: 3 });

    await vi.advanceTimersByTimeAsync(REFRESH);
    walks[1]!.fail(new Error("EIO"));
    await vi.advanceTimersByTimeAsync(0);
    expect(tracker.usage("vol-1")).toEqual({ bytes: 100, inodes: 3, partial: false });
    expect(warnings).toEqual(["usage walk failed: keeping the last figures"]);
    // And tries again at the next interval.
    await vi.advanceTimersByTimeAsync(REFRESH);
    expect(walks).toHaveLength(3);
    await tracker.close();
  });

  it("says so when a walk stops at its limit: partial figures", async () => {
    const { tracker, walks, finish, warnings } = setup();
    tracker.track("vol-1", "/pods/a");
    await vi.advanceTimersByTimeAsync(0);
    await finish(walks[0]!, { bytes: 5, inodes: 1_000_000, partial: "entries" });
    expect(tracker.usage("vol-1")).toEqual({ bytes: 5, inodes: 1_000_000, partial: true });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/entry limit: partial/);
    await tracker.close();
  });

  it("tracks one volume per target, however many volume ids stats calls name for it", async () => {
    const { tracker, walks, running, finish } = setup();
    tracker.track("vol-real", "/pods/real");
    for (let i = 0; i < 1000; i++) tracker.track(`vol-garbage-${i}`, "/pods/a");
    await vi.advanceTimersByTimeAsync(0);
    expect(tracker.size).toBe(2);
    expect(walks.map((w) => w.target)).toEqual(["/pods/real"]);
    await finish(walks[0]!, { bytes: 1, inodes: 1 });
    // The last id named at /pods/a is the one walked there; the others were never walked.
    expect(running().map((w) => w.target)).toEqual(["/pods/a"]);
    expect(tracker.usage("vol-real")).toEqual({ bytes: 1, inodes: 1, partial: false });
    await tracker.untrack("vol-garbage-999", "/pods/a");
    expect(tracker.size).toBe(1);
    await tracker.close();
    expect(tracker.size).toBe(0);
  });
});
