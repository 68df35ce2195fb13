import { setTimeout as sleep } from "node:timers/promises";
import {
  AttachVolumeCommand,
  CreateSnapshotCommand,
  CreateVolumeCommand,
  type CreateVolumeCommandInput,
  DeleteVolumeCommand,
  DescribeInstancesCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  DetachVolumeCommand,
  EC2Client,
  ModifyVolumeCommand,
} from "@aws-sdk/client-ec2";
import {
  CreateAccessPointCommand,
  type CreateAccessPointCommandInput,
  DescribeAccessPointsCommand,
  EFSClient,
} from "@aws-sdk/client-efs";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { FAKE_CREDENTIALS, type FakeAws, FakeAwsUnavailable, HARNESS_TAG, startFakeAws } from "./fake-aws.ts";
import { defaultFaults } from "./fault-proxy.ts";
import { type Imds, startImds } from "./imds.ts";
import { localStackMissing } from "./localstack.ts";
import { startMoto } from "./moto.ts";
import { createThrottle } from "./throttle.ts";

let aws: FakeAws;
/** Clients that go through the fault proxy, without SDK retries so every fault is visible. */
let ec2: EC2Client;
let efs: EFSClient;

beforeAll(async () => {
  aws = await startFakeAws();
  const config = {
    region: aws.region,
    endpoint: aws.endpoint,
    credentials: FAKE_CREDENTIALS,
    maxAttempts: 1,
  };
  ec2 = new EC2Client(config);
  efs = new EFSClient(config);
}, 60_000);

afterAll(async () => {
  ec2?.destroy();
  efs?.destroy();
  await aws?.stop();
});

beforeEach(async () => {
  await aws.reset();
});

const volumeInput = (overrides: Partial<CreateVolumeCommandInput> = {}): CreateVolumeCommandInput => ({
  AvailabilityZone: `${aws.region}a`,
  Size: 10,
  VolumeType: "gp3",
  ...overrides,
});

/** Volumes in the fake, asked directly, without the root volumes of harness instances. */
async function volumeIds(): Promise<string[]> {
  const { Volumes = [] } = await aws.ec2.send(new DescribeVolumesCommand({}));
  return Volumes.filter((volume) => !volume.Tags?.some((tag) => tag.Key === HARNESS_TAG)).map(
    (volume) => volume.VolumeId!,
  );
}

