/**
 * npm run sanity -- ebs|efs [more csi-sanity/ginkgo flags]
 *
 * Runs the real csi-sanity against the driver, served on a unix socket and talking to the fake
 * AWS (moto behind the fault proxy). EBS runs with --mode all: volumes attach to a fake instance
 * whose disks are loop devices, so the node specs format and mount real filesystems.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { REPO_ROOT } from "../test/harness/driver-process.ts";
import { startEbsEnv } from "../test/harness/ebs-env.ts";

export function csiSanityBinary(): string {
  const local = join(REPO_ROOT, ".cache/bin/csi-sanity");
  if (existsSync(local)) return local;
  const gopath = spawnSync("go", ["env", "GOPATH"], { encoding: "utf8" }).stdout?.trim();
  const fromGo = gopath ? join(gopath, "bin/csi-sanity") : "";
  if (fromGo && existsSync(fromGo)) return fromGo;
  throw new Error(
    "csi-sanity is not installed: run scripts/setup.sh (it runs `go install ...csi-sanity@v5.6.0`)",
  );
}

/** Runs csi-sanity, streaming its output; resolves with its exit code and the specs it skipped. */
export async function runCsiSanity(
  args: string[],
  junitPath: string,
): Promise<{ code: number; skipped: string[] }> {
  const child = spawn(csiSanityBinary(), [...args, `--ginkgo.junit-report=${junitPath}`], {
    stdio: "inherit",
  });
  const code = await new Promise<number>((resolve) => child.on("exit", (c) => resolve(c ?? 1)));
  const junit = await readFile(junitPath, "utf8").catch(() => "");
  const skipped = [...junit.matchAll(/<testcase name="([^"]*)"[^>]*status="skipped"/g)].map((m) =>
    (m[1] ?? "")
      .replace(/&#34;/g, '"')
      .replace(/&amp;/g, "&")
      .replace(/^\[It\] /, ""),
  );
  return { code, skipped };
}

/**
 * The filesystem of the test volumes. ext4 is the default in production, but growing a mounted
 * ext4 needs CAP_SYS_RESOURCE, which some sandboxes (this project's CI among them) take away even
 * from root; xfs grows online without it. SANITY_FSTYPE=ext4 runs the same suite on ext4.
 */
const SANITY_FSTYPE = process.env.SANITY_FSTYPE ?? "xfs";

async function runEbsSanity(extra: string[]): Promise<number> {
  const root = process.getuid?.() === 0;
  if (!root)
    console.log("not root: no loop devices, so the node specs cannot run; serving the controller only");
  const env = await startEbsEnv({ mode: root ? "all" : "controller" });
  try {
    const params = join(env.dir, "params.yaml");
    await writeFile(params, `csi.storage.k8s.io/fstype: ${SANITY_FSTYPE}\n`);
    console.log(
      `csi-sanity against the EBS driver (--mode ${root ? "all" : "controller"}, fstype ${SANITY_FSTYPE})`,
    );
    const { code, skipped } = await runCsiSanity(
      [
        `--csi.endpoint=unix://${env.socketPath}`,
        `--csi.mountdir=${join(env.dir, "mnt")}`,
        `--csi.stagingdir=${join(env.dir, "staging")}`,
        `--csi.testvolumeparameters=${params}`,
        "--csi.testnodevolumeattachlimit",
        ...extra,
      ],
      join(env.dir, "junit.xml"),
    );
    printSkipped(skipped);
    if (code !== 0)
      console.log(`driver log (last lines):\n${env.driver.stderr.split("\n").slice(-30).join("\n")}`);
    return code;
  } finally {
    await env.stop();
  }
}

export function printSkipped(skipped: string[]): void {
  console.log(`\nskipped specs (${skipped.length}):`);
  for (const name of skipped) console.log(`  - ${name}`);
}

async function main(): Promise<number> {
  const [driver, ...extra] = process.argv.slice(2);
  if (driver === "ebs") return runEbsSanity(extra);
  if (driver === "efs") {
    const { runEfsSanity } = await import("./sanity-efs.ts");
    return runEfsSanity(extra);
  }
  console.error("usage: npm run sanity -- ebs|efs [csi-sanity flags]");
  return 2;
}

if (import.meta.main) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}
