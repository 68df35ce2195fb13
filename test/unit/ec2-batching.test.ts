import { EC2Client, type Filter, type Volume } from "@aws-sdk/client-ec2";
import { describe, expect, it } from "vitest";
import { ClientPerAction } from "../../src/aws/sdk.ts";
import { runInCallScope } from "../../src/call-scope.ts";
import { CloudError, isCloudError } from "../../src/ebs/cloud.ts";
import { SdkEc2, toCloudError } from "../../src/ebs/ec2.ts";
import { createLogger } from "../../src/log.ts";

const log = createLogger("silent");

interface SentCommand {
  name: string;
  input: Record<string, unknown>;
  options?: { abortSignal?: AbortSignal };
}

type Handler = (command: SentCommand) => unknown;

/** A real EC2Client (the SDK paginators check for one) whose `send` never leaves the process. */
function stubEc2(handler: Handler, batching = true, batchWindowMs = 5) {
  const sent: SentCommand[] = [];
  const client = new EC2Client({ region: "us-east-1" });
  client.send = (async (command: { input: Record<string, unknown> }, options?: SentCommand["options"]) => {
    const call = { name: command.constructor.name.replace(/Command$/, ""), input: command.input, options };
    sent.push(call);
    await new Promise((resolve) => setTimeout(resolve, 1));
    return handler(call);
  }) as unknown as EC2Client["send"];
  return { ec2: new SdkEc2({ client, batching, batchWindowMs, log }), sent };
}

const idsOf = (input: Record<string, unknown>, filterName: string): string[] =>
  ((input["Filters"] as Filter[] | undefined) ?? []).find((f) => f.Name === filterName)?.Values ?? [];

/** Every id that starts with "vol-" exists, with a size derived from its number. */
const volume = (id: string): Volume => ({
  VolumeId: id,
  Size: Number(id.slice(4)) + 1,
  VolumeType: "gp3",
  AvailabilityZone: "us-east-1a",
  State: "available",
  Encrypted: false,
  SnapshotId: "",
  Tags: [{ Key: "CSIVolumeName", Value: `pvc-${id}` }],
  Attachments: [],
});
const describeKnown: Handler = ({ input }) => ({
  Volumes: idsOf(input, "volume-id")
    .filter((id) => id.startsWith("vol-"))
    .map(volume),
});

const volIds = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `vol-${from + i}`);

