import { AsyncLocalStorage } from "node:async_hooks";

/**
 * The abort signal of the CSI call being served, for the code below the services that talks to
 * AWS: when the caller gives up (its deadline passed), a retried mutation need not keep the
 * volume busy. Only calls made for one caller may use it; a batched call serves many.
 */
const scope = new AsyncLocalStorage<AbortSignal>();

export const runInCallScope = <T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> =>
  scope.run(signal, work);

export const currentCallSignal = (): AbortSignal | undefined => scope.getStore();
