// A controller-only plugin runs without V8's optimizing compilers (src/v8-flags.ts): the flags are
// set at run time, after V8 started (by src/main.ts before the driver loads; --optimize-for-size
// once start-up is over), so this checks in a real process that they still take effect (a Node.js that
// froze V8's flags would silently bring the controller's memory back up).
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

describe("V8 flags by mode", () => {
  it("a controller runs without optimizing compilers; node and all keep them, with garbage collected on one thread", () => {
    expect(v8FlagsFor("controller")).toEqual(
      expect.arrayContaining(["--no-opt", "--no-maglev", "--optimize-for-size"]),
    );
    expect(v8FlagsFor("node")).toEqual(["--single-threaded-gc"]);
    expect(v8FlagsFor("all")).toEqual(["--single-threaded-gc"]);
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
});