function httpStatus(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

/** The error a call failed with, and its HTTP status. */
async function errorOf(promise: Promise<unknown>): Promise<Error & { status?: number }> {
  try {
    await promise;
  } catch (error) {
    return Object.assign(error as Error, { status: httpStatus(error) });
  }
  throw new Error("expected the call to fail");
}

describe("moto", () => {
  it("starts, resets and stops", async () => {
    const moto = await startMoto();
    try {
      const client = new EC2Client({
        region: "us-east-1",
        endpoint: moto.url,
        credentials: FAKE_CREDENTIALS,
      });
      await client.send(new CreateVolumeCommand(volumeInput()));
      expect((await client.send(new DescribeVolumesCommand({}))).Volumes).toHaveLength(1);
      await moto.reset();
      expect((await client.send(new DescribeVolumesCommand({}))).Volumes).toHaveLength(0);
      client.destroy();
    } finally {
      await moto.stop();
    }
    await expect(fetch(`${moto.url}/moto-api/data.json`)).rejects.toThrow();
  }, 60_000);

  it("says how to install moto when MOTO_SERVER is not usable", async () => {
    const saved = process.env["MOTO_SERVER"];
    process.env["MOTO_SERVER"] = "/nonexistent/moto_server";
    try {
      await expect(startMoto()).rejects.toThrow(/pip install 'moto\[server\]==5\.2\.1'/);
    } finally {
      if (saved === undefined) delete process.env["MOTO_SERVER"];
      else process.env["MOTO_SERVER"] = saved;
    }
  });
});

describe("fault proxy", () => {
  it("forwards EC2 and EFS calls, counts them, and passes other requests through", async () => {
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    expect(await volumeIds()).toEqual([VolumeId]);
    const fileSystemId = await aws.createFileSystem();
    await efs.send(new DescribeAccessPointsCommand({ FileSystemId: fileSystemId }));
    expect((await fetch(`${aws.endpoint}/moto-api/data.json`)).status).toBe(200);
    expect(aws.proxy.stats()).toEqual({ CreateVolume: 1, DescribeAccessPoints: 1 });
    aws.proxy.resetStats();
    expect(aws.proxy.stats()).toEqual({});
  });

  it("reset() restores default faults and forgets hooks, tokens and stats", async () => {
    aws.proxy.faults.errorRate = 1;
    aws.proxy.faults.volumeInUse = false;
    aws.proxy.hooks.onDelete = () => {};
    await ec2.send(new DescribeVolumesCommand({})).catch(() => undefined);
    await aws.reset();
    expect(aws.proxy.faults).toEqual(defaultFaults());
    expect(aws.proxy.hooks).toEqual({});
    expect(aws.proxy.stats()).toEqual({});
  });
});

describe("ClientToken idempotency", () => {
  it("replays CreateVolume for the same token and parameters without creating a second volume", async () => {
    const first = await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-1" })));
    const second = await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-1" })));
    expect(second.VolumeId).toBe(first.VolumeId);
    expect(await volumeIds()).toEqual([first.VolumeId]);
    expect(aws.proxy.stats()["CreateVolume"]).toBe(2);
  });

  it("answers IdempotentParameterMismatch for the same token with other parameters", async () => {
    await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-2" })));
    const error = await errorOf(
      ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-2", Size: 20 }))),
    );
    expect(error.name).toBe("IdempotentParameterMismatch");
    expect(error.status).toBe(400);
    expect(await volumeIds()).toHaveLength(1);
  });

  it("replays CreateVolume for the same token and tags in another order", async () => {
    const tagged = (...tags: { Key: string; Value: string }[]) =>
      volumeInput({ ClientToken: "token-tags", TagSpecifications: [{ ResourceType: "volume", Tags: tags }] });
    const name = { Key: "CSIVolumeName", Value: "pvc-1" };
    const cluster = { Key: "ebs.csi.aws.com/cluster", Value: "true" };
    const first = await ec2.send(new CreateVolumeCommand(tagged(name, cluster)));
    const second = await ec2.send(new CreateVolumeCommand(tagged(cluster, name)));
    expect(second.VolumeId).toBe(first.VolumeId);
    expect(await volumeIds()).toEqual([first.VolumeId]);
  });

  it("answers IdempotentParameterMismatch for the same token with another tag value", async () => {
    const tagged = (value: string) =>
      volumeInput({
        ClientToken: "token-tag-value",
        TagSpecifications: [{ ResourceType: "volume", Tags: [{ Key: "CSIVolumeName", Value: value }] }],
      });
    await ec2.send(new CreateVolumeCommand(tagged("pvc-1")));
    const error = await errorOf(ec2.send(new CreateVolumeCommand(tagged("pvc-2"))));
    expect(error.name).toBe("IdempotentParameterMismatch");
    expect(await volumeIds()).toHaveLength(1);
  });

  it("lets concurrent calls with one token create one volume", async () => {
    const answers = await Promise.all(
      Array.from({ length: 5 }, () =>
        ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-3" }))),
      ),
    );
    expect(new Set(answers.map((answer) => answer.VolumeId)).size).toBe(1);
    expect(await volumeIds()).toHaveLength(1);
  });

  it("replays EFS CreateAccessPoint, and a mismatch is AccessPointAlreadyExists carrying the id", async () => {
    const fileSystemId = await aws.createFileSystem();
    const input = (path: string): CreateAccessPointCommandInput => ({
      ClientToken: "pvc-1",
      FileSystemId: fileSystemId,
      PosixUser: { Uid: 1000, Gid: 50000 },
      RootDirectory: { Path: path, CreationInfo: { OwnerUid: 1000, OwnerGid: 50000, Permissions: "700" } },
    });
    const first = await efs.send(new CreateAccessPointCommand(input("/dynamic/pvc-1")));
    const second = await efs.send(new CreateAccessPointCommand(input("/dynamic/pvc-1")));
    expect(second.AccessPointId).toBe(first.AccessPointId);
    const error = await errorOf(efs.send(new CreateAccessPointCommand(input("/elsewhere"))));
    expect(error.name).toBe("AccessPointAlreadyExists");
    expect(error.status).toBe(409);
    expect((error as { AccessPointId?: string }).AccessPointId).toBe(first.AccessPointId);
    const { AccessPoints = [] } = await aws.efs.send(
      new DescribeAccessPointsCommand({ FileSystemId: fileSystemId }),
    );
    expect(AccessPoints).toHaveLength(1);
  });

  it("can be switched off to show moto's own behaviour (a new volume per call)", async () => {
    aws.proxy.faults.clientTokenIdempotency = false;
    await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-4" })));
    await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "token-4" })));
    expect(await volumeIds()).toHaveLength(2);
  });
});

