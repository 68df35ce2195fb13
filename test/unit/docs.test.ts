import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { README, renderReadme, SECTIONS } from "../../scripts/docs.ts";
import { FLAGS } from "../../src/config.ts";

describe("README", () => {
  const text = readFileSync(README, "utf8");

  it("has its generated reference sections up to date with the code (node scripts/docs.ts)", () => {
    expect(renderReadme(text)).toBe(text);
  });

  it("documents every flag of the binary", () => {
    for (const name of Object.keys(FLAGS)) expect(text).toContain(`\`--${name}`);
  });

  it("starts with the two commands: the demo and the tests", () => {
    const firstBlock = /```(?:sh|bash)?\n([\s\S]*?)```/.exec(text)?.[1] ?? "";
    expect(firstBlock).toContain("make demo");
    expect(firstBlock).toContain("make test");
    expect(Object.keys(SECTIONS).length).toBeGreaterThan(3);
  });
});
