/**
 * Shares one call among concurrent callers without ever handing out a stale answer: every caller
 * gets the result of a call that started after it asked. Per key, at most one call runs; callers
 * that arrive while it runs wait for the next one, which starts when it ends and serves them all.
 *
 * Used to list a file system's access points: 100 CreateVolume calls arriving together need two
 * listings, not 100, and each still sees every access point created before it arrived.
 * (dataloader is not used: it batches keys within one tick and caches, where this needs freshness.)
 *
 * Memory: a key is kept only while its call runs, so the map holds the keys being called, not
 * every key ever asked for (keys come from requests: file system ids in StorageClass parameters).
 * Hence one sequence for all keys: a key's numbers survive its state being dropped.
 */

export interface Fresh<T> {
  value: T;
  /** When the call that produced it started: a number above that of every call started before it. */
  seq: number;
}

interface KeyState<T> {
  next: PromiseWithResolvers<Fresh<T>> | undefined;
}

export class FreshCalls<T> {
  readonly #run: (key: string) => Promise<T>;
  /** Keys with a call running. */
  readonly #running = new Map<string, KeyState<T>>();
  #seq = 0;

  constructor(run: (key: string) => Promise<T>) {
    this.#run = run;
  }

  /** The seq of the latest call started so far (of any key): a call started later gets a greater one. */
  started(): number {
    return this.#seq;
  }

  /** Keys with a call running (tests and diagnostics). */
  get size(): number {
    return this.#running.size;
  }

  get(key: string): Promise<Fresh<T>> {
    const state = this.#running.get(key);
    if (!state) return this.#start(key);
    state.next ??= Promise.withResolvers<Fresh<T>>();
    return state.next.promise;
  }

  #start(key: string): Promise<Fresh<T>> {
    const state: KeyState<T> = { next: undefined };
    this.#running.set(key, state);
    const seq = ++this.#seq;
    let call: Promise<T>;
    try {
      call = this.#run(key);
    } catch (err) {
      call = Promise.reject(err);
    }
    const result = call.then((value) => ({ value, seq }));
    const startNext = () => {
      this.#running.delete(key);
      const waiting = state.next;
      if (waiting) this.#start(key).then(waiting.resolve, waiting.reject);
    };
    result.then(startNext, startNext);
    return result;
  }
}
