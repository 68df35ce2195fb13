// The driver's image, built from the repository's Dockerfile as shipped (npm run images driver, on
// a Node base made here: test/containers/images.ts), checked as a user and a node would meet it:
// who it runs as, that it answers, what it carries and what it must not, its size, and the host
// tools the node plugin runs, at the names the code runs them by.
import { describe, expect, it } from "vitest";
import { FS_TYPES } from "../../src/host/blockdev.ts";
import { REPO_ROOT } from "../harness/driver-process.ts";
import { DRIVER_IMAGE } from "./images.ts";
import { podman, podmanMissing } from "./podman.ts";

/** The image's size budget: this build measured 321 MiB (Debian trixie slim 210 MiB with Node 24, the node tools). */
const SIZE_BUDGET_MIB = 360;

const skip = await podmanMissing();
if (skip) console.log(`image tests skipped: ${skip}`);

const { version } = (await import(`${REPO_ROOT}/package.json`, { with: { type: "json" } })).default as {
  version: string;
};

/** Runs the image (its own user unless `user`), removed afterwards; resolves with its output. */
function runImage(args: string[], options: { entrypoint?: string; user?: string } = {}): Promise<string> {
  const flags = ["run", "--rm", "--network", "none"];
  if (options.entrypoint) flags.push("--entrypoint", options.entrypoint);
  if (options.user) flags.push("--user", options.user);
  return podman([...flags, DRIVER_IMAGE, ...args]);
}

describe.skipIf(skip)(`the driver's image ${DRIVER_IMAGE}`, () => {
  it("runs as UID 1000 by default, node on the bundle, and answers --version and --help", async () => {
    const config = JSON.parse(
      await podman(["image", "inspect", "--format", "{{json .Config}}", DRIVER_IMAGE]),
    ) as { User?: string; Entrypoint?: string[] };
    expect(config.User).toBe("1000:1000");
    expect(config.Entrypoint).toEqual(["node", "/app/dist/main.js"]);
    expect(await runImage(["--version"])).toBe(`aws-storage-csi ${version}\n`);
    const help = await runImage(["--help"]);
    expect(help).toMatch(/--driver VALUE/);
    expect(await runImage(["-c", "id -u; node --version"], { entrypoint: "sh" })).toMatch(/^1000\nv24\./);
  }, 180_000);

  it("has V8's compiled code for each mode and user, and a plugin of either mode uses it", async () => {
    // Node files the cache by user: root runs the node DaemonSet, 1000 the controller.
    for (const user of ["0", "1000"]) {
      for (const mode of ["node", "controller"]) {
        const log = await runImage(
          ["-c", `NODE_DEBUG_NATIVE=COMPILE_CACHE node /app/dist/main.js --mode ${mode} --version 2>&1`],
          { entrypoint: "sh", user },
        );
        expect(log).toContain(`aws-storage-csi ${version}`);
        expect(log, `${mode} as ${user}`).toMatch(
          /V8 code cache for ESM file:\/\/\/app\/dist\/cli\.js was accepted/,
        );
        expect(log, `${mode} as ${user}`).not.toMatch(/rejected|denied|cannot/i);
      }
    }
  }, 180_000);

  it("carries the bundle and its compile cache only: no sources, tests, source maps, node_modules, npm", async () => {
    const listing = await runImage(
      [
        "-c",
        [
          "ls -A /app",
          "echo ---",
          "find / -xdev \\( -name node_modules -o -name '*.map' -o -name '*.test.*' -o -name '*.ts' -o -name '*.proto' \\) -print 2>/dev/null",
          "echo ---",
          "command -v npm npx corepack || true",
        ].join("; "),
      ],
      { entrypoint: "sh" },
    );
    const [app = "", unwanted = "", npm = ""] = listing.split("---\n");
    expect(app.split("\n").filter(Boolean).sort()).toEqual(["compile-cache", "dist"]);
    expect(unwanted.split("\n").filter(Boolean)).toEqual([]);
    expect(npm.trim()).toBe("");
    const dist = await runImage(["-c", "ls /app/dist; echo ---; cat /app/dist/package.json"], {
      entrypoint: "sh",
    });
    const [files = "", packageJson = ""] = dist.split("---\n");
    // The bundle's chunks, the license notices of what it bundles, and the package.json that
    // tells Node the chunks are ES modules (else it parses each as CommonJS first).
    expect(
      files.split("\n").filter((file) => file && !/\.js$|\.js\.LEGAL\.txt$|^package\.json$/.test(file)),
    ).toEqual([]);
    expect(files).toMatch(/^main\.js$/m);
    // Which chunk carries the notices depends on how esbuild splits the bundle; one must.
    expect(files).toMatch(/\.js\.LEGAL\.txt$/m);
    expect(JSON.parse(packageJson)).toEqual({ type: "module" });
  }, 180_000);

  it(`is at most ${SIZE_BUDGET_MIB} MiB`, async () => {
    const bytes = Number(await podman(["image", "inspect", "--format", "{{.Size}}", DRIVER_IMAGE]));
    const mib = bytes / 2 ** 20;
    console.log(`${DRIVER_IMAGE}: ${mib.toFixed(1)} MiB (budget ${SIZE_BUDGET_MIB} MiB)`);
    expect(mib).toBeLessThanOrEqual(SIZE_BUDGET_MIB);
  });

  it("has the host tools the node plugin runs, on root's PATH as the privileged node container has it", async () => {
    const tools = [
      "mount",
      "umount",
      "losetup",
      "blockdev",
      "blkid",
      "stat",
      ...FS_TYPES.map((fsType) => `mkfs.${fsType}`),
      "resize2fs",
      "dumpe2fs",
      "xfs_growfs",
      "xfs_info",
      "mount.nfs4",
      "nvme",
    ];
    const found = await runImage(
      ["-c", tools.map((tool) => `command -v ${tool} || echo "missing ${tool}"`).join("; ")],
      {
        entrypoint: "sh",
        user: "0",
      },
    );
    expect(found.split("\n").filter((line) => line.startsWith("missing"))).toEqual([]);
  }, 180_000);
});
