/**
 * Whether one driver's rounds are larger than the other's by more than the noise: a one-sided
 * permutation test on the Mann-Whitney U statistic. The benchmark's verdict uses it for a ratio
 * target whose median ratio lands just past the line: two drivers that wait on the same serial
 * fake AWS (100 deletes, one DeleteVolume each) take the same time but for a round-to-round noise
 * of 5-10%, so the ratio of two medians falls on either side of 1 by chance. The test asks the
 * question the target asks: are this driver's rounds larger than the official driver's?
 */
import { mulberry32 } from "../test/fuzz/generate.ts";

/** U: the pairs (a, b) with a > b, a tie counting one half. */
export function mannWhitneyU(a: readonly number[], b: readonly number[]): number {
  let u = 0;
  for (const x of a) for (const y of b) u += x > y ? 1 : x === y ? 0.5 : 0;
  return u;
}

/** Splits counted exactly up to this many (C(18, 9) = 48,620: nine rounds a driver); beyond, sampled. */
const EXACT_LIMIT = 200_000;
const SAMPLES = 50_000;

function binomial(n: number, k: number): number {
  let c = 1;
  for (let i = 1; i <= k; i++) c = (c * (n - k + i)) / i;
  return c;
}

/**
 * The one-sided p-value that `a` is larger than `b`: the share of all ways to split the pooled
 * values into groups of their sizes whose U is at least the observed one. Small when `a` is
 * larger in most pairs; about 0.5 or more when the two are alike. Exact (every split counted) up
 * to EXACT_LIMIT splits, ten values a side; beyond, estimated from SAMPLES random splits, counting
 * the observed one too so that it is never 0.
 */
export function pLarger(a: readonly number[], b: readonly number[]): number {
  if (a.length === 0 || b.length === 0) return Number.NaN;
  const pooled = [...a, ...b];
  const observed = mannWhitneyU(a, b);
  const m = a.length;
  const splitU = (chosen: readonly number[]) => {
    const inA = new Set(chosen);
    const left: number[] = [];
    const right: number[] = [];
    for (const [i, v] of pooled.entries()) (inA.has(i) ? left : right).push(v);
    return mannWhitneyU(left, right);
  };
  if (binomial(pooled.length, m) <= EXACT_LIMIT) {
    let splits = 0;
    let atLeast = 0;
    const chosen: number[] = [];
    const visit = (from: number) => {
      if (chosen.length === m) {
        splits++;
        if (splitU(chosen) >= observed) atLeast++;
        return;
      }
      for (let i = from; i <= pooled.length - (m - chosen.length); i++) {
        chosen.push(i);
        visit(i + 1);
        chosen.pop();
      }
    };
    visit(0);
    return atLeast / splits;
  }
  // Seeded: the sampled p-value is the same from run to run.
  const random = mulberry32(pooled.length * 7919 + m);
  const indices = pooled.map((_, i) => i);
  let atLeast = 0;
  for (let sample = 0; sample < SAMPLES; sample++) {
    for (let i = indices.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [indices[i], indices[j]] = [indices[j]!, indices[i]!];
    }
    if (splitU(indices.slice(0, m)) >= observed) atLeast++;
  }
  return (atLeast + 1) / (SAMPLES + 1);
}

/** The smallest p-value pLarger can give for groups of these sizes: the one split in all. */
export const smallestP = (m: number, n: number) => 1 / Math.min(binomial(m + n, m), SAMPLES + 1);

/** The one-sided p-value below which rounds show a driver past a ratio target. */
export const SIGNIFICANCE = 0.05;

export interface RatioTarget {
  max?: number | undefined;
  min?: number | undefined;
}

/**
 * The benchmark's verdict on a ratio target (bench/run.ts): "met" when the ratio of the medians
 * (ours / official) is on the target's side. Past it, the rounds decide: divided by the target,
 * are this driver's rounds larger (an at-most target) or smaller (an at-least target) than the
 * official driver's beyond chance? If so, MISSED; if not, the medians crossed the line by noise
 * and the verdict says so with the p-value. Too few rounds to show anything at SIGNIFICANCE
 * (three a side: no split is rarer than 1 in 20), and a ratio that is not a number, are MISSED.
 */
export function ratioVerdict(ours: number[], official: number[], ratio: number, t: RatioTarget): string {
  const { max, min } = t;
  if (!Number.isFinite(ratio)) return "MISSED (no ratio)";
  const scaled = (by: number) => ours.map((v) => v / by);
  const overMax = max !== undefined && ratio > max;
  const underMin = min !== undefined && ratio < min;
  if (!overMax && !underMin) return "met";
  if (smallestP(ours.length, official.length) >= SIGNIFICANCE) return "MISSED (too few rounds to test)";
  const p = overMax ? pLarger(scaled(max), official) : pLarger(official, scaled(min as number));
  return p < SIGNIFICANCE ? `MISSED (p ${p.toFixed(3)})` : `met within noise (p ${p.toFixed(2)})`;
}