describe("getVolumes", () => {
  it("merges 50 concurrent lookups into one DescribeVolumes, with a volume-id filter", async () => {
    const { ec2, sent } = stubEc2(describeKnown);
    const results = await Promise.all(volIds(50).map((id) => ec2.getVolumes([id])));
    expect(sent).toHaveLength(1);
    expect(sent[0]?.name).toBe("DescribeVolumes");
    expect(sent[0]?.input["VolumeIds"]).toBeUndefined();
    expect(new Set(idsOf(sent[0]!.input, "volume-id"))).toEqual(new Set(volIds(50)));
    // Each caller gets its own volume, and only it.
    results.forEach((map, i) => {
      expect([...map.keys()]).toEqual([`vol-${i}`]);
      expect(map.get(`vol-${i}`)?.sizeGiB).toBe(i + 1);
    });
  });

  it("sends one DescribeVolumes per call without batching", async () => {
    const { ec2, sent } = stubEc2(describeKnown, false);
    const results = await Promise.all(volIds(50).map((id) => ec2.getVolumes([id])));
    expect(sent).toHaveLength(50);
    expect(results.map((map, i) => map.get(`vol-${i}`)?.sizeGiB)).toEqual(volIds(50).map((_, i) => i + 1));
  });

  it("leaves unknown ids out of the result, for the caller that asked and no other", async () => {
    const { ec2, sent } = stubEc2(describeKnown);
    const [known, unknown, mixed] = await Promise.all([
      ec2.getVolumes(["vol-1"]),
      ec2.getVolumes(["nope-1"]),
      ec2.getVolumes(["vol-2", "nope-2", "vol-2"]),
    ]);
    expect(sent).toHaveLength(1);
    expect([...known.keys()]).toEqual(["vol-1"]);
    expect(unknown.size).toBe(0);
    expect([...mixed.keys()]).toEqual(["vol-2"]);
  });

  it("rejects every caller of a batch whose call failed, with a CloudError", async () => {
    const { ec2, sent } = stubEc2(() => {
      throw Object.assign(new Error("Request limit exceeded."), {
        name: "RequestLimitExceeded",
        $metadata: { httpStatusCode: 503 },
      });
    });
    const results = await Promise.allSettled(volIds(10).map((id) => ec2.getVolumes([id])));
    expect(sent).toHaveLength(1);
    for (const r of results) {
      expect(r.status).toBe("rejected");
      const err = (r as PromiseRejectedResult).reason;
      expect(isCloudError(err, "Throttled")).toBe(true);
      expect((err as CloudError).message).toMatch(/RequestLimitExceeded: Request limit exceeded/);
    }
  });

  it("keeps batches to 500 ids: 600 ids cost 2 calls", async () => {
    const { ec2, sent } = stubEc2(describeKnown);
    const results = await Promise.all(volIds(600).map((id) => ec2.getVolumes([id])));
    expect(sent.map((c) => idsOf(c.input, "volume-id").length).sort()).toEqual([100, 500]);
    expect(results.every((map, i) => map.has(`vol-${i}`))).toBe(true);
  });

  it("splits one large lookup into 500-id calls without batching", async () => {
    const { ec2, sent } = stubEc2(describeKnown, false);
    const found = await ec2.getVolumes(volIds(1001));
    expect(sent.map((c) => idsOf(c.input, "volume-id").length)).toEqual([500, 500, 1]);
    expect(found.size).toBe(1001);
  });

  it("follows NextToken pages of a batch", async () => {
    const { ec2, sent } = stubEc2(({ input }) => {
      const ids = idsOf(input, "volume-id");
      const half = Math.ceil(ids.length / 2);
      return input["NextToken"] === "page-2"
        ? { Volumes: ids.slice(half).map(volume) }
        : { Volumes: ids.slice(0, half).map(volume), NextToken: "page-2" };
    });
    const results = await Promise.all(volIds(20).map((id) => ec2.getVolumes([id])));
    expect(sent).toHaveLength(2);
    expect(results.every((map, i) => map.has(`vol-${i}`))).toBe(true);
  });

  it("makes no call for an empty list", async () => {
    const { ec2, sent } = stubEc2(describeKnown);
    expect((await ec2.getVolumes([])).size).toBe(0);
    expect(sent).toHaveLength(0);
  });

  it("converts EC2's shape: empty SnapshotId dropped, tags as a record", async () => {
    const { ec2 } = stubEc2(describeKnown);
    const disk = (await ec2.getVolumes(["vol-4"])).get("vol-4");
    expect(disk).toEqual({
      id: "vol-4",
      sizeGiB: 5,
      type: "gp3",
      encrypted: false,
      zone: "us-east-1a",
      state: "available",
      multiAttach: false,
      tags: { CSIVolumeName: "pvc-vol-4" },
      attachments: [],
    });
  });
});

describe("getInstances", () => {
  const instance = (id: string) => ({
    InstanceId: id,
    InstanceType: "m5.large",
    Placement: { AvailabilityZone: "us-east-1b" },
    State: { Name: "running" },
    BlockDeviceMappings: [
      { DeviceName: "/dev/xvda", Ebs: { VolumeId: `vol-root-${id}` } },
      { DeviceName: "/dev/xvdba", Ebs: { VolumeId: `vol-data-${id}` } },
    ],
  });
  const describeInstances: Handler = ({ input }) => ({
    Reservations: idsOf(input, "instance-id")
      .filter((id) => id.startsWith("i-"))
      .map((id) => ({ Instances: [instance(id)] })),
  });

  it("merges concurrent lookups into one DescribeInstances and maps block devices", async () => {
    const { ec2, sent } = stubEc2(describeInstances);
    const ids = Array.from({ length: 30 }, (_, i) => `i-${i}`);
    const results = await Promise.all([...ids, "nope"].map((id) => ec2.getInstances([id])));
    expect(sent).toHaveLength(1);
    expect(sent[0]?.name).toBe("DescribeInstances");
    expect(results[30]?.size).toBe(0);
    const first = results[0]?.get("i-0");
    expect(first).toMatchObject({ id: "i-0", zone: "us-east-1b", type: "m5.large", state: "running" });
    expect([...(first?.devices ?? [])]).toEqual([
      ["/dev/xvda", "vol-root-i-0"],
      ["/dev/xvdba", "vol-data-i-0"],
    ]);
  });
});

