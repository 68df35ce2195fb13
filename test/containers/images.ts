// Builds the images the container-backed fake AWS starts (AWS_FAKE=container), on the tests' own
// store (podman.ts). There is no image registry here: the Debian base is made from the package
// mirror with mmdebstrap, and each image's Dockerfile is built on it with buildah, tagged with the
// public image's name so that testcontainers finds it locally. An image whose recipe (Dockerfile
// and context) is unchanged is kept: a warm machine builds nothing.
//
//   npm run images [-- moto|localstack ...]     (default: both)
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { cp, mkdir, readdir, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
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

/** Builds what is missing or out of date; logs each step with its duration. */
export async function buildImages(names: FakeImageName[]): Promise<void> {
  const missing = await podmanMissing();
  if (missing) throw new Error(`cannot build images: ${missing}`);
  await removeBuildLeftovers();
  await timed(`base ${BASE_IMAGE}`, buildBase);
  for (const name of names) await timed(`${name} ${FAKE_IMAGES[name].image}`, () => buildFakeImage(name));
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

async function buildBase(): Promise<string> {
  const recipe = hash(["mmdebstrap minbase bookworm", ...MMDEBSTRAP_OPTIONS]);
  if (await upToDate(BASE_IMAGE, recipe)) return "up to date";
  const tarball = join(CONTAINERS_DIR, "debian-bookworm-slim.tar");
  await mkdir(CONTAINERS_DIR, { recursive: true });
  try {
    await run("mmdebstrap", ["--variant=minbase", ...MMDEBSTRAP_OPTIONS, "bookworm", tarball]);
    const container = (await podman(["from", "scratch"], BUILDAH)).trim();
    try {
      await podman(["add", container, tarball, "/"], BUILDAH);
      await podman(["config", "--cmd", "bash", "--label", `${RECIPE_LABEL}=${recipe}`, container], BUILDAH);
      await podman(["commit", "--quiet", container, BASE_IMAGE], BUILDAH);
    } finally {
      await podman(["rm", container], BUILDAH);
    }
  } finally {
    await rm(tarball, { force: true });
  }
  return "built";
}

/** As Debian's slim images: no documentation, manual pages or translations. */
const MMDEBSTRAP_OPTIONS = [
  "--dpkgopt=path-exclude=/usr/share/doc/*",
  "--dpkgopt=path-exclude=/usr/share/man/*",
  "--dpkgopt=path-exclude=/usr/share/info/*",
  "--dpkgopt=path-exclude=/usr/share/locale/*",
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

async function run(command: string, args: string[]): Promise<void> {
  await promisify(execFile)(command, args, { maxBuffer: 16 * 1024 * 1024, timeout: BUILD_TIMEOUT_MS });
}

async function timed(what: string, step: () => Promise<string>): Promise<void> {
  const started = Date.now();
  const outcome = await step();
  const size = await podman(["image", "inspect", "--format", "{{.Size}}", what.split(" ")[1]!]).catch(
    () => "",
  );
  const mib = size ? `, ${(Number(size) / 2 ** 20).toFixed(0)} MiB` : "";
  log(`${what}: ${outcome} in ${((Date.now() - started) / 1000).toFixed(1)} s${mib}`);
}

function log(message: string): void {
  console.log(`images: ${message}`);
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const names = process.argv.slice(2);
  const unknown = names.filter((name) => !(name in FAKE_IMAGES));
  if (unknown.length > 0) {
    console.error(
      `images: unknown image ${unknown.join(", ")}; expected ${Object.keys(FAKE_IMAGES).join(", ")}`,
    );
    process.exit(2);
  }
  buildImages(
    names.length > 0 ? (names as FakeImageName[]) : (Object.keys(FAKE_IMAGES) as FakeImageName[]),
  ).catch((error: unknown) => {
    console.error(`images: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  });
}
