#!/usr/bin/env node
/**
 * The entry point. Sets the V8 flags of the plugin's mode before any of the driver's code loads,
 * then turns on V8's compile cache when CSI_COMPILE_CACHE names one (the image fills one per mode
 * at build time, src/fill-compile-cache.ts; Node files each set of flags apart), then runs the
 * command line (src/cli.ts). NODE_COMPILE_CACHE would turn the cache on before the flags are set:
 * V8 would then reject the code cached under the controller's flags.
 *
 * In the bundle, main.js imports nothing of the driver before the flags are set (the flags are
 * written into it at build time): loading a module graph first cost an idle controller about 2 MiB
 * of the node binary's pages (43.5 MiB of it resident against 45.4).
 */
import { enableCompileCache } from "node:module";
import { setFlagsFromString } from "node:v8";
import type { Mode } from "./config.ts";
import { modeOfCommandLine } from "./launch-mode.ts";

/** src/v8-flags.ts's launch flags of each mode as JSON, written by scripts/build.ts; undefined in the sources. */
declare const BUILD_LAUNCH_FLAGS: string | undefined;

const argv = process.argv.slice(2);
const mode = modeOfCommandLine(argv);
const launchFlags: string[] =
  typeof BUILD_LAUNCH_FLAGS === "string"
    ? (JSON.parse(BUILD_LAUNCH_FLAGS) as Record<Mode, string[]>)[mode]
    : (await import("./v8-flags.ts")).launchFlagsFor(mode);
for (const flag of launchFlags) setFlagsFromString(flag);
if (process.env.CSI_COMPILE_CACHE) enableCompileCache(process.env.CSI_COMPILE_CACHE);
const { run } = await import("./cli.ts");
run(argv);
