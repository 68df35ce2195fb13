/**
 * Shares one call among concurrent callers without ever handing out a stale answer: every caller
 * gets the result of a call that started after it asked. Per key, at most one call runs; callers
 * that arrive while it runs wait for the next one, which starts when it ends and serves them all.
 *
 * Used to list a file system's access points: 100 CreateVolume calls arriving together need two
 * listings, not 100, and each still sees every access point created before it arrived.
 * (dataloader is not used: it batches keys within one tick and caches, where this needs freshness.)
 */

export interface Fresh<T> {
  value: T;
  /** Which call of this key produced it: 1 for the first one started, then 2, ... */
  seq: number;
}

interface KeyState<T> {
  started: number;
  running: boolean;
  next: PromiseWithResolvers<Fresh<T>> | undefined;
}

export class FreshCalls<T> {
  readonly #run: (key: string) => Promise<T>;
  readonly #keys = new Map<string, KeyState<T>>();

  constructor(run: (key: string) => Promise<T>) {
    this.#run = run;
  }

  /** How many calls of this key have started so far (the seq of the latest). */
  started(key: string): number {
    return this.#keys.get(key)?.started ?? 0;
  }

  get(key: string): Promise<Fresh<T>> {
    const state = this.#state(key);
    if (!state.running) return this.#start(key, state);
    state.next ??= Promise.withResolvers<Fresh<T>>();
    return state.next.promise;
  }

  #state(key: string): KeyState<T> {
    let state = this.#keys.get(key);
    if (!state) {
      state = { started: 0, running: false, next: undefined };
      this.#keys.set(key, state);
    }
    return state;
  }

  #start(key: string, state: KeyState<T>): Promise<Fresh<T>> {
    state.running = true;
    const seq = ++state.started;
    let call: Promise<T>;
    try {
      call = this.#run(key);
    } catch (err) {
      call = Promise.reject(err);
    }
    const result = call.then((value) => ({ value, seq }));
    const startNext = () => {
      state.running = false;
      const waiting = state.next;
      if (!waiting) return;
      state.next = undefined;
      this.#start(key, state).then(waiting.resolve, waiting.reject);
    };
    result.then(startNext, startNext);
    return result;
  }
}
