import { lowestFreeGid } from "../src/efs/gid.ts";

/**
 * Picking a GID for a new EFS access point, with n access points already on the file system.
 * Ours: one pass to build a set of used GIDs, one pass to find the lowest free one: O(n).
 * Baseline: the official driver's way, a scan of the access point list for every candidate GID:
 * O(n²) when the used GIDs are packed at the start of the range (what allocation produces).
 */
function quadraticLowestFree(start: number, end: number, used: number[]): number | undefined {
  for (let gid = start; gid <= end; gid++) if (!used.includes(gid)) return gid;
  return undefined;
}

function timeIt(work: () => void, rounds: number): number {
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const started = performance.now();
    work();
    samples.push(performance.now() - started);
  }
  return samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)]!;
}

export function benchGidAllocation(): void {
  console.log("EFS GID allocation: one CreateVolume's pick among n access points (median of 5).");
  console.log("Baseline: a list scan per candidate GID, as the official driver does (O(n²)).\n");
  const header = ["access points", "baseline ms", "ours ms", "ours/baseline"];
  const rows = [header];
  for (const n of [100, 1_000, 5_000, 10_000]) {
    const used = Array.from({ length: n }, (_, i) => 50_000 + i);
    const range = { start: 50_000, end: 50_000 + n + 10 };
    let a: number | undefined;
    let b: number | undefined;
    const baseline = timeIt(() => {
      a = quadraticLowestFree(range.start, range.end, used);
    }, 5);
    const ours = timeIt(() => {
      b = lowestFreeGid(range, new Set(used));
    }, 5);
    if (a !== b) throw new Error(`the two allocators disagree: ${a} vs ${b}`);
    rows.push([String(n), baseline.toFixed(2), ours.toFixed(3), `${(ours / baseline).toFixed(4)}x`]);
  }
  const widths = header.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const [i, row] of rows.entries()) {
    console.log(row.map((cell, c) => cell.padStart(widths[c]!)).join("  "));
    if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  }
}
