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

/** A FIFO mutex per key, for work that must queue rather than fail (device names on one node). */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = previous.then(() => mine);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await work();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}
