import { describe, expect, it } from "vitest";
import { mannWhitneyU, pLarger } from "../../bench/rank-test.ts";

// The benchmark's verdict past a ratio target rests on this test (bench/run.ts, ratioVerdict).
describe("the benchmark's rank test", () => {
  it("counts the pairs in which the first group is larger, a tie as one half", () => {
    expect(mannWhitneyU([3, 5], [1, 4])).toBe(3);
    expect(mannWhitneyU([2], [2])).toBe(0.5);
  });

  it("finds rounds that are all larger: the one split of 48,620 that puts them apart", () => {
    const ours = [221, 222, 224, 225, 226, 228, 229, 230, 232];
    const official = [205, 206, 207, 208, 209, 210, 211, 212, 213];
    expect(pLarger(ours, official)).toBeCloseTo(1 / 48_620, 10);
    // Asked the other way round, nothing is larger.
    expect(pLarger(official, ours)).toBe(1);
  });

  it("finds no difference in interleaved rounds, nor in equal ones", () => {
    const a = [216, 219, 223, 225, 229, 233, 240, 251, 262];
    const b = [214, 218, 221, 224, 228, 235, 238, 249, 266];
    const p = pLarger(a, b);
    expect(p).toBeGreaterThan(0.3);
    expect(p).toBeLessThan(0.7);
    expect(pLarger([5, 5, 5], [5, 5, 5])).toBe(1);
  });

  it("calls a clear shift significant even with five rounds a side", () => {
    // 221-232 against 209-211 ms: the 100 deletes of the run of 2026-12-06 10:37, which missed.
    expect(pLarger([221, 226, 232, 233, 240], [209, 210, 211, 211, 215])).toBeLessThan(0.01);
  });

  it("samples beyond nine rounds a side, repeatably, close to the exact value", () => {
    const shifted = (v: number[], by: number) => v.map((x) => x + by);
    const base = [10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27];
    const p = pLarger(shifted(base, 3), base);
    expect(pLarger(shifted(base, 3), base)).toBe(p);
    // Counted over all 2,704,156 splits (once, by a script), the exact p of this 3-unit shift is 0.1076.
    expect(Math.abs(p - 0.1076)).toBeLessThan(0.01);
    expect(pLarger(shifted(base, 20), base)).toBeLessThan(0.001);
  });
});