describe("throttling", () => {
  it("refuses every call at rate 1 with RequestLimitExceeded (EC2) and ThrottlingException (EFS)", async () => {
    const fileSystemId = await aws.createFileSystem();
    aws.proxy.faults.throttle = { rate: 1 };
    const ec2Error = await errorOf(ec2.send(new CreateVolumeCommand(volumeInput())));
    expect(ec2Error.name).toBe("RequestLimitExceeded");
    expect(ec2Error.status).toBe(503);
    const efsError = await errorOf(efs.send(new DescribeAccessPointsCommand({ FileSystemId: fileSystemId })));
    expect(efsError.name).toBe("ThrottlingException");
    expect(efsError.status).toBe(429);
    expect(await volumeIds()).toHaveLength(0);
  });

  it("keeps a token bucket per action, with '*' for actions not listed", async () => {
    aws.proxy.faults.throttle = {
      buckets: {
        DescribeVolumes: { capacity: 2, refillPerSecond: 0 },
        "*": { capacity: 1, refillPerSecond: 0 },
      },
    };
    await ec2.send(new DescribeVolumesCommand({}));
    await ec2.send(new DescribeVolumesCommand({}));
    expect((await errorOf(ec2.send(new DescribeVolumesCommand({})))).name).toBe("RequestLimitExceeded");
    await ec2.send(new CreateVolumeCommand(volumeInput()));
    expect((await errorOf(ec2.send(new CreateVolumeCommand(volumeInput())))).name).toBe(
      "RequestLimitExceeded",
    );
    await ec2.send(new DescribeInstancesCommand({})); // its own bucket, also configured by "*"
  });

  it("refills buckets with time", () => {
    let now = 0;
    const throttle = createThrottle(() => now);
    const config = { buckets: { DescribeVolumes: { capacity: 2, refillPerSecond: 4 } } };
    expect([1, 2, 3].map(() => throttle.refuses("DescribeVolumes", config))).toEqual([false, false, true]);
    now = 250;
    expect(throttle.refuses("DescribeVolumes", config)).toBe(false);
    expect(throttle.refuses("DescribeVolumes", config)).toBe(true);
    now = 10_000; // never more than the capacity
    expect([1, 2, 3].map(() => throttle.refuses("DescribeVolumes", config))).toEqual([false, false, true]);
    expect(throttle.refuses("DescribeVolumes", { ...config })).toBe(false); // a new config starts full
  });
});

