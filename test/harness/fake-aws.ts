// One fake AWS for a test file: moto (or LocalStack) behind the fault proxy, plus direct clients
// for assertions and helpers for the fixtures every test needs.
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { promisify } from "node:util";
import {
  type _InstanceType,
  DescribeSubnetsCommand,
  DescribeVolumesCommand,
  EC2Client,
  RunInstancesCommand,
} from "@aws-sdk/client-ec2";
import {
  CreateFileSystemCommand,
  CreateMountTargetCommand,
  DescribeFileSystemsCommand,
  EFSClient,
} from "@aws-sdk/client-efs";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.ts";
import { localStackMissing, startLocalStack } from "./localstack.ts";
import { startMoto } from "./moto.ts";

export const FAKE_CREDENTIALS = { accessKeyId: "testing", secretAccessKey: "testing" };
/** Tag key on what the harness creates: value "instance", "root-volume" or "file-system". */
export const HARNESS_TAG = "aws-storage-csi/harness";
export const FAKE_AMI = "ami-12c6146b";

export interface FakeAwsOptions {
  region?: string;
}

export interface FakeAws {
  /** The fault proxy's URL: give this to the code under test. */
  endpoint: string;
  region: string;
  /** Environment for a driver process: endpoint, region and the fake credentials. */
  env: Record<string, string>;
  proxy: FaultProxy;
  /** Clients that talk to the fake directly, past the proxy's faults and counters. */
  ec2: EC2Client;
  efs: EFSClient;
  /** Empties the fake and restores the proxy (faults, hooks, ClientTokens, stats). */
  reset(): Promise<void>;
  stop(): Promise<void>;
  /** A running instance tagged HARNESS_TAG=instance (its 8 GiB root volume: root-volume). */
  createInstance(options?: { zone?: string; instanceType?: string }): Promise<string>;
  /**
   * A file system tagged HARNESS_TAG=file-system, with a mount target in the default subnet of
   * each of `mountTargetZones` (default: the region's zones a and b), as a cluster's would have.
   */
  createFileSystem(options?: { mountTargetZones?: string[] }): Promise<string>;
}

/** Thrown when the requested fake cannot run here; the message says why, for a skip reason. */
export class FakeAwsUnavailable extends Error {
  override name = "FakeAwsUnavailable";
}

/** Which fake AWS (AWS_FAKE): moto (default), LocalStack in host mode, or LocalStack in a container. */
export function fakeKind(): "moto" | "localstack" | "localstack-container" {
  const kind = process.env["AWS_FAKE"] ?? "moto";
  if (kind === "moto" || kind === "localstack" || kind === "localstack-container") return kind;
  throw new Error(`AWS_FAKE=${kind}: expected moto, localstack or localstack-container`);
}

interface Backend {
  url: string;
  /** Whether it serves EFS (LocalStack's free services do not). */
  efs: boolean;
  /** The account of the fake credentials (moto's fixed one; LocalStack's default). */
  account: string;
  reset(): Promise<void>;
  stop(): Promise<void>;
}

export async function startFakeAws(options: FakeAwsOptions = {}): Promise<FakeAws> {
  const region = options.region ?? "us-east-1";
  const kind = fakeKind();
  const backend =
    kind === "localstack"
      ? await startLocalStackHost()
      : kind === "localstack-container"
        ? await startLocalStackContainer()
        : { ...(await startMoto()), efs: true, account: "123456789012" };
  const direct = { region, endpoint: backend.url, credentials: FAKE_CREDENTIALS };
  const ec2 = new EC2Client(direct);
  const efs = new EFSClient(direct);
  // moto loads a service on its first call (EC2 takes seconds): pay that here, not in a timed test.
  await stoppingOnFailure(backend, () =>
    Promise.all([
      ec2.send(new DescribeVolumesCommand({})),
      backend.efs ? efs.send(new DescribeFileSystemsCommand({})) : undefined,
    ]),
  );
  const proxy = await stoppingOnFailure(backend, () =>
    startFaultProxy({ target: backend.url, account: backend.account }),
  );

  return {
    endpoint: proxy.url,
    region,
    env: {
      AWS_ENDPOINT_URL: proxy.url,
      AWS_REGION: region,
      AWS_DEFAULT_REGION: region,
      AWS_ACCESS_KEY_ID: FAKE_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: FAKE_CREDENTIALS.secretAccessKey,
    },
    proxy,
    ec2,
    efs,
    async reset() {
      await backend.reset();
      proxy.reset();
    },
    async stop() {
      ec2.destroy();
      efs.destroy();
      try {
        await proxy.stop();
      } finally {
        await backend.stop();
      }
    },
    async createInstance({ zone = `${region}a`, instanceType = "m5.large" } = {}) {
      const answer = await ec2.send(
        new RunInstancesCommand({
          ImageId: FAKE_AMI,
          MinCount: 1,
          MaxCount: 1,
          InstanceType: instanceType as _InstanceType,
          Placement: { AvailabilityZone: zone },
          TagSpecifications: [
            { ResourceType: "instance", Tags: [{ Key: HARNESS_TAG, Value: "instance" }] },
            { ResourceType: "volume", Tags: [{ Key: HARNESS_TAG, Value: "root-volume" }] },
          ],
        }),
      );
      const instanceId = answer.Instances?.[0]?.InstanceId;
      if (!instanceId) throw new Error("RunInstances answered without an instance id");
      return instanceId;
    },
    async createFileSystem({ mountTargetZones = [`${region}a`, `${region}b`] } = {}) {
      if (!backend.efs)
        throw new FakeAwsUnavailable(`AWS_FAKE=${kind} serves no EFS (not among LocalStack's free services)`);
      const answer = await efs.send(
        new CreateFileSystemCommand({
          CreationToken: randomUUID(),
          Tags: [{ Key: HARNESS_TAG, Value: "file-system" }],
        }),
      );
      const fileSystemId = answer.FileSystemId;
      if (!fileSystemId) throw new Error("CreateFileSystem answered without a file system id");
      for (const zone of mountTargetZones) {
        const subnets = await ec2.send(
          new DescribeSubnetsCommand({
            Filters: [
              { Name: "availability-zone", Values: [zone] },
              { Name: "default-for-az", Values: ["true"] },
            ],
          }),
        );
        const subnetId = subnets.Subnets?.[0]?.SubnetId;
        if (!subnetId) throw new Error(`no default subnet in ${zone} for a mount target`);
        await efs.send(new CreateMountTargetCommand({ FileSystemId: fileSystemId, SubnetId: subnetId }));
      }
      return fileSystemId;
    },
  };
}

