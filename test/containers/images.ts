// Builds the images the container-backed fake AWS starts (AWS_FAKE=container), on the tests' own
// store (podman.ts). There is no image registry here: the Debian base is made from the package
// mirror with mmdebstrap, and each image's Dockerfile is built on it with buildah, tagged with the
// public image's name so that testcontainers finds it locally. An image whose recipe (Dockerfile
// and context) is unchanged is kept: a warm machine builds nothing.
//
// It also builds the driver's image from the repository's Dockerfile, unchanged, on a Node base
// made the same way (issue: the image built and run for real).
//
//   npm run images [-- moto|localstack|driver ...]     (default: all)
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import { cp, mkdir, readdir, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { run } from "../../src/host/exec.ts";
import { CONTAINERS_DIR, podman, podmanMissing, removeLeftoverContainers } from "./podman.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const LOCALSTACK_VENV = join(HERE, "..", "..", ".cache", "localstack");
/** The release the Dockerfiles' FROM names: the one this machine's package mirror serves. */
export const BASE_IMAGE = "docker.io/library/debian:bookworm-slim";
const RECIPE_LABEL = "aws-storage-csi.recipe";
const HOST_CA = "/etc/ssl/certs/ca-certificates.crt";
const BUILDAH = { tool: "buildah" } as const;
/** One step of a build (mmdebstrap, one Dockerfile); the CI stage has its own guard over all. */
const BUILD_TIMEOUT_MS = 15 * 60_000;

export interface FakeImage {
  /** The public image's name, which the local build is tagged with. */
  image: string;
  /** The port the server listens on in the container. */
  port: number;
  /** A path answering 200 once the server serves. */
  healthPath: string;
}

export const FAKE_IMAGES = {
  moto: { image: "docker.io/motoserver/moto:5.2.1", port: 5000, healthPath: "/moto-api/" },
  localstack: {
    image: "docker.io/localstack/localstack:4.14.0",
    port: 4566,
    healthPath: "/_localstack/health",
  },
} as const satisfies Record<string, FakeImage>;
export type FakeImageName = keyof typeof FAKE_IMAGES;

/** What npm run images builds: the fake AWS images, and the driver's own (from the Dockerfile). */
export type ImageName = FakeImageName | "driver";
export const IMAGE_NAMES: readonly ImageName[] = ["moto", "localstack", "driver"];

/** Builds what is missing or out of date; logs each step with its duration. */
export async function buildImages(names: readonly ImageName[]): Promise<void> {
  const missing = await podmanMissing();
  if (missing) throw new Error(`cannot build images: ${missing}`);
  await removeBuildLeftovers();
  const fakes = names.filter((name): name is FakeImageName => name !== "driver");
  if (fakes.length > 0) await timed(BASE_IMAGE, "base", () => debianImage(BASE_IMAGE, "bookworm"));
  for (const name of fakes) await timed(FAKE_IMAGES[name].image, name, () => buildFakeImage(name));
  if (names.includes("driver")) {
    const { image, suite } = nodeBaseOfDockerfile();
    await timed(image, "Node base", () => debianImage(image, suite, addNodeRuntime));
    await timed(DRIVER_IMAGE, "driver", buildDriverImage);
  }
}

/** What a failed or interrupted run left: stale containers, build containers, untagged layers. */
async function removeBuildLeftovers(): Promise<void> {
  const containers = await removeLeftoverContainers();
  if (containers.length > 0) log(`removed ${containers.length} container(s) a killed test run left`);
  // The store is the tests' own, and builds run one at a time: any working container is a leftover.
  await podman(["rm", "--all"], BUILDAH);
  const pruned = (await podman(["image", "prune", "--force"])).split("\n").filter(Boolean);
  if (pruned.length > 0) log(`removed ${pruned.length} untagged image(s) of earlier builds`);
}

/**
 * A Debian image of `suite` made from the package mirror, as Debian's slim images (minbase, no
 * documentation), with `customize` run on it before it is committed.
 */
async function debianImage(image: string, suite: string, customize?: Customize): Promise<string> {
  const recipe = hash([`mmdebstrap minbase ${suite}`, ...MMDEBSTRAP_OPTIONS, ...(customize?.recipe ?? [])]);
  if (await upToDate(image, recipe)) return "up to date";
  const tarball = join(CONTAINERS_DIR, `debian-${suite}.tar`);
  await mkdir(CONTAINERS_DIR, { recursive: true });
  try {
    await run("mmdebstrap", ["--variant=minbase", ...MMDEBSTRAP_OPTIONS, suite, tarball], {
      timeoutMs: BUILD_TIMEOUT_MS,
    });
    const container = (await podman(["from", "scratch"], BUILDAH)).trim();
    try {
      await podman(["add", container, tarball, "/"], BUILDAH);
      await customize?.apply(container);
      await podman(["config", "--label", `${RECIPE_LABEL}=${recipe}`, container], BUILDAH);
      await podman(["commit", "--quiet", container, image], BUILDAH);
    } finally {
      await podman(["rm", container], BUILDAH);
    }
  } finally {
    await rm(tarball, { force: true });
  }
  return "built";
}

interface Customize {
  /** What identifies the customization, for the recipe. */
  recipe: string[];
  apply(container: string): Promise<void>;
}

/**
 * As Debian's official images: no documentation, manual pages or translations, and apt set up to
 * keep neither downloaded packages nor its package caches in the image (their docker-clean and
 * gzip-indexes settings, which Dockerfiles written for them count on: without, an apt-get install
 * leaves ~100 MiB of .deb files and caches in its layer).
 */
const MMDEBSTRAP_OPTIONS = [
  "--dpkgopt=path-exclude=/usr/share/doc/*",
  "--dpkgopt=path-exclude=/usr/share/man/*",
  "--dpkgopt=path-exclude=/usr/share/info/*",
  "--dpkgopt=path-exclude=/usr/share/locale/*",
  '--aptopt=DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }',
  '--aptopt=APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }',
  '--aptopt=Dir::Cache::pkgcache ""',
  '--aptopt=Dir::Cache::srcpkgcache ""',
  '--aptopt=Acquire::GzipIndexes "true"',
  '--aptopt=Acquire::Languages "none"',
];

async function buildFakeImage(name: FakeImageName): Promise<string> {
  const { image } = FAKE_IMAGES[name];
  const context = join(CONTAINERS_DIR, "context", name);
  await rm(context, { recursive: true, force: true });
  await mkdir(context, { recursive: true });
  const dockerfile = join(HERE, name, "Dockerfile");
  const inputs = [readFileSync(dockerfile, "utf8"), await hashOf(BASE_IMAGE)];
  if (name === "localstack") inputs.push(...(await localStackContext(context)));
  const recipe = hash(inputs);
  if (await upToDate(image, recipe)) return "up to date";
  const args = [
    "bud",
    "--quiet",
    "--layers",
    "--label",
    `${RECIPE_LABEL}=${recipe}`,
    "--file",
    dockerfile,
    "--tag",
    image,
  ];
  // A proxy between this machine and PyPI shows its own certificate: the build trusts the host's CAs.
  if (existsSync(HOST_CA))
    args.push("--volume", `${HOST_CA}:/run/host-ca.crt:ro`, "--build-arg", "PIP_CERT=/run/host-ca.crt");
  await podman([...args, context], { tool: "buildah", timeoutMs: BUILD_TIMEOUT_MS });
  await rm(context, { recursive: true, force: true });
  return "built";
}

/**
 * The LocalStack build context: the Python host mode runs on (scripts/setup.sh found it, 3.12 or
 * newer) without its test suite, and the pinned dependency set. Returns what identifies them.
 */
async function localStackContext(context: string): Promise<string[]> {
  const venvConfig = join(LOCALSTACK_VENV, "pyvenv.cfg");
  if (!existsSync(venvConfig)) {
    throw new Error(
      "LocalStack's host-mode install is missing (.cache/localstack): run scripts/setup.sh first",
    );
  }
  // pyvenv.cfg names the interpreter's bin directory; its parent is the installation.
  const home = /^home\s*=\s*(.+)$/m.exec(readFileSync(venvConfig, "utf8"))?.[1]?.trim();
  if (!home) throw new Error(`${venvConfig} names no home interpreter`);
  const pythonRoot = dirname(realpathSync(home));
  const stdlib = (await readdir(join(pythonRoot, "lib"))).find((entry) => /^python3\.\d+$/.test(entry));
  await cp(pythonRoot, join(context, "python"), {
    recursive: true,
    verbatimSymlinks: true,
    filter: (source) =>
      !(stdlib && source.startsWith(join(pythonRoot, "lib", stdlib, "test"))) &&
      basename(source) !== "__pycache__",
  });
  const constraints = join(HERE, "..", "harness", "localstack-constraints.txt");
  await cp(constraints, join(context, "localstack-constraints.txt"));
  return [pythonRoot, readFileSync(constraints, "utf8")];
}

const REPO_ROOT = join(HERE, "..", "..");
const VERSION = `v${(JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { version: string }).version}`;
/** The image the Dockerfile's header names and the manifests run (Helm's appVersion, kustomize's newTag). */
export const DRIVER_IMAGE = `public.ecr.aws/aws-storage-csi/aws-storage-csi:${VERSION}`;
/** The Node runtime of this project (the node@24 package), which the local Node base carries. */
const NODE_BINARY = join(REPO_ROOT, "node_modules", "node", "bin", "node");
/** npm, as the official Node images carry it (the Dockerfile's build stage runs npm ci). */
const NPM_SPEC = "npm@11";

/**
 * The Dockerfile's base (ARG NODE_IMAGE), e.g. node:24-trixie-slim: Node's official image, which
 * is made here from Debian's mirror and this project's Node runtime, under the same name.
 */
export function nodeBaseOfDockerfile(): { image: string; major: number; suite: string } {
  const dockerfile = readFileSync(join(REPO_ROOT, "Dockerfile"), "utf8");
  const name = /^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile)?.[1];
  const parts = name ? /^node:(\d+)-([a-z]+)-slim$/.exec(name) : null;
  if (!name || !parts)
    throw new Error(`the Dockerfile's ARG NODE_IMAGE (${name}) is not node:<major>-<debian>-slim`);
  return { image: `docker.io/library/${name}`, major: Number(parts[1]), suite: parts[2]! };
}

