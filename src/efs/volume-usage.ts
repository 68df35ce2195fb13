/**
 * Each published volume's own usage, measured in the background by walking one of its targets
 * (usage-walk.ts), so that NodeGetVolumeStats answers from memory and never walks a tree itself.
 *
 * Keyed by volume id: the pods of one volume on this node share its figures and its walks. A volume
 * is tracked from NodePublishVolume, or, after a plugin restart (nothing is persisted), from the
 * first stats call for it; it is walked at once, then every refreshMs. Walks queue for a node-wide
 * limit (one at a time by default). NodeUnpublishVolume stops a walk of the target it unmounts (an
 * open directory would keep the mount busy) and forgets the volume when no target is left.
 *
 * A target holds one volume: tracking another volume id at a target moves the target to it. So the
 * volumes tracked are at most the targets mounted, whatever volume ids stats calls name.
 */
import type { Logger } from "../log.ts";
import type { WalkResult } from "./usage-walk.ts";

export interface VolumeUsage {
  bytes: number;
  inodes: number;
  /** The last walk stopped at a limit: the figures are a lower bound. */
  partial: boolean;
}

export interface VolumeUsageOptions {
  log: Logger;
  /** How long after a walk ends the volume is walked again. */
  refreshMs: number;
  /** Walks running at once on this node. */
  maxConcurrentWalks: number;
  /** Walks one target; must stop (and release the mount) when the signal aborts. */
  measure: (target: string, signal: AbortSignal) => Promise<WalkResult>;
  /** Whether something is still mounted at the target: a target kubelet cleaned up without us is dropped. */
  isMounted: (target: string) => Promise<boolean>;
}

interface Walk {
  /** Undefined while the target is being chosen. */
  target: string | undefined;
  abort: AbortController;
  done: Promise<void>;
}

interface Tracked {
  /** Published targets, oldest first: walks use the first one still mounted. */
  targets: Set<string>;
  usage: VolumeUsage | undefined;
  walk: Walk | undefined;
  queued: boolean;
  timer: NodeJS.Timeout | undefined;
  /** Whether hitting a walk limit was logged at warn already (later: debug). */
  partialLogged: boolean;
}

export class VolumeUsageTracker {
  readonly #o: VolumeUsageOptions;
  readonly #volumes = new Map<string, Tracked>();
  /** Target -> the volume tracked there. */
  readonly #owners = new Map<string, string>();
  readonly #queue: string[] = [];
  #walking = 0;

  constructor(options: VolumeUsageOptions) {
    this.#o = options;
  }

  /** The figures of the last walk that finished, or undefined before the first one. */
  usage(volumeId: string): VolumeUsage | undefined {
    return this.#volumes.get(volumeId)?.usage;
  }

  /** Volumes tracked (tests and diagnostics). */
  get size(): number {
    return this.#volumes.size;
  }

  /** Adds a published target of the volume; a volume not measured yet is queued for a walk. */
  track(volumeId: string, target: string): void {
    const owner = this.#owners.get(target);
    if (owner !== undefined && owner !== volumeId) void this.untrack(owner, target);
    this.#owners.set(target, volumeId);
    let v = this.#volumes.get(volumeId);
    if (!v) {
      v = {
        targets: new Set(),
        usage: undefined,
        walk: undefined,
        queued: false,
        timer: undefined,
        partialLogged: false,
      };
      this.#volumes.set(volumeId, v);
    }
    v.targets.add(target);
    if (!v.walk && !v.queued && !v.timer) this.#enqueue(volumeId, v);
  }

  /**
   * Removes a target about to be unmounted. A walk of it is stopped, and waited for, so that it no
   * longer holds the mount; the volume is walked again on another target, or forgotten when none
   * is left.
   */
  async untrack(volumeId: string, target: string): Promise<void> {
    const v = this.#volumes.get(volumeId);
    if (!v) return;
    this.#dropTarget(volumeId, v, target);
    const walk = v.walk;
    const last = v.targets.size === 0;
    if (last) this.#forget(volumeId, v);
    if (walk && (last || walk.target === undefined || walk.target === target)) {
      walk.abort.abort(new Error(`target ${target} is being unpublished`));
      await walk.done;
      if (!last && this.#volumes.get(volumeId) === v && !v.walk && !v.queued && !v.timer) {
        this.#enqueue(volumeId, v);
      }
    }
  }