describe("injected errors and latency", () => {
  it("answers InternalError without forwarding when the answer is not lost", async () => {
    Object.assign(aws.proxy.faults, { errorRate: 1, lostAnswerShare: 0 });
    const error = await errorOf(ec2.send(new CreateVolumeCommand(volumeInput())));
    expect(error.name).toBe("InternalError");
    expect(error.status).toBe(500);
    expect(await volumeIds()).toHaveLength(0);
  });

  it("performs the call and loses the answer in lost-answer mode; the token retry finds the volume", async () => {
    Object.assign(aws.proxy.faults, { errorRate: 1, lostAnswerShare: 1 });
    const error = await errorOf(ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "lost-1" }))));
    expect(error.name).toBe("InternalError");
    const created = await volumeIds();
    expect(created).toHaveLength(1);
    aws.proxy.faults.errorRate = 0;
    const retry = await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: "lost-1" })));
    expect(retry.VolumeId).toBe(created[0]);
    expect(await volumeIds()).toHaveLength(1);
  });

  it("answers EFS calls with InternalServerError", async () => {
    aws.proxy.faults.errorRate = 1;
    const error = await errorOf(efs.send(new DescribeAccessPointsCommand({})));
    expect(error.name).toBe("InternalServerError");
  });

  it("adds latency per action", async () => {
    // A wide gap, so that a loaded machine cannot make the undelayed call look delayed.
    aws.proxy.faults.latencyMs = { DescribeVolumes: 3000 };
    let started = performance.now();
    await ec2.send(new DescribeVolumesCommand({}));
    expect(performance.now() - started).toBeGreaterThanOrEqual(2990);
    started = performance.now();
    await ec2.send(new DescribeInstancesCommand({}));
    expect(performance.now() - started).toBeLessThan(2990);
  });

  it("ends a burst of 100 creates, each sent 3 times under 30% throttling and 5% errors, with 100 volumes", async () => {
    Object.assign(aws.proxy.faults, { throttle: { rate: 0.3 }, errorRate: 0.05 });
    // Retries what the SDK would retry (throttling, 5xx), with no backoff to keep the test short.
    const createUntilAnswered = async (token: string) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await ec2.send(new CreateVolumeCommand(volumeInput({ ClientToken: token })));
        } catch (error) {
          const retryable =
            (error as Error).name === "RequestLimitExceeded" || (httpStatus(error) ?? 0) >= 500;
          if (!retryable || attempt === 30) throw error;
          await sleep(5);
        }
      }
    };
    const tokens = Array.from({ length: 100 }, (_, index) => `burst-${index}`);
    const answers = await Promise.all(
      tokens.flatMap((token) => [1, 2, 3].map(() => createUntilAnswered(token))),
    );
    expect(new Set(answers.map((answer) => answer.VolumeId)).size).toBe(100);
    expect(await volumeIds()).toHaveLength(100);
    const calls = aws.proxy.stats()["CreateVolume"] ?? 0;
    expect(calls).toBeGreaterThan(300); // faults were really injected
  }, 60_000);
});

describe("AttachVolume", () => {
  it("answers VolumeInUse for a volume attached elsewhere, leaving the attachment alone", async () => {
    const [first, second] = [await aws.createInstance(), await aws.createInstance()];
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    await ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: first, Device: "/dev/xvdba" }));
    const error = await errorOf(
      ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: second, Device: "/dev/xvdba" })),
    );
    expect(error.name).toBe("VolumeInUse");
    expect(error.status).toBe(400);
    const { Volumes = [] } = await aws.ec2.send(new DescribeVolumesCommand({ VolumeIds: [VolumeId!] }));
    expect(Volumes[0]?.Attachments?.map((attachment) => attachment.InstanceId)).toEqual([first]);
  });

  it("lets exactly one of two racing attaches of a volume win", async () => {
    const [first, second] = [await aws.createInstance(), await aws.createInstance()];
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    const outcomes = await Promise.allSettled(
      [first, second].map((InstanceId) =>
        ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId, Device: "/dev/xvdba" })),
      ),
    );
    const failures = outcomes.flatMap((outcome) =>
      outcome.status === "rejected" ? [(outcome.reason as Error).name] : [],
    );
    expect(failures).toEqual(["VolumeInUse"]);
  });

  it("shows moto's silent move when the check is off", async () => {
    aws.proxy.faults.volumeInUse = false;
    const [first, second] = [await aws.createInstance(), await aws.createInstance()];
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    await ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: first, Device: "/dev/xvdba" }));
    await ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: second, Device: "/dev/xvdba" }));
    const { Volumes = [] } = await aws.ec2.send(new DescribeVolumesCommand({ VolumeIds: [VolumeId!] }));
    expect(Volumes[0]?.Attachments?.map((attachment) => attachment.InstanceId)).toEqual([second]);
  });
});

