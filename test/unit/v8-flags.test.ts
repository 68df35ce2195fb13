// A controller-only plugin runs without V8's optimizing compilers (src/v8-flags.ts): the flags are
// set at run time, after V8 started (by src/main.ts before the driver loads; --optimize-for-size
// once start-up is over), so this checks in a real process that they still take effect (a Node.js that
// froze V8's flags would silently bring the controller's memory back up), and so does the node
// plugin's young-generation collection on the main thread.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { modeOfCommandLine } from "../../src/launch-mode.ts";
import { launchFlagsFor, v8FlagsFor } from "../../src/v8-flags.ts";

const dir = mkdtempSync(join(tmpdir(), "v8-flags-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** V8's %GetOptimizationStatus bit for "optimized code" (Maglev or TurboFan). */
const OPTIMIZED = 1 << 4;

/** Whether a hot function got optimized in a process that applied the flags of `mode` first. */
function hotFunctionOptimized(mode: string): boolean {
  const script = join(dir, "hot.mjs");
  writeFileSync(
    script,
    `const { applyLaunchFlags } = await import(${JSON.stringify(pathToFileURL(join(import.meta.dirname, "../../src/v8-flags.ts")).href)});
applyLaunchFlags(process.argv[2]);
const status = new Function("f", "return %GetOptimizationStatus(f)");
function hot(x) { return (x * 2 + 1) % 7; }
let sum = 0;
for (let round = 0; round < 20; round++) {
  for (let i = 0; i < 200000; i++) sum += hot(i);
  await new Promise((r) => setTimeout(r, 5));
}
process.stdout.write(String(status(hot)));
`,
  );
  const run = spawnSync(process.execPath, ["--allow-natives-syntax", script, mode], { encoding: "utf8" });
  expect(run.stderr).toBe("");
  return (Number(run.stdout) & OPTIMIZED) !== 0;
}

/**
 * The young-generation collections of a process that allocates for half a second (node's
 * --trace-gc-nvp), and how many of them V8's helper threads worked on: the script sets
 * `runtimeFlags` first, as src/main.ts sets the launch flags.
 */
function scavenges(runtimeFlags: string[]): { all: number; parallel: number } {
  const script = join(dir, "allocate.mjs");
  writeFileSync(
    script,
    `import { setFlagsFromString } from "node:v8";
for (const flag of process.argv.slice(2)) setFlagsFromString(flag);
const live = [];
const until = performance.now() + 500;
while (performance.now() < until) {
  live.push(Array.from({ length: 1000 }, (_, i) => ({ i, s: "x" + i })));
  if (live.length > 50) live.shift();
}
`,
  );
  const run = spawnSync(process.execPath, ["--trace-gc-nvp", script, ...runtimeFlags], {
    encoding: "utf8",
    // The image's NODE_OPTIONS (a 4 MiB young generation) would make the collections small enough
    // for V8 to keep them on one thread anyway.
    env: { ...process.env, NODE_OPTIONS: "" },
  });
  expect(run.status, run.stderr).toBe(0);
  const lines = run.stdout.split("\n").filter((l) => l.includes(" gc=s "));
  const parallel = lines.filter((l) => {
    const ms = /background\.scavenge\.parallel=([\d.]+)/.exec(l);
    return ms !== null && Number(ms[1]) > 0;
  });
  return { all: lines.length, parallel: parallel.length };
}

describe("V8 flags by mode", () => {
  it("a controller runs without optimizing compilers; node and all keep them", () => {
    expect(v8FlagsFor("controller")).toEqual(
      expect.arrayContaining(["--no-opt", "--no-maglev", "--optimize-for-size"]),
    );
    expect(v8FlagsFor("node")).toEqual(["--no-parallel-scavenge"]);
    expect(v8FlagsFor("all")).toEqual(["--no-parallel-scavenge"]);
    // The compilers are off from the launch; sizing the heap for memory waits for start-up's end.
    expect(launchFlagsFor("controller")).toEqual(expect.arrayContaining(["--no-opt", "--no-maglev"]));
    expect(launchFlagsFor("controller")).not.toContain("--optimize-for-size");
  });

  it("the launcher reads the mode as config.ts does, and a command line it cannot read as all", () => {
    expect(modeOfCommandLine(["--driver", "ebs", "--mode", "controller"])).toBe("controller");
    expect(modeOfCommandLine(["--mode=node", "--driver=efs"])).toBe("node");
    expect(modeOfCommandLine(["--mode=node", "--mode", "controller"])).toBe("controller");
    expect(modeOfCommandLine(["--driver", "ebs"])).toBe("all");
    expect(modeOfCommandLine(["--mode"])).toBe("all");
    expect(modeOfCommandLine(["--mode", "bogus"])).toBe("all");
  });

  it("set at run time, the flags take effect: a hot function stays unoptimized in a controller only", () => {
    expect(hotFunctionOptimized("node")).toBe(true);
    expect(hotFunctionOptimized("controller")).toBe(false);
  });

  it("set at run time, a node plugin's flags keep young-generation collections on the main thread; a controller's leave them parallel", () => {
    for (const mode of ["node", "all"] as const) {
      const node = scavenges(launchFlagsFor(mode));
      expect(node.all).toBeGreaterThan(20);
      expect(node.parallel, mode).toBe(0);
    }
    const controller = scavenges(launchFlagsFor("controller"));
    expect(controller.all).toBeGreaterThan(20);
    expect(controller.parallel).toBeGreaterThan(0);
    // Why the launch flags name the scavenger's flag: --single-threaded-gc set at run time does nothing.
    const runtime = scavenges(["--single-threaded-gc"]);
    expect(runtime.all).toBeGreaterThan(20);
    expect(runtime.parallel).toBeGreaterThan(0);
  });
});
