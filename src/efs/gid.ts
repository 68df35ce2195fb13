/**
 * POSIX GID allocation for dynamically provisioned access points: each access point of a file
 * system gets a GID of the StorageClass range that no other access point of that file system has.
 *
 * The GIDs in use come from one listing of the file system's access points (shared by concurrent
 * calls, see fresh-calls.ts) plus this process's reservations: GIDs of creates still in flight, and
 * of creates that finished after the listing started (the listing cannot show those). Picking and
 * reserving is synchronous, so in Node's single thread it is the per-file-system critical section:
 * 100 concurrent CreateVolume calls get 100 distinct GIDs. Cost: O(n) for n access points, where
 * the official driver scans the whole range against a list (O(n^2)) and reserves nothing, so two
 * concurrent creates can pick the same GID.
 */
import { resourceExhausted } from "../csi/errors.ts";
import type { AccessPoint } from "./cloud.ts";
import type { Fresh } from "./fresh-calls.ts";

export interface GidRange {
  start: number;
  end: number;
}

/**
 * How long a finished create's GID stays reserved at most. It is needed only until a listing that
 * started after the create finished is in use; this bounds the memory, not the correctness.
 */
const SETTLED_RETENTION_MS = 10 * 60_000;

/** The lowest GID of the range missing from `used`; undefined when none is. At most |used| + 1 steps. */
export function lowestFreeGid(range: GidRange, used: { has(gid: number): boolean }): number | undefined {
  for (let gid = range.start; gid <= range.end; gid++) if (!used.has(gid)) return gid;
  return undefined;
}

export interface GidReservation {
  readonly gid: number;
  /** The create failed for certain (AWS refused it): the GID is free again. */
  release(): void;
  /**
   * The create succeeded, or may have: the GID stays reserved until listings started from now on
   * can show the access point.
   */
  keep(created?: AccessPoint): void;
}

interface Entry {
  gid: number;
  /** Listings of the file system started when the create settled; undefined while in flight. */
  settledAfter: number | undefined;
  settledTime: number;
  accessPoint: AccessPoint | undefined;
}

export class GidAllocator {
  /** Per file system, its entries; a file system with none has no key (ids come from requests). */
  readonly #entries = new Map<string, Set<Entry>>();
  /** The GIDs of a listing, computed once for all the calls that share it. */
  readonly #listedGids = new WeakMap<AccessPoint[], Set<number>>();
  readonly #listingsStarted: () => number;
  readonly #now: () => number;

  /** `listingsStarted`: the seq of the latest listing started (FreshCalls.started). */
  constructor(listingsStarted: () => number, now: () => number = Date.now) {
    this.#listingsStarted = listingsStarted;
    this.#now = now;
  }

  /** Reserves the lowest free GID of the range; throws RESOURCE_EXHAUSTED when there is none. */
  reserve(fileSystemId: string, range: GidRange, listing: Fresh<AccessPoint[]>): GidReservation {
    const listed = this.#gidsOf(listing.value);
    const reserved = new Set<number>();
    for (const entry of this.#unlisted(fileSystemId, listing.seq)) reserved.add(entry.gid);
    const gid = lowestFreeGid(range, { has: (g: number) => listed.has(g) || reserved.has(g) });
    if (gid === undefined) {
      throw resourceExhausted(
        `no free GID in gidRangeStart-gidRangeEnd ${range.start}-${range.end} on file system ${fileSystemId}: ` +
          `its access points use all ${range.end - range.start + 1}; widen the range or use another file system`,
      );
    }
    const entry: Entry = { gid, settledAfter: undefined, settledTime: 0, accessPoint: undefined };
    let entries = this.#entries.get(fileSystemId);
    if (!entries) {
      entries = new Set();
      this.#entries.set(fileSystemId, entries);
    }
    entries.add(entry);
    let done = false;
    return {
      gid,
      release: () => {
        if (done) return;
        done = true;
        this.#remove(fileSystemId, entries, entry);
      },
      keep: (created) => {
        if (done) return;
        done = true;
        entry.settledAfter = this.#listingsStarted();
        entry.settledTime = this.#now();
        entry.accessPoint = created;
      },
    };
  }

  #gidsOf(accessPoints: AccessPoint[]): Set<number> {
    let gids = this.#listedGids.get(accessPoints);
    if (!gids) {
      gids = new Set();
      for (const ap of accessPoints) if (ap.posixUser) gids.add(ap.posixUser.gid);
      this.#listedGids.set(accessPoints, gids);
    }
    return gids;
  }

  /** Access points this process created that the listing with this seq may not show. */
  unlistedAccessPoints(fileSystemId: string, listingSeq: number): AccessPoint[] {
    const found: AccessPoint[] = [];
    for (const entry of this.#unlisted(fileSystemId, listingSeq))
      if (entry.accessPoint) found.push(entry.accessPoint);
    return found;
  }

  /** GIDs held for this file system (tests and diagnostics). */
  reservedGids(fileSystemId: string): number[] {
    return [...(this.#entries.get(fileSystemId) ?? [])].map((e) => e.gid);
  }

  #remove(fileSystemId: string, entries: Set<Entry>, entry: Entry): void {
    entries.delete(entry);
    if (entries.size === 0 && this.#entries.get(fileSystemId) === entries) this.#entries.delete(fileSystemId);
  }

  /** File systems with GIDs held (tests and diagnostics). */
  get fileSystems(): number {
    return this.#entries.size;
  }

  /** Entries a listing with this seq may lack: in flight, or settled after the listing started. */
  *#unlisted(fileSystemId: string, listingSeq: number): Generator<Entry> {
    const entries = this.#entries.get(fileSystemId);
    if (!entries) return;
    const expired = this.#now() - SETTLED_RETENTION_MS;
    for (const entry of entries) {
      if (entry.settledAfter === undefined) {
        yield entry;
      } else if (entry.settledTime < expired) {
        this.#remove(fileSystemId, entries, entry);
      } else if (listingSeq <= entry.settledAfter) {
        yield entry;
      }
    }
  }
}
