import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import type { AccessPoint } from "../../src/efs/cloud.ts";
import { FreshCalls } from "../../src/efs/fresh-calls.ts";
import { GidAllocator, lowestFreeGid } from "../../src/efs/gid.ts";

const FS = "fs-0123456789abcdef0";

const ap = (gid: number, id = `fsap-${gid}`): AccessPoint => ({
  id,
  fileSystemId: FS,
  posixUser: { uid: gid, gid },
  rootDirectory: { path: `/${id}` },
  tags: {},
});

describe("lowestFreeGid", () => {
  it("finds the lowest GID of the range that is not used", () => {
    expect(lowestFreeGid({ start: 10, end: 20 }, new Set())).toBe(10);
    expect(lowestFreeGid({ start: 10, end: 20 }, new Set([10, 11, 13]))).toBe(12);
    expect(lowestFreeGid({ start: 10, end: 12 }, new Set([10, 11, 12]))).toBeUndefined();
  });
});

describe("FreshCalls", () => {
  it("runs one call for callers that arrive together, and a second one for callers arriving during it", async () => {
    let runs = 0;
    const gates: PromiseWithResolvers<number>[] = [];
    const calls = new FreshCalls<number>(async () => {
      runs++;
      const gate = Promise.withResolvers<number>();
      gates.push(gate);
      return gate.promise;
    });
    const first = calls.get("k");
    const joinedLate = [calls.get("k"), calls.get("k")];
    expect(runs).toBe(1);
    gates[0]!.resolve(1);
    expect(await first).toEqual({ value: 1, seq: 1 });
    // Arrived while call 1 ran: served by call 2, which started after they asked.
    await new Promise((resolve) => setImmediate(resolve));
    expect(runs).toBe(2);
    gates[1]!.resolve(2);
    expect(await Promise.all(joinedLate)).toEqual([
      { value: 2, seq: 2 },
      { value: 2, seq: 2 },
    ]);
    expect(calls.started()).toBe(2);
  });

  it("hands a failure to the callers of that call only", async () => {
    let n = 0;
    const calls = new FreshCalls<number>(async () => {
      n++;
      if (n === 1) throw new Error("boom");
      return n;
    });
    const failing = calls.get("k");
    const next = calls.get("k");
    await expect(failing).rejects.toThrow("boom");
    await expect(next).resolves.toEqual({ value: 2, seq: 2 });
  });

  it("keeps keys apart, numbering the calls of all keys in the order they started", async () => {
    const calls = new FreshCalls<string>(async (key) => key);
    expect(await Promise.all([calls.get("a"), calls.get("b")])).toEqual([
      { value: "a", seq: 1 },
      { value: "b", seq: 2 },
    ]);
    expect(await calls.get("a")).toEqual({ value: "a", seq: 3 });
  });

  it("keeps no key whose call ended: 10,000 file system ids asked for once leave nothing behind", async () => {
    const calls = new FreshCalls<number>(async (key) => {
      if (key.endsWith("7")) throw new Error("no such file system");
      return 1;
    });
    const asked = Array.from({ length: 10_000 }, (_, i) => calls.get(`fs-${i}`).catch(() => undefined));
    expect(calls.size).toBe(10_000);
    await Promise.all(asked);
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls.size).toBe(0);
    expect(calls.started()).toBe(10_000);
  });
});

describe("GidAllocator", () => {
  const range = { start: 100, end: 104 };

  it("skips GIDs of listed access points and of reservations", () => {
    const gids = new GidAllocator(() => 1);
    const listing = { value: [ap(100), ap(102), ap(5000)], seq: 1 };
    const a = gids.reserve(FS, range, listing);
    const b = gids.reserve(FS, range, listing);
    const c = gids.reserve(FS, range, listing);
    expect([a.gid, b.gid, c.gid]).toEqual([101, 103, 104]);
    expect(() => gids.reserve(FS, range, listing)).toThrow(CsiError);
  });

  it("frees a GID whose create failed", () => {
    const gids = new GidAllocator(() => 1);
    const listing = { value: [], seq: 1 };
    const a = gids.reserve(FS, range, listing);
    a.release();
    expect(gids.reserve(FS, range, listing).gid).toBe(100);
  });

  it("holds a created access point's GID until a listing started after the create", () => {
    let started = 1;
    const gids = new GidAllocator(() => started);
    const created = ap(100);
    gids.reserve(FS, range, { value: [], seq: 1 }).keep(created);
    // Listing 1 started before the create finished: it cannot show it.
    expect(gids.reserve(FS, range, { value: [], seq: 1 }).gid).toBe(101);
    expect(gids.unlistedAccessPoints(FS, 1)).toEqual([created]);
    started = 2;
    // Listing 2 started after: it shows the access point, or it was deleted since.
    expect(gids.unlistedAccessPoints(FS, 2)).toEqual([]);
    expect(gids.reserve(FS, range, { value: [], seq: 2 }).gid).toBe(100);
  });

  it("keeps nothing for a file system once its GIDs are released or expired", () => {
    let now = 0;
    const gids = new GidAllocator(
      () => 1,
      () => now,
    );
    for (let i = 0; i < 100; i++) gids.reserve(`fs-${i}`, range, { value: [], seq: 1 }).release();
    expect(gids.fileSystems).toBe(0);
    gids.reserve(FS, range, { value: [], seq: 1 }).keep(ap(100));
    expect(gids.fileSystems).toBe(1);
    now += 11 * 60_000;
    expect(gids.unlistedAccessPoints(FS, 1)).toEqual([]);
    expect(gids.fileSystems).toBe(0);
  });

  it("says which range and file system are full", () => {
    const gids = new GidAllocator(() => 1);
    const listing = { value: [100, 101, 102, 103, 104].map((g) => ap(g)), seq: 1 };
    try {
      gids.reserve(FS, range, listing);
      expect.unreachable();
    } catch (err) {
      expect((err as CsiError).code).toBe(status.RESOURCE_EXHAUSTED);
      expect((err as CsiError).message).toContain("100-104");
      expect((err as CsiError).message).toContain(FS);
    }
  });

  // Its cost (O(n) against the official O(n²)) is measured by `npm run bench`, not here.
  it("allocates past 10,000 access points packed at the start of the range", () => {
    const gids = new GidAllocator(() => 1);
    // Lowest-first allocation packs the used GIDs at the start of the range: the worst case for a scan.
    const listing = { value: Array.from({ length: 10_000 }, (_, i) => ap(50_000 + i)), seq: 1 };
    const got = new Set<number>();
    for (let i = 0; i < 100; i++) got.add(gids.reserve(FS, { start: 50_000, end: 60_100 }, listing).gid);
    expect(got.size).toBe(100);
    expect(Math.min(...got)).toBe(60_000);
  });
});