const nodeVersion = () => execFileSync(NODE_BINARY, ["--version"], { encoding: "utf8" }).trim();

/** Node and npm where the official image has them: /usr/local/bin, /usr/local/lib/node_modules. */
const addNodeRuntime: Customize = {
  get recipe() {
    return [nodeVersion(), NPM_SPEC];
  },
  async apply(container) {
    const version = nodeVersion();
    const { major } = nodeBaseOfDockerfile();
    if (!version.startsWith(`v${major}.`))
      throw new Error(`${NODE_BINARY} is ${version}, the Dockerfile's base is Node ${major}`);
    const npmDir = join(CONTAINERS_DIR, "context", "npm");
    await rm(npmDir, { recursive: true, force: true });
    await mkdir(npmDir, { recursive: true });
    // npm's published package carries its dependencies: unpacked, it is an installation.
    const tarball = (
      await run("npm", ["pack", "--silent", "--pack-destination", npmDir, NPM_SPEC])
    ).stdout.trim();
    await run("tar", ["-xzf", join(npmDir, tarball), "-C", npmDir]);
    await podman(["copy", container, NODE_BINARY, "/usr/local/bin/node"], BUILDAH);
    await podman(["copy", container, join(npmDir, "package"), "/usr/local/lib/node_modules/npm"], BUILDAH);
    for (const tool of ["npm", "npx"]) {
      await podman(
        [
          "run",
          container,
          "--",
          "ln",
          "-s",
          `../lib/node_modules/npm/bin/${tool}-cli.js`,
          `/usr/local/bin/${tool}`,
        ],
        BUILDAH,
      );
    }
    await podman(["config", "--cmd", "node", container], BUILDAH);
    await rm(npmDir, { recursive: true, force: true });
  },
};

