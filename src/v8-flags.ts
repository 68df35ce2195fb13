import { setFlagsFromString } from "node:v8";
import type { Mode } from "./config.ts";

/**
 * V8 flags of a controller-only plugin. A controller waits on AWS: its CPU per call is small,
 * while V8's optimizing compilers (their code and working memory) and its speed-first heap sizing
 * cost memory under a burst: with these flags the peak resident memory of 500 CreateVolume calls
 * (npm run bench's controller scenario) went from 106-109 MiB to 97 MiB, of 100 calls from 98 MiB
 * to 89-97 MiB, with no change in the burst's time. A node plugin keeps the optimizing compilers:
 * kubelet's stats calls are CPU, and its memory is already low.
 *
 * They are set at run time because the image's entrypoint and NODE_OPTIONS are shared by both
 * modes (and NODE_OPTIONS does not take these flags), and only once start-up is over (main):
 * V8 rejects code cached under other flags, so set earlier they would discard the image's
 * compile cache for every module loaded after them.
 */
const CONTROLLER_FLAGS = ["--no-opt", "--no-maglev", "--optimize-for-size", "--single-threaded-gc"];
/**
 * A node plugin (and a plugin of both modes) collects garbage on its own thread only: its young
 * generation is a few MiB, and V8's helper threads competing with kubelet and the workload for
 * the node's cores lengthened the slowest stats calls: the p99 of NodeGetVolumeStats at
 * concurrency 8 went from 10.2-11.0 ms to 8.0-9.3 ms on 2 vCPUs (npm run bench's scenario, three
 * A/B runs of 6 rounds), at the same rate.
 */
const NODE_FLAGS = ["--single-threaded-gc"];

export function v8FlagsFor(mode: Mode): string[] {
  return mode === "controller" ? [...CONTROLLER_FLAGS] : [...NODE_FLAGS];
}

export function applyV8Flags(mode: Mode): void {
  for (const flag of v8FlagsFor(mode)) setFlagsFromString(flag);
}
