/**
 * The PV's capacity as the node sees it: the access point's capacity tag, read with
 * DescribeAccessPoints and kept per access point for a TTL, so that an expansion shows up within
 * one TTL and kubelet's stats calls (one per pod volume, every minute) cost AWS one call per access
 * point and TTL.
 *
 * Only the first lookup of an access point is waited for. After that an expired value is still
 * answered while one shared lookup refreshes it in the background: a slow or unreachable AWS then
 * never delays a stats call. A failed lookup (no IAM permission, no credentials) is logged once per
 * access point and keeps the value read before, if any, else answers "unknown" and the caller
 * falls back to statfs; it is tried again after the TTL. Nothing is persisted: a restarted plugin
 * looks up again.
 *
 * Access point ids come from requests: at most maxEntries are kept, the one asked for least
 * recently dropped first. The default is more EFS volumes than a node mounts.
 */
import type { Logger } from "../log.ts";

export interface CapacityCacheOptions {
  /** The access point's recorded capacity, undefined when it has none; throws when AWS cannot tell. */
  lookup: (accessPointId: string) => Promise<number | undefined>;
  ttlMs: number;
  log: Logger;
  /** Milliseconds on a monotonic clock. */
  now?: () => number;
  /** Access points kept at most. */
  maxEntries?: number;
}

const DEFAULT_MAX_ENTRIES = 1000;

interface Entry {
  value: number | undefined;
  /** When the last lookup ended; undefined until the first one has. */
  fetchedAt: number | undefined;
  inflight: Promise<number | undefined> | undefined;
  /** What was logged last, so that each state is logged once when it starts, not at every lookup. */
  reported: "no tag" | "failed" | undefined;
}

export class CapacityCache {
  readonly #o: CapacityCacheOptions;
  readonly #now: () => number;
  readonly #maxEntries: number;
  /** In the order they were last asked for, least recent first. */
  readonly #entries = new Map<string, Entry>();

  constructor(options: CapacityCacheOptions) {
    this.#o = options;
    this.#now = options.now ?? performance.now.bind(performance);
    this.#maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES;
  }

  /** Access points kept (tests and diagnostics). */
  get size(): number {
    return this.#entries.size;
  }

  /** The capacity in bytes, or undefined when the access point records none or AWS cannot tell. */
  async get(accessPointId: string): Promise<number | undefined> {
    let entry = this.#entries.get(accessPointId);
    if (entry) {
      this.#entries.delete(accessPointId);
    } else {
      entry = { value: undefined, fetchedAt: undefined, inflight: undefined, reported: undefined };
      // A lookup under way for a dropped entry still answers its callers; its result is not kept.
      const oldest = this.#entries.keys().next();
      if (this.#entries.size >= this.#maxEntries && !oldest.done) this.#entries.delete(oldest.value);
    }
    this.#entries.set(accessPointId, entry);
    const expired = entry.fetchedAt === undefined || this.#now() - entry.fetchedAt >= this.#o.ttlMs;
    if (expired && !entry.inflight) entry.inflight = this.#lookup(accessPointId, entry);
    if (entry.fetchedAt === undefined) return entry.inflight;
    return entry.value;
  }

  /** Starts the first lookup early (at publish), so that the first stats call finds it done. */
  prefetch(accessPointId: string): void {
    void this.get(accessPointId);
  }

  async #lookup(accessPointId: string, entry: Entry): Promise<number | undefined> {
    const { log } = this.#o;
    let state: Entry["reported"];
    try {
      entry.value = await this.#o.lookup(accessPointId);
      state = entry.value === undefined ? "no tag" : undefined;
      if (state && entry.reported !== state) {
        log.info(
          { accessPointId },
          "access point has no capacity tag: volume stats report the file system's size as the total",
        );
      }
    } catch (err) {
      // A value read before stays: a passing AWS failure must not turn the total into 8 EiB.
      state = "failed";
      if (entry.reported !== state) {
        log.info(
          { accessPointId, err: err instanceof Error ? err.message : String(err) },
          "cannot read the access point's capacity (does the node's IAM role allow " +
            "elasticfilesystem:DescribeAccessPoints?): volume stats report the file system's size as the total",
        );
      }
    }
    entry.reported = state;
    entry.fetchedAt = this.#now();
    entry.inflight = undefined;
    return entry.value;
  }
}