describe("listVolumesWithTag", () => {
  const all = volIds(7);

  /** pagesLikeEc2: honours MaxResults with NextToken; otherwise answers everything, as moto does. */
  function listing(pagesLikeEc2: boolean) {
    return stubEc2(({ input }) => {
      expect(idsOf(input, "tag-key")).toEqual(["CSIVolumeName"]);
      const max = input["MaxResults"] as number;
      expect(max).toBeGreaterThanOrEqual(5);
      expect(max).toBeLessThanOrEqual(500);
      if (!pagesLikeEc2) return { Volumes: all.map(volume) };
      const start = input["NextToken"] ? Number(input["NextToken"]) : 0;
      const end = start + max;
      return {
        Volumes: all.slice(start, end).map(volume),
        NextToken: end < all.length ? String(end) : undefined,
      };
    }, false);
  }

  for (const pagesLikeEc2 of [true, false]) {
    for (const pageSize of [1, 2, 3, 5, 6, 7, 10]) {
      it(`returns every volume once in pages of ${pageSize} (${pagesLikeEc2 ? "EC2" : "moto"} paging)`, async () => {
        const { ec2 } = listing(pagesLikeEc2);
        const seen: string[] = [];
        let token: string | undefined;
        let pages = 0;
        do {
          const page = await ec2.listVolumesWithTag("CSIVolumeName", pageSize, token);
          expect(page.disks.length).toBeLessThanOrEqual(pageSize);
          seen.push(...page.disks.map((d) => d.id));
          token = page.nextToken;
          pages++;
        } while (token && pages < 20);
        expect(seen).toEqual(all);
        expect(pages).toBeLessThanOrEqual(Math.ceil(all.length / pageSize) + 1);
      });
    }
  }

  it("returns everything in one page when maxResults is 0", async () => {
    const { ec2 } = listing(false);
    const page = await ec2.listVolumesWithTag("CSIVolumeName", 0);
    expect(page.disks).toHaveLength(7);
    expect(page.nextToken).toBeUndefined();
  });

  it("refuses a token it did not make", async () => {
    const { ec2 } = listing(false);
    await expect(ec2.listVolumesWithTag("CSIVolumeName", 3, "garbage")).rejects.toSatisfy((e) =>
      isCloudError(e, "InvalidParameter"),
    );
  });
});

describe("other calls", () => {
  it("creates with tags and the client token in the same call, and optional fields only when set", async () => {
    const { ec2, sent } = stubEc2(({ input }) => ({
      VolumeId: "vol-9",
      Size: input["Size"],
      State: "creating",
    }));
    const disk = await ec2.createVolume({
      clientToken: "abc",
      zone: "us-east-1a",
      sizeGiB: 10,
      type: "gp3",
      encrypted: false,
      tags: { CSIVolumeName: "pvc-1" },
    });
    expect(sent[0]?.input).toEqual({
      ClientToken: "abc",
      AvailabilityZone: "us-east-1a",
      Size: 10,
      VolumeType: "gp3",
      TagSpecifications: [{ ResourceType: "volume", Tags: [{ Key: "CSIVolumeName", Value: "pvc-1" }] }],
    });
    expect(disk).toMatchObject({ id: "vol-9", state: "creating", tags: { CSIVolumeName: "pvc-1" } });
  });

  it("caches instance type limits for the process and reports unknown types as undefined", async () => {
    const { ec2, sent } = stubEc2(({ input }) => {
      const type = (input["InstanceTypes"] as string[])[0];
      if (type === "zz.large")
        throw Object.assign(new Error("no such type"), { name: "InvalidInstanceType" });
      return {
        InstanceTypes: [
          { InstanceType: type, EbsInfo: { MaximumEbsAttachments: 27, AttachmentLimitType: "shared" } },
        ],
      };
    });
    expect(
      (
        await Promise.all([ec2.getInstanceTypeEbsInfo("m5.large"), ec2.getInstanceTypeEbsInfo("m5.large")])
      ).map((info) => info?.maxAttachments),
    ).toEqual([27, 27]);
    expect(await ec2.getInstanceTypeEbsInfo("m5.large")).toEqual({ maxAttachments: 27, limitType: "shared" });
    expect(await ec2.getInstanceTypeEbsInfo("zz.large")).toBeUndefined();
    expect(sent).toHaveLength(2);
  });

  it("reads a never-modified volume's InvalidVolumeModification.NotFound as no modification", async () => {
    const { ec2 } = stubEc2(() => {
      throw Object.assign(new Error("Modification for volume 'vol-1' does not exist."), {
        name: "InvalidVolumeModification.NotFound",
      });
    });
    expect(await ec2.getModification("vol-1")).toBeUndefined();
  });

  it("picks the latest modification", async () => {
    const { ec2 } = stubEc2(() => ({
      VolumesModifications: [
        { ModificationState: "completed", TargetSize: 20, StartTime: new Date(1000) },
        { ModificationState: "optimizing", TargetSize: 30, TargetIops: 4000, StartTime: new Date(2000) },
      ],
    }));
    expect(await ec2.getModification("vol-1")).toEqual({
      state: "optimizing",
      targetSizeGiB: 30,
      targetIops: 4000,
    });
  });
});

