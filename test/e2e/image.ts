import { createHash } from "node:crypto";
import { mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "../../src/host/exec.ts";

/** The one image the e2e cluster runs, for pods and as the pod sandbox ("pause"): busybox. */
export const TEST_IMAGE = "e2e.local/busybox:1";

const BUSYBOX = "/bin/busybox";

/**
 * There is no registry here: this builds an OCI image layout holding Debian's busybox-static (one
 * layer: /bin/busybox and a link per applet) and tars it for `ctr images import`. Its default
 * command sleeps, so it also serves as the pod sandbox image. Returns the tarball's path.
 */
export async function buildTestImage(dir: string): Promise<string> {
  const rootfs = join(dir, "rootfs");
  const layout = join(dir, "layout");
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await mkdir(join(rootfs, "tmp"), { recursive: true });
  await mkdir(join(layout, "blobs", "sha256"), { recursive: true });
  await run("cp", [BUSYBOX, join(rootfs, "bin", "busybox")]);
  const { stdout } = await run(BUSYBOX, ["--list"]);
  for (const applet of stdout.split("\n").filter((a) => a && a !== "busybox")) {
    await symlink("busybox", join(rootfs, "bin", applet));
  }
  const layerPath = join(dir, "layer.tar");
  await run("tar", [
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "-C",
    rootfs,
    "-cf",
    layerPath,
    ".",
  ]);
  const layer = await readFile(layerPath);

  const blob = async (data: Buffer | string) => {
    const bytes = typeof data === "string" ? Buffer.from(data) : data;
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    await writeFile(join(layout, "blobs", "sha256", digest.slice(7)), bytes);
    return { digest, size: bytes.length };
  };
  const layerBlob = await blob(layer);
  const config = await blob(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Env: ["PATH=/bin"], Cmd: ["/bin/sleep", "2147483647"], WorkingDir: "/" },
      rootfs: { type: "layers", diff_ids: [layerBlob.digest] },
    }),
  );
  const manifest = await blob(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layerBlob }],
    }),
  );
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(
    join(layout, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          ...manifest,
          annotations: {
            "io.containerd.image.name": TEST_IMAGE,
            "org.opencontainers.image.ref.name": TEST_IMAGE.split(":")[1],
          },
        },
      ],
    }),
  );
  const tarball = join(dir, "image.tar");
  await run("tar", ["-C", layout, "-cf", tarball, "oci-layout", "index.json", "blobs"]);
  return tarball;
}