/**
 * The repository's Dockerfile as shipped, on the local Node base. npm ci in its build stage trusts
 * the host's CAs (a proxy's, for the npm registry) through a global npmrc mounted for the build
 * only; nothing of it stays in the image.
 */
async function buildDriverImage(): Promise<string> {
  const npmrc = join(CONTAINERS_DIR, "npmrc");
  writeFileSync(npmrc, existsSync(HOST_CA) ? "cafile=/run/host-ca.crt\n" : "");
  const args = ["bud", "--quiet", "--layers", "--build-arg", `VERSION=${VERSION}`, "--tag", DRIVER_IMAGE];
  if (existsSync(HOST_CA)) args.push("--volume", `${HOST_CA}:/run/host-ca.crt:ro`);
  args.push(
    "--volume",
    `${npmrc}:/usr/local/etc/npmrc:ro`,
    "--file",
    join(REPO_ROOT, "Dockerfile"),
    REPO_ROOT,
  );
  await podman(args, { tool: "buildah", timeoutMs: BUILD_TIMEOUT_MS });
  return "built (unchanged layers reused)";
}

async function upToDate(image: string, recipe: string): Promise<boolean> {
  try {
    const label = await podman([
      "image",
      "inspect",
      "--format",
      `{{index .Labels "${RECIPE_LABEL}"}}`,
      image,
    ]);
    return label.trim() === recipe;
  } catch {
    return false;
  }
}

async function hashOf(image: string): Promise<string> {
  return (await podman(["image", "inspect", "--format", "{{.Id}}", image])).trim();
}

function hash(parts: string[]): string {
  return createHash("sha256").update(parts.join("\0")).digest("hex").slice(0, 16);
}

async function timed(image: string, what: string, step: () => Promise<string>): Promise<void> {
  const started = Date.now();
  const outcome = await step();
  const size = await podman(["image", "inspect", "--format", "{{.Size}}", image]);
  log(
    `${what} ${image}: ${outcome} in ${((Date.now() - started) / 1000).toFixed(1)} s, ${(Number(size) / 2 ** 20).toFixed(0)} MiB`,
  );
}

function log(message: string): void {
  console.log(`images: ${message}`);
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const names = process.argv.slice(2);
  const unknown = names.filter((name) => !IMAGE_NAMES.includes(name as ImageName));
  if (unknown.length > 0) {
    console.error(`images: unknown image ${unknown.join(", ")}; expected ${IMAGE_NAMES.join(", ")}`);
    process.exit(2);
  }
  buildImages(names.length > 0 ? (names as ImageName[]) : IMAGE_NAMES).catch((error: unknown) => {
    console.error(`images: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  });
}
