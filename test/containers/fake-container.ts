// The fake AWS in a container started by testcontainers (AWS_FAKE=container): moto's or
// LocalStack's image (AWS_FAKE_IMAGE). With a Docker engine (DOCKER_HOST, or Docker's socket)
// testcontainers pulls the public images as for any user; without one, as root with Debian's
// podman, the tests' own podman serves testcontainers the images built here (npm run images).
import { existsSync } from "node:fs";
import { GenericContainer, Wait } from "testcontainers";
import { freePort } from "../harness/moto.ts";
import { FAKE_IMAGES, type FakeImageName } from "./images.ts";
import {
  OWNER_LABEL,
  podman,
  podmanMissing,
  removeLeftoverContainers,
  startPodmanService,
} from "./podman.ts";

const START_TIMEOUT_MS = 120_000;
export const DOCKER_SOCKET = "/var/run/docker.sock";

export interface ContainerFake {
  url: string;
  /** Whether it serves EFS (LocalStack's free services do not). */
  efs: boolean;
  /** The account of the fake credentials (moto's fixed one; LocalStack's default). */
  account: string;
  reset(): Promise<void>;
  stop(): Promise<void>;
}

/** Thrown when no container runtime can run the image here; the message says why. */
export class ContainerRuntimeUnavailable extends Error {
  override name = "ContainerRuntimeUnavailable";
}

/** Which image AWS_FAKE_IMAGE names (default moto). */
export function fakeImageName(): FakeImageName {
  const name = process.env["AWS_FAKE_IMAGE"] ?? "moto";
  if (name in FAKE_IMAGES) return name as FakeImageName;
  throw new Error(`AWS_FAKE_IMAGE=${name}: expected ${Object.keys(FAKE_IMAGES).join(" or ")}`);
}

export async function startContainerFake(name: FakeImageName): Promise<ContainerFake> {
  await useRuntime(FAKE_IMAGES[name].image);
  const spec = FAKE_IMAGES[name];
  // A host port of our choosing: LocalStack's reset restarts the container, which must keep it.
  const hostPort = await freePort();
  const localstack = name === "localstack";
  const container = await new GenericContainer(spec.image)
    .withExposedPorts({ container: spec.port, host: hostPort })
    .withLabels({ [OWNER_LABEL]: String(process.pid) })
    .withEnvironment(
      localstack
        ? {
            SERVICES: "ec2,sts",
            EAGER_SERVICE_LOADING: "1",
            // No DNS server on port 53, no analytics, no certificate download (no internet here).
            DNS_ADDRESS: "0",
            DISABLE_EVENTS: "1",
            SKIP_SSL_CERT_DOWNLOAD: "1",
          }
        : {},
    )
    .withWaitStrategy(healthy(name))
    .withStartupTimeout(START_TIMEOUT_MS)
    .start();
  const url = `http://${container.getHost()}:${container.getMappedPort(spec.port)}`;
  return {
    url,
    efs: !localstack,
    account: localstack ? "000000000000" : "123456789012",
    async reset() {
      if (localstack) {
        // LocalStack's free edition has no state reset: a restarted container is empty.
        await container.restart();
        await waitHealthy(url, name);
      } else {
        const response = await fetch(`${url}/moto-api/reset`, { method: "POST" });
        if (!response.ok) throw new Error(`moto reset failed: HTTP ${response.status}`);
      }
    },
    async stop() {
      await container.stop({ remove: true, removeVolumes: true, timeout: 5_000 });
    },
  };
}

/** moto serves once its API answers; LocalStack once its health says EC2 runs. */
function healthy(name: FakeImageName) {
  const { healthPath, port } = FAKE_IMAGES[name];
  const wait = Wait.forHttp(healthPath, port).forStatusCode(200);
  return name === "localstack" ? wait.forResponsePredicate(ec2Running) : wait;
}

function ec2Running(body: string): boolean {
  try {
    return (JSON.parse(body) as { services?: Record<string, string> }).services?.["ec2"] === "running";
  } catch {
    return false;
  }
}

async function waitHealthy(url: string, name: FakeImageName): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const body = await fetch(`${url}${FAKE_IMAGES[name].healthPath}`, { signal: AbortSignal.timeout(2000) })
      .then((r) => (r.ok ? r.text() : ""))
      .catch(() => "");
    if (body && (name !== "localstack" || ec2Running(body))) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(
    `${FAKE_IMAGES[name].image} at ${url} did not become healthy within ${START_TIMEOUT_MS} ms`,
  );
}

/** Whether the runtime is the tests' own podman (images built here) or the user's Docker. */
let runtime: Promise<{ ownPodman: boolean }> | undefined;

/**
 * Points testcontainers at a container runtime, once per process (it keeps its client): the one
 * DOCKER_HOST or Docker's socket names, else the tests' own podman, whose leftovers of killed runs
 * are removed first and whose images must have been built here.
 */
async function useRuntime(image: string): Promise<void> {
  runtime ??= (async () => {
    if (process.env["DOCKER_HOST"] || existsSync(DOCKER_SOCKET)) return { ownPodman: false };
    const missing = await podmanMissing();
    if (missing) {
      throw new ContainerRuntimeUnavailable(
        `no container runtime: DOCKER_HOST is not set, ${DOCKER_SOCKET} does not exist, and podman cannot serve: ${missing}`,
      );
    }
    const removed = await removeLeftoverContainers();
    if (removed.length > 0) console.log(`removed ${removed.length} container(s) left by killed test runs`);
    const service = await startPodmanService();
    process.env["DOCKER_HOST"] = service.dockerHost;
    // Ryuk, testcontainers' reaper, is an image of a registry this machine does not reach: a
    // killed run's containers are removed by the next start instead (removeLeftoverContainers).
    process.env["TESTCONTAINERS_RYUK_DISABLED"] = "true";
    // This machine can look like a container (/.dockerenv): the mapped ports are on this host.
    process.env["TESTCONTAINERS_HOST_OVERRIDE"] = "127.0.0.1";
    return { ownPodman: true };
  })();
  const { ownPodman } = await runtime;
  // No registry to pull from: say so rather than let testcontainers try.
  if (
    ownPodman &&
    !(await podman(["image", "exists", image]).then(
      () => true,
      () => false,
    ))
  ) {
    throw new ContainerRuntimeUnavailable(`${image} is not built on this machine: run npm run images`);
  }
}
