/**
 * The official EBS CSI driver, built from the Go module proxy as its Makefile builds it, for the
 * benchmarks to run beside this driver. Built once into .cache/ (a warm machine reuses it).
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT } from "../test/harness/driver-process.ts";

export const OFFICIAL_VERSION = "v1.44.0";
const MODULE = "github.com/kubernetes-sigs/aws-ebs-csi-driver";
/** A cold build (all modules from the proxy) takes about 3 minutes on a quiet machine. */
const BUILD_TIME_GUARD_MS = 30 * 60_000;

const GOBIN = path.join(REPO_ROOT, ".cache", `aws-ebs-csi-driver-${OFFICIAL_VERSION}`);
/** Where it is built: `go install <module>/cmd@<version>` names the binary after its directory. */
export const OFFICIAL_BINARY = path.join(GOBIN, "cmd");

export type OfficialDriver = { binary: string; version: string } | { skipped: string };

/** The binary, built if it is not there yet; or why it cannot be had here. */
export async function officialDriver(): Promise<OfficialDriver> {
  const binary = OFFICIAL_BINARY;
  if (existsSync(binary)) return { binary, version: OFFICIAL_VERSION };
  mkdirSync(GOBIN, { recursive: true });
  // The Makefile's LDFLAGS: the version in both packages that report it, symbols stripped.
  const ldflags = [
    `-X ${MODULE}/pkg/driver.driverVersion=${OFFICIAL_VERSION}`,
    `-X ${MODULE}/pkg/cloud.driverVersion=${OFFICIAL_VERSION}`,
    "-s",
    "-w",
  ].join(" ");
  const started = performance.now();
  console.log(
    `Building the official EBS driver ${OFFICIAL_VERSION} from the Go module proxy (go install)...`,
  );
  try {
    await new Promise<void>((resolve, reject) =>
      execFile(
        "go",
        ["install", "-ldflags", ldflags, `${MODULE}/cmd@${OFFICIAL_VERSION}`],
        {
          env: { ...process.env, CGO_ENABLED: "0", GOBIN },
          timeout: BUILD_TIME_GUARD_MS,
          maxBuffer: 16 * 1024 * 1024,
        },
        (err, _stdout, stderr) => {
          if (!err) return resolve();
          const why = err.killed
            ? `not built within ${BUILD_TIME_GUARD_MS / 60_000} minutes (time guard)`
            : stderr.trim().split("\n").slice(-3).join(" / ") || err.message;
          reject(new Error(why));
        },
      ),
    );
  } catch (err) {
    return { skipped: `the official driver could not be built: ${(err as Error).message}` };
  }
  console.log(`  built in ${((performance.now() - started) / 1000).toFixed(0)} s: ${binary}\n`);
  return { binary, version: OFFICIAL_VERSION };
}

// `node bench/official.ts` builds it (scripts/e2e-build.sh does, for the migration scenario).
if (import.meta.main) {
  const built = await officialDriver();
  if ("skipped" in built) {
    console.error(built.skipped);
    process.exit(1);
  }
  console.log(`official EBS driver ${built.version}: ${built.binary}`);
}