async function stoppingOnFailure<T>(backend: Backend, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    await backend.stop();
    throw error;
  }
}

/** The part of the optional testcontainers package used here. */
interface Testcontainers {
  GenericContainer: new (image: string) => ContainerBuilder;
  Wait: { forHttp(path: string, port: number): unknown };
}

interface ContainerBuilder {
  withEnvironment(env: Record<string, string>): ContainerBuilder;
  withExposedPorts(...ports: number[]): ContainerBuilder;
  withWaitStrategy(strategy: unknown): ContainerBuilder;
  start(): Promise<{ getHost(): string; getMappedPort(port: number): number; stop(): Promise<unknown> }>;
}

/** LocalStack from PyPI as a process on this machine (test/harness/localstack.ts). */
async function startLocalStackHost(): Promise<Backend> {
  const missing = localStackMissing();
  if (missing) throw new FakeAwsUnavailable(`AWS_FAKE=localstack cannot run: ${missing}`);
  return { ...(await startLocalStack()), efs: false, account: "000000000000" };
}

// Untested here (no Docker engine): the LocalStack image needs an auth token and Docker.
async function startLocalStackContainer(): Promise<Backend> {
  const authToken = process.env["LOCALSTACK_AUTH_TOKEN"];
  const testcontainers = await importOptional<Testcontainers>("testcontainers");
  const reasons = [
    authToken ? undefined : "LOCALSTACK_AUTH_TOKEN is not set (the LocalStack image requires an auth token)",
    (await dockerAnswers()) ? undefined : "`docker info` failed: no Docker engine is reachable",
    testcontainers
      ? undefined
      : "the npm package testcontainers is not installed (npm install -D testcontainers)",
  ].filter((reason) => reason !== undefined);
  if (!testcontainers || !authToken || reasons.length > 0) {
    throw new FakeAwsUnavailable(`AWS_FAKE=localstack-container cannot run: ${reasons.join("; ")}`);
  }
  const container = await new testcontainers.GenericContainer("localstack/localstack-pro")
    .withEnvironment({ LOCALSTACK_AUTH_TOKEN: authToken, SERVICES: "ec2,efs" })
    .withExposedPorts(4566)
    .withWaitStrategy(testcontainers.Wait.forHttp("/_localstack/health", 4566))
    .start();
  const url = `http://${container.getHost()}:${container.getMappedPort(4566)}`;
  return {
    url,
    efs: true,
    account: "000000000000",
    async reset() {
      const response = await fetch(`${url}/_localstack/state/reset`, { method: "POST" });
      if (!response.ok) throw new Error(`LocalStack reset failed: HTTP ${response.status}`);
    },
    async stop() {
      await container.stop();
    },
  };
}

async function importOptional<T>(name: string): Promise<T | undefined> {
  try {
    return (await import(name)) as T;
  } catch {
    return undefined;
  }
}

async function dockerAnswers(): Promise<boolean> {
  try {
    await promisify(execFile)("docker", ["info"], { timeout: 15_000 });
    return true;
  } catch {
    return false;
  }
}
