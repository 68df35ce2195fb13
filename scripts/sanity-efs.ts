/**
 * csi-sanity against the EFS driver, controller and node (--mode all), on one machine, as the
 * project's image runs it: without amazon-efs-utils, every volume mounted with TLS through the
 * driver's own relay. The fake AWS has one file system; a fake IMDS serves the node; the machine has
 * no NFS client, so the test-only mount.nfs4 and TLS stand-ins for the mount targets (on their
 * addresses, put on lo) are the edge (test/harness/efs-tls-target.ts). The driver runs its
 * production `mount -t nfs4 ... 127.0.0.1:/path` commands, and deletes access points' root
 * directories (--delete-access-point-root-dir), so DeleteVolume mounts the file system too. Needs
 * root for the node specs; without it only the controller is served.
 */
import { spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startEfsEnv } from "../test/harness/efs-mount-helper.ts";
import { csiSanityBinary } from "./sanity.ts";

export async function runEfsSanity(extraArgs: string[]): Promise<number> {
  const root = process.getuid?.() === 0;
  if (!root)
    console.log(
      "not root: the node specs need mounts (and /sbin/mount.nfs4, addresses on lo): serving the EFS controller only",
    );
  const mode = root ? "all" : "controller";
  const env = await startEfsEnv({
    mode,
    mountHelper: false,
    tls: root,
    extraArgs: root ? ["--delete-access-point-root-dir"] : [],
  });
  try {
    const params = join(env.dir, "params.yaml");
    await writeFile(
      params,
      ["provisioningMode: efs-ap", `fileSystemId: ${env.fileSystemId}`, 'directoryPerms: "700"', ""].join(
        "\n",
      ),
    );
    console.log(
      `csi-sanity against the EFS driver (--mode ${mode}, file system ${env.fileSystemId}${root ? ", TLS through the driver's relay" : ""})`,
    );
    const junit = join(env.dir, "junit.xml");
    const { code, summary } = await runStreaming(csiSanityBinary(), [
      `--csi.endpoint=unix://${env.socketPath}`,
      `--csi.mountdir=${join(env.dir, "mnt")}`,
      `--csi.stagingdir=${join(env.dir, "staging")}`,
      `--csi.testvolumeparameters=${params}`,
      `--ginkgo.junit-report=${junit}`,
      ...extraArgs,
    ]);
    const skipped = await skippedSpecs(junit);
    console.log(`\nskipped specs (${skipped.length}):`);
    for (const name of skipped) console.log(`  - ${name}`);
    if (code !== 0) {
      console.log(`\ndriver log (last lines):\n${env.driver.stderr.split("\n").slice(-30).join("\n")}`);
    }
    console.log(`\nEFS csi-sanity: ${summary ?? `no summary line (exit ${code})`}`);
    return code;
  } finally {
    await env.stop();
  }
}

const ESC = String.fromCharCode(27);

/** Runs a command with its output streamed through; resolves with its exit code and ginkgo's summary line. */
function runStreaming(cmd: string, args: string[]): Promise<{ code: number; summary: string | undefined }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
    let summary: string | undefined;
    let partial = "";
    child.stdout.on("data", (chunk: Buffer) => {
      process.stdout.write(chunk);
      const lines = (partial + chunk.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        // Like "SUCCESS! -- 40 Passed | 0 Failed | 0 Pending | 55 Skipped", colours stripped.
        const plain = line
          .split(ESC)
          .join("")
          .replace(/\[[0-9;]*m/g, "")
          .trim();
        if (/\d+ Passed \| \d+ Failed/.test(plain)) summary = plain;
      }
    });
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code: code ?? 1, summary }));
  });
}

async function skippedSpecs(junitPath: string): Promise<string[]> {
  const junit = await readFile(junitPath, "utf8").catch(() => "");
  return [...junit.matchAll(/<testcase name="([^"]*)"[^>]*status="skipped"/g)].map((m) =>
    (m[1] ?? "")
      .replace(/&#34;/g, '"')
      .replace(/&amp;/g, "&")
      .replace(/^\[It\] /, ""),
  );
}