describe("hooks", () => {
  it("fire after moto succeeded, with the call's arguments, before the client gets the answer", async () => {
    const events: unknown[] = [];
    Object.assign(aws.proxy.hooks, {
      onAttach: async (volumeId: string, instanceId: string, device: string) => {
        await sleep(100); // the answer must wait for the simulated disk
        events.push(["attach", volumeId, instanceId, device]);
      },
      onDetach: (volumeId: string, instanceId: string) => void events.push(["detach", volumeId, instanceId]),
      onModify: (volumeId: string, size: number | undefined) => void events.push(["modify", volumeId, size]),
      onDelete: (volumeId: string) => void events.push(["delete", volumeId]),
    });
    const instanceId = await aws.createInstance();
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    await ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: instanceId, Device: "/dev/xvdbb" }));
    expect(events).toEqual([["attach", VolumeId, instanceId, "/dev/xvdbb"]]);
    await errorOf(
      ec2.send(new AttachVolumeCommand({ VolumeId, InstanceId: instanceId, Device: "/dev/xvdbc" })),
    );
    await ec2.send(new ModifyVolumeCommand({ VolumeId, Size: 20 }));
    await ec2.send(new ModifyVolumeCommand({ VolumeId, Iops: 4000 }));
    await ec2.send(new DetachVolumeCommand({ VolumeId, InstanceId: instanceId }));
    await ec2.send(new DeleteVolumeCommand({ VolumeId }));
    await errorOf(ec2.send(new DeleteVolumeCommand({ VolumeId }))); // moto says NotFound: no hook
    expect(events).toEqual([
      ["attach", VolumeId, instanceId, "/dev/xvdbb"],
      ["modify", VolumeId, 20],
      ["modify", VolumeId, undefined],
      ["detach", VolumeId, instanceId],
      ["delete", VolumeId],
    ]);
  });

  it("turn a failing hook into InternalError", async () => {
    aws.proxy.hooks.onDelete = () => {
      throw new Error("loop device busy");
    };
    const { VolumeId } = await ec2.send(new CreateVolumeCommand(volumeInput()));
    const error = await errorOf(ec2.send(new DeleteVolumeCommand({ VolumeId })));
    expect(error.name).toBe("InternalError");
    expect(error.message).toMatch(/loop device busy/);
  });
});

