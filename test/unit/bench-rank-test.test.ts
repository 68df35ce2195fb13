import { describe, expect, it } from "vitest";
import { mannWhitneyU, pLarger, ratioVerdict, smallestP } from "../../bench/rank-test.ts";

// The benchmark's verdict on a ratio target past its line (bench/run.ts prints ratioVerdict).
describe("the benchmark's rank test", () => {
  it("counts the pairs in which the first group is larger, a tie as one half", () => {
    expect(mannWhitneyU([3, 5], [1, 4])).toBe(3);
    expect(mannWhitneyU([2], [2])).toBe(0.5);
  });

  it("finds rounds that are all larger: the one split of 48,620 that puts them apart", () => {
    const ours = [221, 222, 224, 225, 226, 228, 229, 230, 232];
    const official = [205, 206, 207, 208, 209, 210, 211, 212, 213];
    expect(pLarger(ours, official)).toBeCloseTo(1 / 48_620, 10);
    expect(smallestP(9, 9)).toBeCloseTo(1 / 48_620, 10);
    // Asked the other way round, nothing is larger.
    expect(pLarger(official, ours)).toBe(1);
  });

  it("counts ties as halves in every split, not only in the observed one", () => {
    // 1, 2, 2', 3 split two against two, U of the first pair, by hand: {1,2} 0.5, {1,2'} 0.5,
    // {1,3} 2, {2,2'} 2, {2,3} 3.5, {2',3} 3.5. The observed {2,3} has 3.5: 2 splits of 6.
    expect(mannWhitneyU([2, 3], [1, 2])).toBe(3.5);
    expect(pLarger([2, 3], [1, 2])).toBeCloseTo(2 / 6, 12);
  });

  it("finds no difference in interleaved rounds", () => {
    const a = [216, 219, 223, 225, 229, 233, 240, 251, 262];
    const b = [214, 218, 221, 224, 228, 235, 238, 249, 266];
    const p = pLarger(a, b);
    expect(p).toBeGreaterThan(0.3);
    expect(p).toBeLessThan(0.7);
  });

  it("calls a clear shift significant even with five rounds a side", () => {
    expect(pLarger([221, 226, 232, 233, 240], [209, 210, 211, 211, 215])).toBeLessThan(0.01);
  });

  it("samples beyond 200,000 splits, repeatably, close to the exact value", () => {
    const shifted = (v: number[], by: number) => v.map((x) => x + by);
    const base = [10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27];
    const p = pLarger(shifted(base, 3), base);
    expect(pLarger(shifted(base, 3), base)).toBe(p);
    // Counted over all 2,704,156 splits (once, by a script), the exact p of this 3-unit shift is 0.1076.
    expect(Math.abs(p - 0.1076)).toBeLessThan(0.01);
    // A shift no split matches: the sampled p is 1 in 50,001, never 0.
    expect(pLarger(shifted(base, 20), base)).toBeCloseTo(1 / 50_001, 10);
  });
});

describe("the benchmark's verdict on a ratio target", () => {
  const alike = [216, 219, 223, 225, 229, 233, 240, 251, 262];
  const official = [214, 218, 221, 224, 228, 235, 238, 249, 266];

  it("meets a target the ratio of the medians is on the side of, without a test", () => {
    expect(ratioVerdict(alike, official, 0.99, { max: 1 })).toBe("met");
    expect(ratioVerdict(alike, official, 0.6, { min: 0.5 })).toBe("met");
  });

  it("reads rounds alike past an at-most line as noise, and rounds all larger as MISSED", () => {
    expect(ratioVerdict(alike, official, 1.01, { max: 1 })).toMatch(/^met within noise \(p 0\.\d\d\)$/);
    const slower = alike.map((v) => v + 60);
    expect(ratioVerdict(slower, official, 1.27, { max: 1 })).toMatch(/^MISSED \(p 0\.00\d\)$/);
  });

  it("divides by the target: 1.5 times the official driver's memory is at a 1.5x line, not past it", () => {
    const memory = official.map((v) => v * 1.5 + (v % 3) - 1);
    expect(ratioVerdict(memory, official, 1.501, { max: 1.5 })).toMatch(/^met within noise/);
    expect(ratioVerdict(memory, official, 1.501, { max: 1.2 })).toMatch(/^MISSED \(p/);
  });

  it("tests an at-least target the other way round", () => {
    const half = official.map((v) => v * 0.5);
    expect(ratioVerdict(half, official, 0.499, { min: 0.5 })).toMatch(/^met within noise/);
    expect(ratioVerdict(half, official, 0.499, { min: 0.8 })).toMatch(/^MISSED \(p/);
    // Throughput above the line is never a miss, however the rounds fall.
    expect(ratioVerdict(official, half, 2, { min: 0.5 })).toBe("met");
  });

  it("misses a ratio that is not a number, and a line crossed with too few rounds to test", () => {
    expect(ratioVerdict(alike, official, Number.NaN, { max: 1 })).toBe("MISSED (no ratio)");
    expect(smallestP(3, 3)).toBeCloseTo(0.05, 12);
    expect(ratioVerdict([300, 310, 320], [200, 210, 220], 1.48, { max: 1 })).toBe(
      "MISSED (too few rounds to test)",
    );
  });
});
