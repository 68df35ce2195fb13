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
  await rm(dir, { recursive: true, force: true });
  await mkdir(join(rootfs, "bin"), { recursive: true });
  await mkdir(join(rootfs, "tmp"), { recursive: true });
  await run("cp", [BUSYBOX, join(rootfs, "bin", "busybox")]);
  const { stdout } = await run(BUSYBOX, ["--list"]);
  for (const applet of stdout.split("\n").filter((a) => a && a !== "busybox")) {
    await symlink("busybox", join(rootfs, "bin", applet));
  }
  return ociArchive(dir, [
    {
      name: TEST_IMAGE,
      layer: await layerOf(rootfs, join(dir, "layer.tar")),
      config: { Env: ["PATH=/bin"], Cmd: ["/bin/sleep", "2147483647"], WorkingDir: "/" },
    },
  ]);
}

/**
 * The kubernetes-csi sidecar images the manifests run, each from the binary scripts/e2e-build.sh
 * built, as one layer holding it at the path the upstream image's ENTRYPOINT names. The names and
 * tags are the given references (what the chart renders). node-driver-registrar and livenessprobe
 * are the stand-ins of test/e2e/build/kube (the Go module proxy does not serve either).
 * Returns the tarball for `ctr images import`.
 */
export async function buildSidecarImages(dir: string, bin: string, references: string[]): Promise<string> {
  const images: OciImage[] = [];
  for (const reference of references) {
    const entry = reference.slice(reference.lastIndexOf("/") + 1).split(":")[0]!;
    const binary = SIDECAR_BINARIES[entry];
    if (!binary) throw new Error(`no binary is built for the sidecar image ${reference}`);
    const rootfs = join(dir, `${entry}-rootfs`);
    await rm(rootfs, { recursive: true, force: true });
    await mkdir(rootfs, { recursive: true });
    await run("cp", [join(bin, binary), join(rootfs, entry)]);
    images.push({
      name: reference,
      layer: await layerOf(rootfs, join(dir, `${entry}.tar`)),
      config: { Entrypoint: [`/${entry}`], WorkingDir: "/" },
    });
    await rm(rootfs, { recursive: true });
  }
  return ociArchive(join(dir, "sidecars"), images);
}

/** The binary of .cache/e2e/bin each sidecar image carries, by the image's last path segment. */
const SIDECAR_BINARIES: Record<string, string> = {
  "csi-provisioner": "csi-provisioner",
  "csi-attacher": "csi-attacher",
  "csi-resizer": "csi-resizer",
  "csi-snapshotter": "csi-snapshotter",
  "csi-node-driver-registrar": "registrar",
  livenessprobe: "livenessprobe",
};

/** A directory as an image layer: a reproducible tar of it, read back (the file is removed). */
async function layerOf(rootfs: string, tarball: string): Promise<Buffer> {
  await run("tar", [
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "-C",
    rootfs,
    "-cf",
    tarball,
    ".",
  ]);
  const layer = await readFile(tarball);
  await rm(tarball);
  return layer;
}

interface OciImage {
  name: string;
  layer: Buffer;
  config: Record<string, unknown>;
}

/** Where an OCI layout keeps the blob of a digest ("sha256:..."). */
function blobPath(layout: string, digest: string): string {
  return join(layout, "blobs", "sha256", digest.replace(/^sha256:/, ""));
}

/** Stores a blob in an OCI layout under its digest; returns its descriptor's digest and size. */
async function writeBlob(layout: string, data: Buffer | string): Promise<{ digest: string; size: number }> {
  const bytes = typeof data === "string" ? Buffer.from(data) : data;
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  await writeFile(blobPath(layout, digest), bytes);
  return { digest, size: bytes.length };
}

/** An OCI image layout of one-layer images, tarred for `ctr images import`. */
async function ociArchive(dir: string, images: OciImage[]): Promise<string> {
  const layout = join(dir, "layout");
  await rm(layout, { recursive: true, force: true });
  await mkdir(join(layout, "blobs", "sha256"), { recursive: true });
  const manifests: object[] = [];
  for (const image of images) {
    const layerBlob = await writeBlob(layout, image.layer);
    const config = await writeBlob(
      layout,
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        config: image.config,
        rootfs: { type: "layers", diff_ids: [layerBlob.digest] },
      }),
    );
    const manifest = await writeBlob(
      layout,
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layerBlob }],
      }),
    );
    manifests.push({
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      ...manifest,
      annotations: {
        "io.containerd.image.name": image.name,
        "org.opencontainers.image.ref.name": image.name.split(":").at(-1),
      },
    });
  }
  await writeFile(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  await writeFile(join(layout, "index.json"), JSON.stringify({ schemaVersion: 2, manifests }));
  const tarball = join(dir, "image.tar");
  await run("tar", ["-C", layout, "-cf", tarball, "oci-layout", "index.json", "blobs"]);
  await rm(layout, { recursive: true });
  return tarball;
}

/**
 * The driver's image as `npm run images -- driver` built it (test/containers, buildah on the
 * shipped Dockerfile), saved from that store for `ctr images import`, together with `rebuilt`: the
 * same layers under a new image configuration (a label with the time), as a rebuild with every
 * layer cached gives. containerd sees a new image id, so an upgrade to it restarts the pods.
 */
export async function exportDriverImage(
  dir: string,
  image: string,
  rebuilt: string,
  save: (args: string[]) => Promise<unknown>,
): Promise<string> {
  const layout = join(dir, "driver-layout");
  const archive = join(dir, "driver-oci.tar");
  await rm(layout, { recursive: true, force: true });
  await mkdir(layout, { recursive: true });
  await save(["save", "--format", "oci-archive", "--output", archive, image]);
  await run("tar", ["-C", layout, "-xf", archive]);
  await rm(archive);
  const readJsonBlob = async (digest: string) => JSON.parse(await readFile(blobPath(layout, digest), "utf8"));
  const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8"));
  const original = index.manifests[0];
  const manifest = await readJsonBlob(original.digest);
  const config = await readJsonBlob(manifest.config.digest);
  config.config.Labels = { ...config.config.Labels, "aws-storage-csi.e2e/rebuilt": new Date().toISOString() };
  const newConfig = await writeBlob(layout, JSON.stringify(config));
  const newManifest = await writeBlob(
    layout,
    JSON.stringify({ ...manifest, config: { ...manifest.config, ...newConfig } }),
  );
  const named = (descriptor: object, name: string) => ({
    ...descriptor,
    annotations: {
      "io.containerd.image.name": name,
      "org.opencontainers.image.ref.name": name.split(":").at(-1),
    },
  });
  index.manifests = [
    named(original, image),
    named({ mediaType: original.mediaType, ...newManifest }, rebuilt),
  ];
  await writeFile(join(layout, "index.json"), JSON.stringify(index));
  const tarball = join(dir, "driver.tar");
  await run("tar", ["-C", layout, "-cf", tarball, "oci-layout", "index.json", "blobs"]);
  await rm(layout, { recursive: true, force: true });
  return tarball;
}