describe("fixtures", () => {
  it("createInstance runs a tagged instance in the requested zone, with a tagged root volume", async () => {
    const instanceId = await aws.createInstance({ zone: `${aws.region}b`, instanceType: "c5.xlarge" });
    const { Reservations = [] } = await aws.ec2.send(
      new DescribeInstancesCommand({ InstanceIds: [instanceId] }),
    );
    const instance = Reservations[0]?.Instances?.[0];
    expect(instance?.Placement?.AvailabilityZone).toBe(`${aws.region}b`);
    expect(instance?.InstanceType).toBe("c5.xlarge");
    expect(instance?.Tags).toContainEqual({ Key: HARNESS_TAG, Value: "instance" });
    const { Volumes = [] } = await aws.ec2.send(
      new DescribeVolumesCommand({ Filters: [{ Name: "attachment.instance-id", Values: [instanceId] }] }),
    );
    expect(Volumes[0]?.Tags).toContainEqual({ Key: HARNESS_TAG, Value: "root-volume" });
    expect(await volumeIds()).toEqual([]);
  });

  it("createFileSystem returns a file system id", async () => {
    expect(await aws.createFileSystem()).toMatch(/^fs-[0-9a-f]+$/);
  });

  it("AWS_FAKE_IMAGE other than moto or localstack is refused, naming them", async () => {
    const saved = { kind: process.env["AWS_FAKE"], image: process.env["AWS_FAKE_IMAGE"] };
    process.env["AWS_FAKE"] = "container";
    process.env["AWS_FAKE_IMAGE"] = "motoserver";
    try {
      expect((await errorOf(startFakeAws())).message).toMatch(
        /AWS_FAKE_IMAGE=motoserver: expected moto or localstack/,
      );
    } finally {
      for (const [name, value] of [
        ["AWS_FAKE", saved.kind],
        ["AWS_FAKE_IMAGE", saved.image],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });
});

const localStackSkip = localStackMissing();
if (localStackSkip) console.log(`LocalStack harness test skipped: ${localStackSkip}`);

describe.skipIf(localStackSkip)("AWS_FAKE=localstack (host mode)", () => {
  const withFake = async <T>(kind: string, body: () => Promise<T>): Promise<T> => {
    const saved = process.env["AWS_FAKE"];
    process.env["AWS_FAKE"] = kind;
    try {
      return await body();
    } finally {
      if (saved === undefined) delete process.env["AWS_FAKE"];
      else process.env["AWS_FAKE"] = saved;
    }
  };

  it("serves EC2 behind the fault proxy, answers DescribeSnapshots' OwnerIds as EC2 does, and reset empties it", async () => {
    const aws = await withFake("localstack", () => startFakeAws());
    try {
      const { VolumeId } = await aws.ec2.send(
        new CreateVolumeCommand({ AvailabilityZone: "us-east-1a", Size: 1 }),
      );
      const { SnapshotId } = await aws.ec2.send(new CreateSnapshotCommand({ VolumeId }));
      // Through the proxy: only the account's own snapshots (LocalStack, like moto, answers all).
      const ec2 = new EC2Client({
        region: aws.region,
        endpoint: aws.endpoint,
        credentials: FAKE_CREDENTIALS,
      });
      const own = await ec2.send(new DescribeSnapshotsCommand({ OwnerIds: ["self"] }));
      ec2.destroy();
      expect(own.Snapshots?.map((x) => x.SnapshotId)).toEqual([SnapshotId]);
      await expect(aws.createFileSystem()).rejects.toBeInstanceOf(FakeAwsUnavailable);
      await aws.reset();
      expect((await aws.ec2.send(new DescribeVolumesCommand({}))).Volumes ?? []).toEqual([]);
    } finally {
      await aws.stop();
    }
  }, 120_000);
});

it("AWS_FAKE other than moto, localstack or container is refused, naming them", async () => {
  const saved = process.env["AWS_FAKE"];
  process.env["AWS_FAKE"] = "docker";
  try {
    expect((await errorOf(startFakeAws())).message).toMatch(/moto, localstack or container/);
  } finally {
    if (saved === undefined) delete process.env["AWS_FAKE"];
    else process.env["AWS_FAKE"] = saved;
  }
});

describe("IMDS", () => {
  let imds: Imds;
  beforeAll(async () => {
    imds = await startImds({
      instanceId: "i-0123456789abcdef0",
      instanceType: "m5.large",
      zone: "us-east-1c",
      region: "us-east-1",
      enis: 3,
      blockDevices: { ami: "xvda", root: "/dev/xvda", ebs1: "sdf" },
    });
  });
  afterAll(async () => {
    await imds?.stop();
  });

  const token = async (ttl = "21600") => {
    const response = await fetch(`${imds.url}/latest/api/token`, {
      method: "PUT",
      headers: { "X-aws-ec2-metadata-token-ttl-seconds": ttl },
    });
    return { status: response.status, token: await response.text() };
  };
  const get = async (path: string, metadataToken?: string) => {
    const headers: Record<string, string> = metadataToken
      ? { "X-aws-ec2-metadata-token": metadataToken }
      : {};
    const response = await fetch(`${imds.url}${path}`, { headers });
    return { status: response.status, body: await response.text() };
  };

  it("refuses reads without a valid token, and tokens without a valid TTL", async () => {
    expect((await get("/latest/meta-data/instance-id")).status).toBe(401);
    expect((await get("/latest/meta-data/instance-id", "forged")).status).toBe(401);
    expect((await token("0")).status).toBe(400);
    expect((await token("")).status).toBe(400);
  });

  it("answers the metadata the driver reads", async () => {
    const { token: t } = await token();
    expect(await get("/latest/meta-data/instance-id", t)).toEqual({
      status: 200,
      body: "i-0123456789abcdef0",
    });
    expect((await get("/latest/meta-data/instance-type", t)).body).toBe("m5.large");
    expect((await get("/latest/meta-data/placement/availability-zone", t)).body).toBe("us-east-1c");
    expect((await get("/latest/meta-data/placement/region", t)).body).toBe("us-east-1");
    expect((await get("/latest/meta-data/block-device-mapping/", t)).body.split("\n")).toEqual([
      "ami",
      "root",
      "ebs1",
    ]);
    expect((await get("/latest/meta-data/block-device-mapping/ebs1", t)).body).toBe("sdf");
    expect((await get("/latest/meta-data/block-device-mapping/constructor", t)).status).toBe(404);
    expect((await get("/latest/meta-data/network/interfaces/macs/", t)).body.split("\n")).toHaveLength(3);
    const document = JSON.parse((await get("/latest/dynamic/instance-identity/document", t)).body);
    expect(document).toMatchObject({
      instanceId: "i-0123456789abcdef0",
      instanceType: "m5.large",
      availabilityZone: "us-east-1c",
      region: "us-east-1",
    });
    expect((await get("/latest/meta-data/nothing-here", t)).status).toBe(404);
  });

  it("answers every directory with and without a trailing slash, listing sub-directories with one", async () => {
    const { token: t } = await token();
    const directories = [
      "/latest/meta-data",
      "/latest/meta-data/block-device-mapping",
      "/latest/meta-data/network/interfaces/macs",
      "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:02",
      "/latest/meta-data/placement",
      "/latest/dynamic/instance-identity",
    ];
    for (const directory of directories) {
      const withSlash = await get(`${directory}/`, t);
      expect(withSlash.status, directory).toBe(200);
      expect(await get(directory, t), directory).toEqual(withSlash);
    }
    expect((await get("/latest/meta-data/network/interfaces/macs", t)).body).toBe(
      "02:00:00:00:00:01/\n02:00:00:00:00:02/\n02:00:00:00:00:03/",
    );
    expect((await get("/latest/meta-data", t)).body.split("\n")).toEqual(
      expect.arrayContaining(["instance-id", "block-device-mapping/", "network/", "placement/"]),
    );
    expect(
      (await get("/latest/meta-data/network/interfaces/macs/02:00:00:00:00:02/device-number", t)).body,
    ).toBe("1");
  });

  it("answers what the official Go EBS driver reads at start-up, and 404 for outpost-arn", async () => {
    // kubernetes-sigs/aws-ebs-csi-driver v1.44 (pkg/cloud/metadata/imds.go) through the Go SDK imds client.
    const response = await fetch(`${imds.url}/latest/api/token`, {
      method: "PUT",
      headers: { "X-Aws-Ec2-Metadata-Token-Ttl-Seconds": "300" },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("x-aws-ec2-metadata-token-ttl-seconds")).toBe("300");
    const t = await response.text();
    const document = JSON.parse((await get("/latest/dynamic/instance-identity/document", t)).body);
    expect(document).toMatchObject({ instanceId: "i-0123456789abcdef0", availabilityZone: "us-east-1c" });
    const macs = await get("/latest/meta-data/network/interfaces/macs", t);
    expect(macs.body.match(/([0-9a-f]{2}:){5}[0-9a-f]{2}/g)).toHaveLength(3);
    const mappings = await get("/latest/meta-data/block-device-mapping", t);
    expect(mappings.body.match(/ebs/g)).toHaveLength(1);
    expect((await get("/latest/meta-data/outpost-arn", t)).status).toBe(404);
  });

  it("serves changes made to its metadata", async () => {
    imds.metadata.enis = 5;
    const { token: t } = await token();
    expect((await get("/latest/meta-data/network/interfaces/macs/", t)).body.split("\n")).toHaveLength(5);
  });
});