  /** Stops every walk and timer (plugin shutdown); resolves when the walks have ended. */
  async close(): Promise<void> {
    const walks: Promise<void>[] = [];
    for (const [volumeId, v] of [...this.#volumes]) {
      this.#forget(volumeId, v);
      if (v.walk) {
        v.walk.abort.abort(new Error("the plugin is shutting down"));
        walks.push(v.walk.done);
      }
    }
    await Promise.all(walks);
  }

  #dropTarget(volumeId: string, v: Tracked, target: string): void {
    v.targets.delete(target);
    if (this.#owners.get(target) === volumeId) this.#owners.delete(target);
  }

  #forget(volumeId: string, v: Tracked): void {
    for (const target of v.targets) this.#dropTarget(volumeId, v, target);
    clearTimeout(v.timer);
    v.timer = undefined;
    if (v.queued) this.#queue.splice(this.#queue.indexOf(volumeId), 1);
    v.queued = false;
    this.#volumes.delete(volumeId);
  }

  #enqueue(volumeId: string, v: Tracked): void {
    v.queued = true;
    this.#queue.push(volumeId);
    this.#startWalks();
  }

  #startWalks(): void {
    while (this.#walking < this.#o.maxConcurrentWalks && this.#queue.length > 0) {
      const volumeId = this.#queue.shift()!;
      const v = this.#volumes.get(volumeId)!;
      v.queued = false;
      this.#walking++;
      const walk: Walk = { target: undefined, abort: new AbortController(), done: Promise.resolve() };
      v.walk = walk;
      walk.done = this.#walk(volumeId, v, walk).finally(() => {
        this.#walking--;
        v.walk = undefined;
        this.#startWalks();
      });
    }
  }

  async #walk(volumeId: string, v: Tracked, walk: Walk): Promise<void> {
    const { log } = this.#o;
    const signal = walk.abort.signal;
    try {
      walk.target = await this.#mountedTarget(volumeId, v);
      if (signal.aborted) return;
      if (walk.target === undefined) {
        // Every target was unmounted behind our back: nothing to walk until a publish or stats call.
        if (this.#volumes.get(volumeId) === v && v.targets.size === 0) this.#forget(volumeId, v);
        return;
      }
      const result = await this.#o.measure(walk.target, signal);
      v.usage = { bytes: result.bytes, inodes: result.inodes, partial: result.partial !== undefined };
      const fields = { volumeId, target: walk.target, ...result };
      if (result.partial) {
        const level = v.partialLogged ? "debug" : "warn";
        v.partialLogged = true;
        log[level](
          fields,
          `usage walk stopped at its ${result.partial === "entries" ? "entry" : "time"} limit: ` +
            "partial, used bytes and inodes are a lower bound",
        );
      } else {
        log.debug(fields, "usage walk done");
      }
    } catch (err) {
      if (signal.aborted) return;
      log.warn(
        { volumeId, target: walk.target, err: err instanceof Error ? err.message : String(err) },
        "usage walk failed: keeping the last figures",
      );
    }
    if (this.#volumes.get(volumeId) !== v) return;
    v.timer = setTimeout(() => {
      v.timer = undefined;
      this.#enqueue(volumeId, v);
    }, this.#o.refreshMs);
    v.timer.unref();
  }

  /** The oldest target still mounted; targets found unmounted are dropped. */
  async #mountedTarget(volumeId: string, v: Tracked): Promise<string | undefined> {
    // Iterates the live set: a target published while this looks is looked at too.
    for (const target of v.targets) {
      if (await this.#o.isMounted(target).catch(() => false)) {
        if (v.targets.has(target)) return target;
      } else if (v.targets.has(target)) {
        this.#dropTarget(volumeId, v, target);
      }
    }
    return undefined;
  }
}
