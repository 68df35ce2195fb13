/**
 * The README's reference tables are generated from the code they describe (flags, StorageClass
 * parameters, EBS limits), so that docs and code cannot drift apart:
 *   node scripts/docs.ts          rewrites the generated sections of README.md
 *   node scripts/docs.ts --check  exits 1 when README.md is out of date (a unit test runs this too)
 */
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { FLAGS } from "../src/config.ts";
import { renderLimitsMarkdown } from "../src/ebs/limits.ts";
import {
  renderCreateParametersMarkdown,
  renderGroupSnapshotParametersMarkdown,
  renderModifyParametersMarkdown,
  renderSnapshotParametersMarkdown,
} from "../src/ebs/params.ts";
import { PARAMETERS as EFS_PARAMETERS } from "../src/efs/params.ts";

export const README = fileURLToPath(new URL("../README.md", import.meta.url));

const cell = (text: string) => text.replace(/\|/g, "\\|");

function flagsTable(): string {
  const rows = Object.entries(FLAGS).map(([name, f]) => {
    const value = f.type === "string" ? " VALUE" : "";
    return `| \`--${name}${value}\` | ${f.env ? `\`${f.env}\`` : ""} | ${f.default !== undefined && f.default !== "" ? `\`${f.default}\`` : ""} | ${cell(f.help)} |`;
  });
  return ["| flag | environment | default | what it does |", "|---|---|---|---|", ...rows].join("\n");
}

function efsParametersTable(): string {
  const rows = Object.entries(EFS_PARAMETERS).map(
    ([key, p]) =>
      `| \`${key}\` | ${p.default !== undefined ? `\`${cell(p.default)}\`` : ""} | ${cell(p.help)} |`,
  );
  return ["| parameter | default | meaning |", "|---|---|---|", ...rows].join("\n");
}

export const SECTIONS: Record<string, () => string> = {
  flags: flagsTable,
  "ebs-parameters": renderCreateParametersMarkdown,
  "ebs-modify-parameters": renderModifyParametersMarkdown,
  "ebs-snapshot-parameters": renderSnapshotParametersMarkdown,
  "ebs-group-snapshot-parameters": renderGroupSnapshotParametersMarkdown,
  "ebs-limits": renderLimitsMarkdown,
  "efs-parameters": efsParametersTable,
};

/** README text with every generated section replaced by what the code says now. */
export function renderReadme(text: string): string {
  let out = text;
  for (const [name, render] of Object.entries(SECTIONS)) {
    const pattern = new RegExp(`(<!-- BEGIN ${name} -->\\n)[\\s\\S]*?(<!-- END ${name} -->)`);
    if (!pattern.test(out)) throw new Error(`README.md has no generated section "${name}"`);
    out = out.replace(pattern, (_, begin: string, end: string) => `${begin}${render().trim()}\n${end}`);
  }
  return out;
}

if (import.meta.main) {
  const current = readFileSync(README, "utf8");
  const wanted = renderReadme(current);
  if (process.argv.includes("--check")) {
    if (current !== wanted) {
      console.error("README.md is out of date: run node scripts/docs.ts");
      process.exit(1);
    }
  } else if (current !== wanted) {
    writeFileSync(README, wanted);
    console.log("README.md updated");
  }
}