describe("toCloudError", () => {
  const awsError = (name: string, message = "m", status = 400) =>
    Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status, requestId: "r" } });

  it.each([
    ["InvalidVolume.NotFound", "NotFound"],
    ["InvalidInstanceID.NotFound", "NotFound"],
    ["InvalidAttachment.NotFound", "NotFound"],
    ["InvalidVolumeID.Malformed", "NotFound"],
    ["InvalidInstanceID.Malformed", "NotFound"],
    ["InvalidZone.NotFound", "InvalidParameter"],
    ["InvalidParameterValue", "InvalidParameter"],
    ["VolumeInUse", "InUse"],
    ["IncorrectState", "InUse"],
    ["IdempotentParameterMismatch", "IdempotentParameterMismatch"],
    ["AttachmentLimitExceeded", "AttachmentLimitExceeded"],
    ["UnauthorizedOperation", "Unauthorized"],
    ["AuthFailure", "Unauthorized"],
    ["RequestLimitExceeded", "Throttled"],
    ["ThrottlingException", "Throttled"],
    ["SomethingNew", "Other"],
  ])("%s -> %s", (code, kind) => {
    const err = toCloudError(awsError(code, "what AWS said"));
    expect(err).toBeInstanceOf(CloudError);
    expect(err.kind).toBe(kind);
    expect(err.awsCode).toBe(code);
    expect(err.message).toBe(`${code}: what AWS said`);
  });

  it("reads a malformed id reported as InvalidParameterValue as NotFound", () => {
    const err = toCloudError(
      awsError("InvalidParameterValue", 'Invalid id: "vol-xyz" (expecting "vol-...")'),
    );
    expect(err.kind).toBe("NotFound");
  });

  it("maps 5xx answers and network failures to Unavailable", () => {
    expect(toCloudError(awsError("InternalFailure", "m", 500)).kind).toBe("Unavailable");
    expect(
      toCloudError(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })).kind,
    ).toBe("Unavailable");
    expect(toCloudError(awsError("TimeoutError", "timed out", 0)).kind).toBe("Unavailable");
  });
});

describe("findVolumesByTag", () => {
  /** Every tag value "pvc-vol-N" names volume vol-N. */
  const describeByName: Handler = ({ input }) => ({
    Volumes: idsOf(input, "tag:CSIVolumeName")
      .filter((name) => name.startsWith("pvc-vol-"))
      .map((name) => volume(name.slice(4))),
  });

  it("merges concurrent CreateVolume name lookups into one DescribeVolumes with a tag filter", async () => {
    const { ec2, sent } = stubEc2(describeByName);
    const names = [...volIds(30).map((id) => `pvc-${id}`), "pvc-missing"];
    const results = await Promise.all(names.map((name) => ec2.findVolumesByTag("CSIVolumeName", name)));
    expect(sent).toHaveLength(1);
    expect(new Set(idsOf(sent[0]!.input, "tag:CSIVolumeName"))).toEqual(new Set(names));
    results.slice(0, 30).forEach((disks, i) => {
      expect(disks.map((d) => d.id)).toEqual([`vol-${i}`]);
    });
    expect(results[30]).toEqual([]);
  });

  it("sends one call per lookup without batching", async () => {
    const { ec2, sent } = stubEc2(describeByName, false);
    await Promise.all(volIds(5).map((id) => ec2.findVolumesByTag("CSIVolumeName", `pvc-${id}`)));
    expect(sent).toHaveLength(5);
  });
});

