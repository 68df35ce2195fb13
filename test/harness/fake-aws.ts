// One fake AWS for a test file: moto (or LocalStack; as a process or in a container) behind the
// fault proxy, plus direct clients for assertions and helpers for the fixtures every test needs.
import { randomUUID } from "node:crypto";
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
import type { FakeImageName } from "../containers/images.ts";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.ts";
import { localStackMissing, startLocalStack } from "./localstack.ts";
import { startMoto } from "./moto.ts";

export const FAKE_CREDENTIALS = { accessKeyId: "testing", secretAccessKey: "testing" };
/** Tag key on what the harness creates: value "instance", "root-volume" or "file-system". */
export const HARNESS_TAG = "aws-storage-csi/harness";
export const FAKE_AMI = "ami-12c6146b";

export interface FakeAwsOptions {
  region?: string;
  /** Default: AWS_FAKE, else moto. */
  kind?: FakeKind;
  /** For kind container. Default: AWS_FAKE_IMAGE, else moto. */
  image?: FakeImageName;
}

export interface FakeAws {
  /** The fault proxy's URL: give this to the code under test. */
  endpoint: string;
  region: string;
  /** Environment for a driver process: endpoint, region and the fake credentials. */
  env: Record<string, string>;
  proxy: FaultProxy;
  /** The fake's process when it runs as one here (moto), else undefined. */
  pid: number | undefined;
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

export type FakeKind = "moto" | "localstack" | "container";

/**
 * Which fake AWS (AWS_FAKE): moto as a process (default), LocalStack as a process (host mode), or
 * either in a container started by testcontainers (image: AWS_FAKE_IMAGE, moto or localstack).
 */
export function fakeKind(): FakeKind {
  const kind = process.env["AWS_FAKE"] ?? "moto";
  if (kind === "moto" || kind === "localstack" || kind === "container") return kind;
  throw new Error(`AWS_FAKE=${kind}: expected moto, localstack or container`);
}

interface Backend {
  url: string;
  /** Whether it serves EFS (LocalStack's free services do not). */
  efs: boolean;
  /** The account of the fake credentials (moto's fixed one; LocalStack's default). */
  account: string;
  pid?: number | undefined;
  reset(): Promise<void>;
  stop(): Promise<void>;
}

export async function startFakeAws(options: FakeAwsOptions = {}): Promise<FakeAws> {
  const region = options.region ?? "us-east-1";
  const kind = options.kind ?? fakeKind();
  const backend =
    kind === "localstack"
      ? await startLocalStackHost()
      : kind === "container"
        ? await startContainer(options.image)
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
    pid: backend.pid,
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

/**
 * moto's or LocalStack's image, through testcontainers (test/containers/fake-container.ts, loaded
 * only here: the other kinds do without testcontainers and its dependencies).
 */
async function startContainer(image: FakeImageName | undefined): Promise<Backend> {
  const { ContainerRuntimeUnavailable, fakeImageName, startContainerFake } = await import(
    "../containers/fake-container.ts"
  );
  try {
    return await startContainerFake(image ?? fakeImageName());
  } catch (error) {
    if (error instanceof ContainerRuntimeUnavailable) {
      throw new FakeAwsUnavailable(`AWS_FAKE=container cannot run: ${error.message}`);
    }
    throw error;
  }
}

/** LocalStack from PyPI as a process on this machine (test/harness/localstack.ts). */
async function startLocalStackHost(): Promise<Backend> {
  const missing = localStackMissing();
  if (missing) throw new FakeAwsUnavailable(`AWS_FAKE=localstack cannot run: ${missing}`);
  return { ...(await startLocalStack()), efs: false, account: "000000000000" };
}
