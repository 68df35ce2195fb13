/**
 * node dist/fill-compile-cache.js node|controller: compiles every module of the bundle into the
 * compile cache named by CSI_COMPILE_CACHE, under the V8 flags a plugin of that mode launches with
 * (src/main.ts), so that no plugin compiles them at start-up. The image runs it for both modes at
 * build time (its root filesystem is read-only at run time: the cache is only read); a plugin of
 * both modes ("all") has the node plugin's flags. The chunks are imported, not run: the entry
 * points, which act when loaded, are left out.
 */
import { readdirSync } from "node:fs";
import { constants, enableCompileCache, flushCompileCache } from "node:module";
import { applyLaunchFlags } from "./v8-flags.ts";

const ENTRY_POINTS = new Set([
  "main.js",
  "fill-compile-cache.js",
  "describe-instance-type.js",
  "usage-walk-child.js",
]);

function fail(message: string): never {
  process.stderr.write(`fill-compile-cache: ${message}\n`);
  process.exit(2);
}

const mode = process.argv[2];
if (mode !== "node" && mode !== "controller")
  fail(`the mode must be node or controller, not "${mode ?? ""}"`);
const dir = process.env.CSI_COMPILE_CACHE;
if (!dir) fail("CSI_COMPILE_CACHE must name the cache directory");

applyLaunchFlags(mode);
const enabled = enableCompileCache(dir);
if (enabled.status === constants.compileCacheStatus.FAILED) fail(`cannot use ${dir}: ${enabled.message}`);
const here = new URL(".", import.meta.url);
const chunks = readdirSync(here)
  .filter((f) => f.endsWith(".js") && !ENTRY_POINTS.has(f))
  .sort();
for (const chunk of chunks) await import(new URL(chunk, here).href);
flushCompileCache();
process.stdout.write(`compile cache for ${mode} plugins: ${chunks.length} modules in ${enabled.directory}\n`);
