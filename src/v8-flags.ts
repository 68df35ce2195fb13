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
 * The compilers are off from the start (src/main.ts sets the launch flags before the driver's code
 * loads): turned off only once start-up was over, they had compiled what start-up ran often, which
 * kept about 2 MiB of the node binary's compiler code resident in an idle controller (5 MiB in
 * some starts). --optimize-for-size waits for the end of start-up: set from the start, it left an
 * idle controller with more memory, not less (62.9 MiB against 61.9).
 */
const CONTROLLER = {
  launch: ["--no-opt", "--no-maglev"],
  afterStartup: ["--optimize-for-size"],
};
/**
 * A node plugin (and a plugin of both modes) keeps the optimizing compilers and collects its young
 * generation on the main thread: under npm run bench's NodeGetVolumeStats load (6 s at concurrency
 * 8, 2 vCPUs), V8's four helper threads woke 1,300-1,600 times each, every young-generation
 * collection ran on them in parallel, and they used about 1 s of CPU between them, competing with
 * the load for the cores (as they would with kubelet and the workloads). With no GC helper threads
 * at all (--single-threaded-gc on node's command line) the p99 went from 5.4 ms to 4.3-4.4 ms
 * (1.62x the official driver's against 1.21-1.48x, stats-only runs of five rounds); with this
 * flag, the full run of 2026-12-06 08:19 measured 1.51x.
 *
 * Not --single-threaded-gc itself: V8 applies what it implies only as it starts, so set here it
 * changed nothing (this list held it until 2026-12-06), and on node's command line it would apply
 * to controllers too, where it raised the peak of 500 CreateVolume calls from 79-80 to 90 MiB.
 * --no-parallel-scavenge is read at each collection: set at run time it takes effect
 * (test/unit/v8-flags.test.ts checks both). Concurrent marking stays: it runs for the few full
 * collections only, and turning it off at run time made V8 fail a check at exit.
 */
const NODE = { launch: ["--no-parallel-scavenge"], afterStartup: [] as string[] };

/** Every mode's flags: a mode added to config.ts's Mode must be given its own here. */
const FLAGS: Record<Mode, { launch: string[]; afterStartup: string[] }> = {
  controller: CONTROLLER,
  node: NODE,
  all: NODE,
};

/**
 * The flags to set before the driver's code loads. V8's compiled code is cached per set of flags
 * (the image keeps one cache per mode, src/fill-compile-cache.ts): flags changed after a
 * module loaded would make V8 reject the code cached for every module loaded after them.
 */
export function launchFlagsFor(mode: Mode): string[] {
  return [...FLAGS[mode].launch];
}

/** launchFlagsFor of every mode, as scripts/build.ts writes them into main.js. */
export function launchFlagsByMode(): Record<Mode, string[]> {
  const modes = Object.keys(FLAGS) as Mode[];
  return Object.fromEntries(modes.map((mode) => [mode, launchFlagsFor(mode)])) as Record<Mode, string[]>;
}

/** Every V8 flag a plugin of this mode sets itself, for its start-up log line (after node's own flags). */
export function v8FlagsFor(mode: Mode): string[] {
  const f = FLAGS[mode];
  return [...f.launch, ...f.afterStartup];
}

export function applyLaunchFlags(mode: Mode): void {
  for (const flag of launchFlagsFor(mode)) setFlagsFromString(flag);
}

/** Once start-up is over (src/cli.ts, which only src/main.ts loads, after the launch flags). */
export function applyV8FlagsAfterStartup(mode: Mode): void {
  for (const flag of FLAGS[mode].afterStartup) setFlagsFromString(flag);
}