describe("getZones", () => {
  it("asks EC2 once for many CreateVolume calls, and again after a failure", async () => {
    let fail = true;
    const { ec2, sent } = stubEc2(() => {
      if (fail) {
        fail = false;
        throw Object.assign(new Error("boom"), { name: "InternalError", $metadata: { httpStatusCode: 500 } });
      }
      return {
        AvailabilityZones: [
          { ZoneName: "us-east-1b", State: "available", ZoneType: "availability-zone" },
          { ZoneName: "us-east-1a", State: "available", ZoneType: "availability-zone" },
          { ZoneName: "us-east-1-lax-1a", State: "available", ZoneType: "local-zone" },
        ],
      };
    });
    await expect(ec2.getZones()).rejects.toThrow();
    const answers = await Promise.all(Array.from({ length: 20 }, () => ec2.getZones()));
    for (const zones of answers) expect(zones).toEqual(["us-east-1a", "us-east-1b"]);
    expect(sent.filter((c) => c.name === "DescribeAvailabilityZones")).toHaveLength(2);
  });
});

describe("cancellation and rate limiters", () => {
  it("gives mutations the abort signal of the CSI call, and batched lookups none", async () => {
    const { ec2, sent } = stubEc2((call) =>
      call.name === "CreateVolume"
        ? { VolumeId: "vol-9", Size: 1, VolumeType: "gp3", State: "creating" }
        : describeKnown(call),
    );
    const caller = new AbortController();
    await runInCallScope(caller.signal, async () => {
      await ec2.createVolume({
        clientToken: "t",
        zone: "us-east-1a",
        sizeGiB: 1,
        type: "gp3",
        encrypted: false,
        tags: {},
      });
      await ec2.getVolumes(["vol-1"]);
    });
    expect(sent.find((c) => c.name === "CreateVolume")?.options?.abortSignal).toBe(caller.signal);
    // A batch serves many callers: one caller giving up must not fail the others.
    expect(sent.find((c) => c.name === "DescribeVolumes")?.options?.abortSignal).toBeUndefined();
  });

  it("reports a call its caller cancelled as Cancelled, not as an AWS failure", () => {
    const aborted = Object.assign(new Error("Request aborted"), { name: "AbortError" });
    expect(toCloudError(aborted).kind).toBe("Cancelled");
  });

  it("keeps one client, and so one adaptive rate limiter, per API action", () => {
    const made: { destroyed: boolean }[] = [];
    const pool = new ClientPerAction(() => {
      const client = {
        destroyed: false,
        destroy() {
          client.destroyed = true;
        },
      };
      made.push(client);
      return client;
    });
    expect(pool.for("DescribeVolumes")).toBe(pool.for("DescribeVolumes"));
    expect(pool.for("AttachVolume")).not.toBe(pool.for("DescribeVolumes"));
    pool.destroy();
    expect(made.map((c) => c.destroyed)).toEqual([true, true]);
  });

  it("makes the clients of the actions it prepares once, before their first calls", () => {
    const made: string[] = [];
    const pool = new ClientPerAction((action) => {
      made.push(action);
      return { action, destroy() {} };
    });
    const attach = pool.for("AttachVolume");
    pool.prepare(["DeleteVolume", "AttachVolume", "CreateVolume"]);
    expect(made).toEqual(["AttachVolume", "DeleteVolume", "CreateVolume"]);
    // The first DeleteVolume call finds its client made: nothing more is built.
    expect(pool.for("DeleteVolume").action).toBe("DeleteVolume");
    expect(pool.for("AttachVolume")).toBe(attach);
    pool.prepare(["DeleteVolume"]);
    expect(made).toHaveLength(3);
  });
});
