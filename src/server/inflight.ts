/**
 * Keys (volume names, volume ids) with an operation under way. A second operation on a busy key
 * is refused rather than queued: CSI wants ABORTED there, and the caller retries.
 */
export class InflightKeys {
  readonly #busy = new Set<string>();

  /** Returns a release function, or undefined when the key is already busy. */
  tryAcquire(key: string): (() => void) | undefined {
    if (this.#busy.has(key)) return undefined;
    this.#busy.add(key);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#busy.delete(key);
    };
  }

  get size(): number {
    return this.#busy.size;
  }
}
