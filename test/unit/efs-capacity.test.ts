// The node's cache of access point capacities: TTL, one shared lookup, failures and missing tags.
import { describe, expect, it } from "vitest";
import { CapacityCache } from "../../src/efs/capacity.ts";
import { EfsError } from "../../src/efs/cloud.ts";
import { recordedCapacity, TAG_CAPACITY } from "../../src/efs/tags.ts";
import { createLogger, type Logger } from "../../src/log.ts";
import { MemoryEfs } from "./fake-efs.ts";

const GiB = 1024 ** 3;
const TTL = 60_000;

/** A logger that keeps the messages it was given. */
function recordingLog(): { log: Logger; messages: string[] } {
  const messages: string[] = [];
  const log = createLogger("silent");
  log.info = ((_fields: unknown, message: string) => {
    messages.push(message);
  }) as Logger["info"];
  return { log, messages };
}

async function setup() {
  const efs = new MemoryEfs();
  const fileSystemId = efs.addFileSystem();
  const ap = await efs.createAccessPoint({
    clientToken: "pvc-1",
    fileSystemId,
    posixUser: { uid: 1, gid: 1 },
    rootDirectory: { path: "/pvc-1" },
    tags: { [TAG_CAPACITY]: String(5 * GiB) },
  });
  let clock = 0;
  const { log, messages } = recordingLog();
  const cache = new CapacityCache({
    lookup: async (id) => recordedCapacity(await efs.describeAccessPoint(id)),
    ttlMs: TTL,
    log,
    now: () => clock,
  });
  const lookups = () => efs.calls["describeAccessPoint"] ?? 0;
  const setTag = (bytes: number) => {
    efs.accessPoints.get(ap.id)!.tags[TAG_CAPACITY] = String(bytes);
  };
  const advance = (ms: number) => {
    clock += ms;
  };
  return { efs, ap, cache, lookups, setTag, advance, messages };
}

describe("CapacityCache", () => {
  it("reads the capacity tag once per TTL, and answers the old value while it refreshes", async () => {
    const { ap, cache, lookups, setTag, advance } = await setup();
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    setTag(8 * GiB);
    advance(TTL - 1);
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    expect(lookups()).toBe(1);

    advance(1);
    // Expired: this call still answers the old value and starts one lookup...
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    expect(lookups()).toBe(2);
    // ...whose answer the next calls get, until the TTL runs out again.
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await cache.get(ap.id)).toBe(8 * GiB);
    expect(lookups()).toBe(2);
  });

  it("shares one lookup among concurrent calls, the first ones and the refreshes", async () => {
    const { ap, cache, lookups, advance } = await setup();
    const first = await Promise.all(Array.from({ length: 50 }, () => cache.get(ap.id)));
    expect(new Set(first)).toEqual(new Set([5 * GiB]));
    expect(lookups()).toBe(1);
    advance(TTL);
    await Promise.all(Array.from({ length: 50 }, () => cache.get(ap.id)));
    expect(lookups()).toBe(2);
  });

  it("with a TTL of 0 looks up on every call that finds no lookup running", async () => {
    const efs = new MemoryEfs();
    const fileSystemId = efs.addFileSystem();
    const ap = await efs.createAccessPoint({
      clientToken: "t",
      fileSystemId,
      posixUser: { uid: 1, gid: 1 },
      rootDirectory: { path: "/t" },
      tags: { [TAG_CAPACITY]: "100" },
    });
    const cache = new CapacityCache({
      lookup: async (id) => recordedCapacity(await efs.describeAccessPoint(id)),
      ttlMs: 0,
      log: createLogger("silent"),
    });
    expect(await cache.get(ap.id)).toBe(100);
    efs.accessPoints.get(ap.id)!.tags[TAG_CAPACITY] = "200";
    await cache.get(ap.id);
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await cache.get(ap.id)).toBe(200);
  });

  it("answers undefined when the lookup fails or finds no tag, logging each once per access point", async () => {
    const { efs, ap, cache, advance, messages } = await setup();
    efs.beforeCall = () => {
      throw new EfsError("AccessDenied", "AccessDeniedException", "not authorized: DescribeAccessPoints");
    };
    expect(await cache.get(ap.id)).toBeUndefined();
    for (let i = 0; i < 3; i++) {
      advance(TTL);
      await cache.get(ap.id);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(messages).toHaveLength(1);
    expect(messages[0]).toContain("elasticfilesystem:DescribeAccessPoints");

    // Another access point fails too: logged for it as well.
    await cache.get("fsap-0000000000000000f");
    expect(messages).toHaveLength(2);

    efs.beforeCall = undefined;
    delete efs.accessPoints.get(ap.id)!.tags[TAG_CAPACITY];
    advance(TTL);
    await cache.get(ap.id);
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(await cache.get(ap.id)).toBeUndefined();
    expect(messages.at(-1)).toContain("no capacity tag");
    expect(messages).toHaveLength(3);
  });

  it("keeps the value it read when a later lookup fails", async () => {
    const { efs, ap, cache, advance, lookups } = await setup();
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    efs.beforeCall = () => {
      throw new EfsError("Unavailable", "ECONNREFUSED", "connect ECONNREFUSED");
    };
    advance(TTL);
    await cache.get(ap.id);
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(lookups()).toBe(2);
    expect(await cache.get(ap.id)).toBe(5 * GiB);
  });

  it("keeps at most maxEntries access points, dropping the one asked for least recently", async () => {
    const { efs, ap, lookups } = await setup();
    const cache = new CapacityCache({
      lookup: async (id) => {
        const found = await efs.describeAccessPoint(id).catch(() => undefined);
        return found && recordedCapacity(found);
      },
      ttlMs: TTL,
      log: createLogger("silent"),
      now: () => 0,
      maxEntries: 3,
    });
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    // Ids from garbage requests: each is looked up once, and the cache stays at its bound.
    for (let i = 0; i < 100; i++) {
      await cache.get(`fsap-${String(i).padStart(17, "0")}`);
      if (i % 2 === 0) await cache.get(ap.id);
    }
    expect(cache.size).toBe(3);
    // Asked for every other time, the real access point stayed and was looked up once.
    const before = lookups();
    expect(await cache.get(ap.id)).toBe(5 * GiB);
    expect(lookups()).toBe(before);
  });
});
