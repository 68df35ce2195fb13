import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { statusName } from "../../src/csi/status.ts";
import type { VolumeType } from "../../src/ebs/cloud.ts";
import { renderLimitsMarkdown, VOLUME_LIMITS, VOLUME_TYPES } from "../../src/ebs/limits.ts";
import {
  CREATE_PARAMETERS,
  type CreateVolumeRequestInfo,
  type CurrentVolume,
  MODIFY_PARAMETERS,
  parseCreateParameters,
  parseModifyParameters,
  renderCreateParametersMarkdown,
  renderModifyParametersMarkdown,
} from "../../src/ebs/params.ts";

const GiB = 1024 ** 3;
const BASE: CreateVolumeRequestInfo = {
  name: "pvc-1",
  requiredBytes: 10 * GiB,
  limitBytes: 0,
  extraTags: {},
};
const PVC = {
  "csi.storage.k8s.io/pvc/name": "data-db-0",
  "csi.storage.k8s.io/pvc/namespace": "shop",
  "csi.storage.k8s.io/pv/name": "pvc-1",
};

/** io1 and io2 need IOPS to be created at all. */
const iopsFor = (type: VolumeType): Record<string, string> =>
  VOLUME_LIMITS[type].iops && VOLUME_LIMITS[type].iops?.default === undefined ? { iops: "100" } : {};

const create = (parameters: Record<string, string>, request: Partial<CreateVolumeRequestInfo> = {}) =>
  parseCreateParameters(parameters, { ...BASE, ...request });

function caught(fn: () => unknown): CsiError {
  try {
    fn();
  } catch (err) {
    if (err instanceof CsiError) return err;
    throw err;
  }
  throw new Error("expected a CsiError, got success");
}

/** The gRPC code the caller sees, and a message that starts with the field and carries the rule. */
function expectRejected(fn: () => unknown, code: status, field: string, ...fragments: string[]): void {
  const err = caught(fn);
  expect(statusName(err.code)).toBe(statusName(code));
  expect(err.message.startsWith(`${field}:`), err.message).toBe(true);
  for (const fragment of fragments) expect(err.message).toContain(fragment);
}

const invalid = (fn: () => unknown, field: string, ...fragments: string[]) =>
  expectRejected(fn, status.INVALID_ARGUMENT, field, ...fragments);
const outOfRange = (fn: () => unknown, ...fragments: string[]) =>
  expectRejected(fn, status.OUT_OF_RANGE, "capacity_range", ...fragments);

describe("parseCreateParameters defaults", () => {
  it("makes an unencrypted gp3 volume of the requested size, formatted ext4, with the driver's tags", () => {
    expect(create({})).toEqual({
      disk: {
        sizeGiB: 10,
        type: "gp3",
        encrypted: false,
        tags: { CSIVolumeName: "pvc-1", "ebs.csi.aws.com/cluster": "true" },
      },
      volumeContext: { "csi.storage.k8s.io/fstype": "ext4" },
      fsType: "ext4",
    });
  });

  it("leaves gp3 IOPS and throughput to EC2's defaults", () => {
    const { disk } = create({ type: "gp3" });
    expect(disk).not.toHaveProperty("iops");
    expect(disk).not.toHaveProperty("throughput");
  });
});

describe("parameter keys", () => {
  it.each([
    [{ TYPE: "io2", IOPS: "1000" }],
    [{ Type: "IO2", iOpS: "1000" }],
    [{ type: "io2", Iops: "1000" }],
  ])("matches keys and the type value case-insensitively: %j", (parameters) => {
    const { disk } = create(parameters);
    expect(disk.type).toBe("io2");
    expect(disk.iops).toBe(1000);
  });

  it("refuses one key written twice in different cases", () => {
    invalid(() => create({ iops: "3000", IOPS: "4000" }), "parameters.iops", "repeats parameters.IOPS");
  });

  it("refuses an unknown key and lists the known ones", () => {
    invalid(
      () => create({ speed: "fast" }),
      "parameters.speed",
      "unknown parameter",
      "known: type, iops, iopsPerGB",
    );
  });

  it.each([
    ["allowAutoIOPSIncreaseOnModify", "true", "not supported by this driver"],
    ["outpostArn", "arn:aws:outposts:us-east-1:1:outpost/op-1", "topology"],
  ])("refuses %s, which the official driver knows, with the reason", (key, value, reason) => {
    invalid(() => create({ [key]: value }), `parameters.${key}`, reason);
  });

  it("takes volumeInitializationRate (100-300 MiB/s) only for a volume restored from a snapshot", () => {
    invalid(
      () => create({ volumeInitializationRate: "200" }),
      "parameters.volumeInitializationRate",
      "restored from a snapshot",
    );
    const restore = (value: string) => create({ volumeInitializationRate: value }, { fromSnapshot: true });
    expect(restore("200").disk.initializationRate).toBe(200);
    invalid(() => restore("99"), "parameters.volumeInitializationRate", "100-300 MiB/s");
    invalid(() => restore("fast"), "parameters.volumeInitializationRate", "whole number");
  });

  it("ignores other keys of the external-provisioner", () => {
    expect(() => create({ "csi.storage.k8s.io/provisioner-secret-name": "creds" })).not.toThrow();
  });

  it.each(["tagspecification_1", "TagSpecification_1"])(
    "tells %s that the tag prefix is case-sensitive",
    (key) => {
      invalid(() => create({ [key]: "a=b" }), `parameters.${key}`, "case-sensitive", "tagSpecification_<N>");
    },
  );
});

describe("type", () => {
  it.each(VOLUME_TYPES.map((t) => [t]))("accepts %s", (type) => {
    const { disk } = create({ type, ...iopsFor(type) }, { requiredBytes: 200 * GiB });
    expect(disk.type).toBe(type);
  });

  it.each([
    ["gp4", "unknown type"],
    ["sbp1", "Snowball Edge"],
    ["", "unknown type"],
  ])("refuses %j", (value, reason) => {
    invalid(
      () => create({ type: value }),
      "parameters.type",
      reason,
      "gp3, gp2, io2, io1, st1, sc1, standard",
    );
  });
});

describe("size", () => {
  it.each<[string, VolumeType, number, number, number]>([
    ["1 byte rounds up to 1 GiB", "gp3", 1, 0, 1],
    ["exactly 10 GiB stays 10 GiB", "gp3", 10 * GiB, 0, 10],
    ["10 GiB and 1 byte rounds up to 11 GiB", "gp3", 10 * GiB + 1, 0, 11],
    ["unset uses the 100 GiB default", "gp3", 0, 0, 100],
    ["unset on st1 uses its 125 GiB minimum", "st1", 0, 0, 125],
    ["unset with a 5 GiB limit fits the limit", "gp3", 0, 5 * GiB, 5],
    ["1 GiB of io2 grows to its 4 GiB minimum", "io2", GiB, 0, 4],
    ["1 GiB of sc1 grows to 125 GiB when the limit allows", "sc1", GiB, 125 * GiB, 125],
    ["64 TiB of gp3", "gp3", 65_536 * GiB, 0, 65_536],
    ["a limit equal to the rounded size", "gp3", 1, GiB, 1],
  ])("%s", (_, type, requiredBytes, limitBytes, sizeGiB) => {
    const { disk } = create({ type, ...iopsFor(type) }, { requiredBytes, limitBytes });
    expect(disk.sizeGiB).toBe(sizeGiB);
  });

  it.each(VOLUME_TYPES.map((t) => [t]))("allows %s up to its maximum and refuses one GiB more", (type) => {
    const limits = VOLUME_LIMITS[type];
    const iops = iopsFor(type);
    const atMax = create({ type, ...iops }, { requiredBytes: limits.maxSizeGiB * GiB });
    expect(atMax.disk.sizeGiB).toBe(limits.maxSizeGiB);
    outOfRange(
      () => create({ type, ...iops }, { requiredBytes: limits.maxSizeGiB * GiB + 1 }),
      `required_bytes ${limits.maxSizeGiB * GiB + 1}`,
      `above the ${type} maximum of ${limits.maxSizeGiB} GiB`,
      `${type} volumes are ${limits.minSizeGiB}-${limits.maxSizeGiB} GiB`,
    );
  });

  it.each(VOLUME_TYPES.map((t) => [t]))("refuses a %s limit below the type's minimum", (type) => {
    const limits = VOLUME_LIMITS[type];
    const iops = iopsFor(type);
    const limitBytes = limits.minSizeGiB * GiB - 1;
    outOfRange(
      () => create({ type, ...iops }, { requiredBytes: 1, limitBytes }),
      `limit_bytes ${limitBytes}`,
      `${limits.minSizeGiB} GiB`,
      `${type} volumes are ${limits.minSizeGiB}-${limits.maxSizeGiB} GiB`,
    );
  });

  it("refuses a limit below the rounded-up size", () => {
    outOfRange(
      () => create({}, { requiredBytes: 1.5 * GiB, limitBytes: 1.5 * GiB }),
      "limit_bytes 1610612736 is below 2 GiB",
      "required_bytes 1610612736",
    );
  });

  it("refuses required_bytes above limit_bytes", () => {
    outOfRange(
      () => create({}, { requiredBytes: 3 * GiB, limitBytes: 2 * GiB }),
      "required_bytes 3221225472 is above limit_bytes 2147483648",
    );
  });

  it("refuses an unset size with a limit below 1 GiB", () => {
    outOfRange(() => create({}, { requiredBytes: 0, limitBytes: 500 * 1024 ** 2 }), "limit_bytes 524288000");
  });

  it.each([
    ["capacity_range.required_bytes", { requiredBytes: -1 }],
    ["capacity_range.limit_bytes", { limitBytes: -1 }],
    ["capacity_range.required_bytes", { requiredBytes: 1.5 }],
  ])("refuses a bad %s", (field, request) => {
    invalid(() => create({}, request), field, "whole number of bytes");
  });
});

describe("iops", () => {
  it.each([
    ["gp3 minimum", "gp3", "3000", 1, 3000],
    ["gp3 maximum", "gp3", "80000", 160, 80000],
    ["gp3 baseline on a tiny volume", "gp3", "3000", 1, 3000],
    ["io1 maximum", "io1", "64000", 1280, 64000],
    ["io2 maximum", "io2", "256000", 256, 256000],
    ["io2 minimum", "io2", "100", 4, 100],
  ])("accepts the %s", (_, type, iops, sizeGiB, expected) => {
    expect(create({ type, iops }, { requiredBytes: sizeGiB * GiB }).disk.iops).toBe(expected);
  });

  it.each([
    ["gp3", "2999", 100, "2999 is below the gp3 minimum of 3000 IOPS"],
    ["io1", "99", 100, "99 is below the io1 minimum of 100 IOPS"],
  ])("refuses %s iops %s on %i GiB", (type, iops, sizeGiB, rule) => {
    invalid(() => create({ type, iops }, { requiredBytes: sizeGiB * GiB }), "parameters.iops", rule);
  });

  // As the official driver does, so that its StorageClasses keep working on small volumes.
  it.each([
    ["gp3", "80001", 200, 80000],
    ["gp3", "16000", 10, 5000],
    ["io1", "64001", 2000, 64000],
    ["io1", "1000", 10, 500],
    ["io2", "256001", 300, 256000],
    ["io2", "20000", 10, 10000],
  ])("caps %s iops %s on %i GiB at %i", (type, iops, sizeGiB, expected) => {
    expect(create({ type, iops }, { requiredBytes: sizeGiB * GiB }).disk.iops).toBe(expected);
  });

  it.each(["fast", "-5", "3.5", "1e4", ""])("refuses iops %j that is not a whole number", (iops) => {
    invalid(() => create({ iops }), "parameters.iops", "must be a whole number");
  });

  it("refuses iops together with iopsPerGB, naming both", () => {
    invalid(
      () => create({ type: "io1", iops: "1000", iopsPerGB: "10" }),
      "parameters.iopsPerGB",
      "cannot be combined with parameters.iops",
    );
  });

  it.each(["gp2", "st1", "sc1", "standard"] as const)("refuses IOPS on %s", (type) => {
    invalid(
      () => create({ type, iops: "3000" }, { requiredBytes: 200 * GiB }),
      "parameters.iops",
      `${type} volumes take no provisioned IOPS`,
    );
    invalid(
      () => create({ type, iopsPerGB: "3" }, { requiredBytes: 200 * GiB }),
      "parameters.iopsPerGB",
      `${type} volumes take no provisioned IOPS`,
    );
  });

  it.each(["io1", "io2"])("requires iops or iopsPerGB for %s", (type) => {
    invalid(
      () => create({ type }),
      "parameters.iops",
      `${type} volumes need provisioned IOPS: set iops or iopsPerGB`,
    );
  });
});

describe("iopsPerGB", () => {
  it.each([
    ["multiplies by the size", { type: "io1", iopsPerGB: "10" }, 100, 1000],
    ["caps at the type maximum", { type: "io1", iopsPerGB: "50" }, 2000, 64000],
    ["caps at the type's IOPS per GiB", { type: "io2", iopsPerGB: "2000" }, 10, 10000],
    ["caps gp3 at 80000", { type: "gp3", iopsPerGB: "1000" }, 1000, 80000],
    [
      "raises to the minimum when allowed",
      { type: "io1", iopsPerGB: "10", allowAutoIOPSPerGBIncrease: "true" },
      4,
      100,
    ],
    ["raises gp3 to 3000 when allowed", { iopsPerGB: "10", allowAutoIOPSPerGBIncrease: "TRUE" }, 100, 3000],
  ])("%s", (_, parameters, sizeGiB, iops) => {
    expect(create(parameters, { requiredBytes: sizeGiB * GiB }).disk.iops).toBe(iops);
  });

  it("refuses a product below the minimum and says how to fix it", () => {
    invalid(
      () => create({ type: "io1", iopsPerGB: "10" }, { requiredBytes: 4 * GiB }),
      "parameters.iopsPerGB",
      "10 IOPS per GiB × 4 GiB = 40 IOPS, below the io1 minimum of 100 IOPS",
      'allowAutoIOPSPerGBIncrease: "true"',
    );
    invalid(
      () => create({ iopsPerGB: "10", allowAutoIOPSPerGBIncrease: "false" }, { requiredBytes: 100 * GiB }),
      "parameters.iopsPerGB",
      "below the gp3 minimum of 3000 IOPS",
    );
  });

  it("refuses allowAutoIOPSPerGBIncrease that is not a boolean", () => {
    invalid(
      () => create({ iopsPerGB: "10", allowAutoIOPSPerGBIncrease: "yes" }),
      "parameters.allowAutoIOPSPerGBIncrease",
      'must be "true" or "false"',
    );
  });
});

describe("throughput", () => {
  it.each([
    ["125", {}, 10, 125],
    ["750", {}, 10, 750],
    ["2000", { iops: "8000" }, 16, 2000],
  ])("accepts gp3 throughput %s", (throughput, extra, sizeGiB, expected) => {
    expect(create({ throughput, ...extra }, { requiredBytes: sizeGiB * GiB }).disk.throughput).toBe(expected);
  });

  it.each<[string, Record<string, string>, string[]]>([
    ["124", {}, ["124 is below the gp3 minimum of 125 MiB/s"]],
    ["2001", { iops: "9000" }, ["2001 is above the gp3 maximum of 2000 MiB/s"]],
    ["1000", {}, ["1000 MiB/s needs at least 4000 IOPS", "gets 3000 IOPS"]],
    ["2000", { iops: "7999" }, ["needs at least 8000 IOPS"]],
    ["lots", {}, ["must be a whole number"]],
  ])("refuses gp3 throughput %s", (throughput, extra, rule) => {
    invalid(
      () => create({ throughput, ...extra }, { requiredBytes: 100 * GiB }),
      "parameters.throughput",
      ...rule,
    );
  });

  it("refuses throughput on io2", () => {
    invalid(
      () => create({ type: "io2", iops: "1000", throughput: "500" }),
      "parameters.throughput",
      "io2 volumes take no provisioned throughput; only gp3 does",
    );
  });
});

describe("encryption", () => {
  it.each([
    [{ encrypted: "true" }, true, undefined],
    [{ encrypted: "False" }, false, undefined],
    [
      { kmsKeyId: "arn:aws:kms:us-east-1:111122223333:key/k1" },
      true,
      "arn:aws:kms:us-east-1:111122223333:key/k1",
    ],
    [{ encrypted: "true", kmsKeyId: "alias/ebs" }, true, "alias/ebs"],
    [{ kmsKeyId: "" }, false, undefined],
  ])("%j -> encrypted %s", (parameters, encrypted, kmsKeyId) => {
    const { disk } = create(parameters);
    expect(disk.encrypted).toBe(encrypted);
    expect(disk.kmsKeyId).toBe(kmsKeyId);
  });

  it("refuses a key for a volume that is told not to be encrypted", () => {
    invalid(
      () => create({ encrypted: "false", kmsKeyId: "alias/ebs" }),
      "parameters.kmsKeyId",
      "parameters.encrypted",
    );
  });

  it("refuses encrypted that is not a boolean", () => {
    invalid(() => create({ encrypted: "yes" }), "parameters.encrypted", 'must be "true" or "false"');
  });

  it("refuses a key id with spaces", () => {
    invalid(() => create({ kmsKeyId: "alias/my key" }), "parameters.kmsKeyId", "not a KMS key");
  });
});

describe("blockExpress", () => {
  it("is accepted, and changes nothing, on io2", () => {
    const { disk } = create({ type: "io2", iops: "1000", blockExpress: "true" });
    expect(disk).toEqual(create({ type: "io2", iops: "1000" }).disk);
  });

  it("is refused on other types when true", () => {
    invalid(
      () => create({ blockExpress: "true" }),
      "parameters.blockExpress",
      "only to io2 volumes, not gp3",
    );
    expect(() => create({ blockExpress: "false" })).not.toThrow();
  });
});

describe("filesystem", () => {
  it.each([
    [{ "csi.storage.k8s.io/fstype": "xfs" }, {}, "xfs"],
    [{ fsType: "ext3" }, {}, "ext3"],
    [{ FSTYPE: "ext2" }, {}, "ext2"],
    [{ "csi.storage.k8s.io/fstype": "XFS" }, {}, "xfs"],
    [{ "csi.storage.k8s.io/fstype": "xfs", fsType: "xfs" }, {}, "xfs"],
    [{}, { fsType: "xfs" }, "xfs"],
    [{ "csi.storage.k8s.io/fstype": "xfs" }, { fsType: "xfs" }, "xfs"],
  ])("%j with capability %j -> %s", (parameters, request, fsType) => {
    expect(create(parameters, request).fsType).toBe(fsType);
  });

  it.each(["btrfs", "ntfs", "zfs"])("refuses %s", (fs) => {
    invalid(
      () => create({ "csi.storage.k8s.io/fstype": fs }),
      "parameters.csi.storage.k8s.io/fstype",
      `"${fs}"`,
      "ext2, ext3, ext4, xfs",
    );
    invalid(() => create({ fsType: fs }), "parameters.fsType", `"${fs}"`);
  });

  it("refuses an unsupported capability fs_type", () => {
    invalid(() => create({}, { fsType: "vfat" }), "volume_capabilities.mount.fs_type", '"vfat"');
  });

  it("refuses parameters that contradict each other or the capability", () => {
    invalid(
      () => create({ "csi.storage.k8s.io/fstype": "xfs", fsType: "ext4" }),
      "parameters.fsType",
      "parameters.csi.storage.k8s.io/fstype",
    );
    invalid(() => create({ fsType: "ext4" }, { fsType: "xfs" }), "parameters.fsType", 'fs_type "xfs"');
  });
});

describe("mkfs options -> volume_context", () => {
  it.each([
    [{ blockSize: "4096" }, "ext4", { blocksize: "4096" }],
    [{ blockSize: "512" }, "xfs", { blocksize: "512" }],
    [{ inodeSize: "256" }, "ext4", { inodesize: "256" }],
    [{ inodeSize: "512" }, "xfs", { inodesize: "512" }],
    [{ bytesPerInode: "16384" }, "ext3", { bytesperinode: "16384" }],
    [{ numberOfInodes: "1000000" }, "ext4", { numberofinodes: "1000000" }],
    [{ ext4BigAlloc: "true" }, "ext4", { ext4bigalloc: "true" }],
    [{ ext4BigAlloc: "false" }, "xfs", {}],
    [
      { ext4BigAlloc: "true", ext4ClusterSize: "16384" },
      "ext4",
      { ext4bigalloc: "true", ext4clustersize: "16384" },
    ],
    [
      { BLOCKSIZE: "4096", inodesize: "512", BytesPerInode: "8192", numberofinodes: "12" },
      "ext4",
      { blocksize: "4096", inodesize: "512", bytesperinode: "8192", numberofinodes: "12" },
    ],
  ])("%j on %s", (parameters, fs, volumeContext) => {
    expect(create({ ...parameters, "csi.storage.k8s.io/fstype": fs }).volumeContext).toEqual({
      ...volumeContext,
      "csi.storage.k8s.io/fstype": fs,
    });
  });

  it.each([
    [{ blockSize: "4k" }, "ext4", "parameters.blockSize", "must be a whole number"],
    [{ blockSize: "512" }, "ext4", "parameters.blockSize", "from 1024 to 65536 for ext4"],
    [{ blockSize: "3000" }, "ext4", "parameters.blockSize", "a power of 2"],
    [{ inodeSize: "4096" }, "xfs", "parameters.inodeSize", "from 256 to 2048 for xfs"],
    [
      { blockSize: "1024", inodeSize: "2048" },
      "ext4",
      "parameters.inodeSize",
      "larger than the block size 1024",
    ],
    [{ bytesPerInode: "16384" }, "xfs", "parameters.bytesPerInode", "does not apply to xfs"],
    [{ numberOfInodes: "100" }, "xfs", "parameters.numberOfInodes", "does not apply to xfs"],
    [{ bytesPerInode: "512" }, "ext4", "parameters.bytesPerInode", "from 1024"],
    [{ ext4BigAlloc: "true" }, "ext3", "parameters.ext4BigAlloc", "does not apply to ext3"],
    [{ ext4BigAlloc: "on" }, "ext4", "parameters.ext4BigAlloc", 'must be "true" or "false"'],
    [{ ext4ClusterSize: "16384" }, "ext4", "parameters.ext4ClusterSize", 'needs ext4BigAlloc: "true"'],
    [{ ext4BigAlloc: "true", ext4ClusterSize: "1000" }, "ext4", "parameters.ext4ClusterSize", "a power of 2"],
    [{ ext4ClusterSize: "16384" }, "xfs", "parameters.ext4ClusterSize", "does not apply to xfs"],
  ])("refuses %j on %s", (parameters, fs, field, rule) => {
    invalid(() => create({ ...parameters, "csi.storage.k8s.io/fstype": fs }), field, rule);
  });

  it("refuses mkfs options for a raw block volume", () => {
    invalid(() => create({ blockSize: "4096" }, { block: true }), "parameters.blockSize", "raw block device");
    expect(create({}, { block: true }).volumeContext).toEqual({});
  });
});

describe("tags", () => {
  it("adds the created-for tags from the provisioner's metadata", () => {
    expect(create(PVC).disk.tags).toEqual({
      CSIVolumeName: "pvc-1",
      "ebs.csi.aws.com/cluster": "true",
      "kubernetes.io/created-for/pvc/name": "data-db-0",
      "kubernetes.io/created-for/pvc/namespace": "shop",
      "kubernetes.io/created-for/pv/name": "pvc-1",
    });
  });

  it("adds the cluster's tags when a cluster id is set", () => {
    expect(create({}, { clusterId: "prod" }).disk.tags).toMatchObject({
      "kubernetes.io/cluster/prod": "owned",
      KubernetesCluster: "prod",
      Name: "prod-dynamic-pvc-1",
    });
  });

  it("adds extra tags, and a tagSpecification may override one", () => {
    const { tags } = create(
      { tagSpecification_1: "team=storage" },
      { extraTags: { team: "infra", cost: "42" } },
    ).disk;
    expect(tags).toMatchObject({ team: "storage", cost: "42" });
  });

  it.each([
    ["team=storage", { team: "storage" }],
    ["k=a=b", { k: "a=b" }],
    ["empty=", { empty: "" }],
    ["owner={{ .PVCNamespace }}/{{ .PVCName }}", { owner: "shop/data-db-0" }],
    ["pv={{.PVName}}", { pv: "pvc-1" }],
    ["upper={{ .PVCName | toUpper }}", { upper: "DATA-DB-0" }],
    ["lower={{ toLower .PVCNamespace }}", { lower: "shop" }],
    ["plain=}} stays", { plain: "}} stays" }],
  ])("tagSpecification %j", (spec, expected) => {
    expect(create({ ...PVC, tagSpecification_1: spec }).disk.tags).toMatchObject(expected);
  });

  it.each([
    ["no-equals-sign", "is not key=value"],
    ["=value", "tag key must not be empty"],
    ["CSIVolumeName=other", "reserved for the driver"],
    ["ebs.csi.aws.com/cluster=false", "reserved for the driver"],
    ["aws:cloudformation:stack=x", "aws: prefix is reserved"],
    ["AWS:thing=x", "aws: prefix is reserved"],
    ["kubernetes.io/created-for/pvc/name=x", "kubernetes.io prefix is reserved"],
    ["owner={{ .PVCName", '"{{" without "}}"'],
    ["owner={{ .Foo }}", "unknown template field .Foo"],
    ['owner={{ printf "%s" .PVCName }}', "unsupported template"],
    ["owner={{ .PVCName | title }}", "unsupported template"],
    [`${"k".repeat(129)}=v`, "129 characters; EC2 allows 128"],
    [`k=${"v".repeat(257)}`, "257 characters; EC2 allows 256"],
  ])("refuses tagSpecification %j", (spec, rule) => {
    invalid(() => create({ ...PVC, tagSpecification_1: spec }), "parameters.tagSpecification_1", rule);
  });

  it("accepts keys of 128 and values of 256 characters", () => {
    const key = "k".repeat(128);
    expect(create({ tagSpecification_1: `${key}=${"v".repeat(256)}` }).disk.tags[key]).toHaveLength(256);
  });

  it("needs the provisioner's metadata to fill a template", () => {
    invalid(
      () => create({ tagSpecification_1: "owner={{ .PVCName }}" }),
      "parameters.tagSpecification_1",
      "csi.storage.k8s.io/pvc/name",
      "--extra-create-metadata",
    );
  });

  it("refuses two tagSpecifications that give one key different values, naming both", () => {
    invalid(
      () => create({ tagSpecification_1: "team=a", tagSpecification_2: "team=b" }),
      "parameters.tagSpecification_2",
      "parameters.tagSpecification_1",
    );
    expect(create({ tagSpecification_1: "team=a", tagSpecification_2: "team=a" }).disk.tags.team).toBe("a");
  });

  it.each([
    ["CSIVolumeName", "reserved for the driver"],
    ["aws:owner", "aws: prefix is reserved"],
    ["kubernetes.io/cluster/x", "kubernetes.io prefix is reserved"],
  ])("refuses the extra tag %s", (key, rule) => {
    invalid(() => create({}, { extraTags: { [key]: "x" } }), `extraTags.${key}`, rule);
  });

  it("refuses more than 50 tags in all", () => {
    const specs = Object.fromEntries(
      Array.from({ length: 49 }, (_, i) => [`tagSpecification_${i}`, `t${i}=v`]),
    );
    invalid(() => create(specs), "parameters", "51 tags", "EC2 allows 50");
    delete specs.tagSpecification_0;
    expect(Object.keys(create(specs).disk.tags)).toHaveLength(50);
  });
});

describe("mutable_parameters at creation", () => {
  it("win over the StorageClass's parameters", () => {
    const { disk } = create(
      { type: "gp3", iops: "4000", tagSpecification_1: "tier=gold" },
      { mutableParameters: { type: "io2", iops: "5000", tagSpecification_1: "tier=platinum" } },
    );
    expect(disk).toMatchObject({ type: "io2", iops: 5000, tags: { tier: "platinum" } });
  });

  it("replace iopsPerGB with iops without a conflict", () => {
    const { disk } = create(
      { type: "io1", iopsPerGB: "10" },
      { requiredBytes: 100 * GiB, mutableParameters: { iops: "2000" } },
    );
    expect(disk.iops).toBe(2000);
  });

  it("are checked with the VolumeAttributesClass rules", () => {
    invalid(
      () => create({}, { mutableParameters: { encrypted: "true" } }),
      "mutable_parameters.encrypted",
      "unknown parameter",
    );
    invalid(
      () => create({}, { mutableParameters: { iops: "1" } }),
      "mutable_parameters.iops",
      "below the gp3 minimum",
    );
  });
});

describe("parseModifyParameters", () => {
  const gp3: CurrentVolume = { sizeGiB: 100, type: "gp3" };

  it.each([
    ["nothing", {}, gp3, {}],
    ["a new type and iops", { type: "io2", iops: "5000" }, gp3, { type: "io2", iops: 5000 }],
    ["the current type as no change", { type: "gp3" }, gp3, {}],
    [
      "the deprecated volumeType key",
      { volumeType: "gp3" },
      { sizeGiB: 100, type: "gp2" as VolumeType },
      { type: "gp3" },
    ],
    ["keys in any case", { IOPS: "4000", ThroughPut: "500" }, gp3, { iops: 4000, throughput: 500 }],
    ["throughput alone, whose IOPS EC2 keeps", { throughput: "900" }, gp3, { throughput: 900 }],
    [
      "iopsPerGB on the current size",
      { iopsPerGB: "10" },
      { sizeGiB: 200, type: "io1" as VolumeType },
      { iops: 2000 },
    ],
    [
      "the largest gp3",
      { iops: "80000", throughput: "2000" },
      { sizeGiB: 160, type: "gp3" as VolumeType },
      { iops: 80000, throughput: 2000 },
    ],
  ])("accepts %s", (_, mutable, current, modify) => {
    expect(parseModifyParameters(mutable, current)).toEqual({ modify, tags: {} });
  });

  it.each<[string, Record<string, string>, CurrentVolume, string[]]>([
    [
      "mutable_parameters.iops",
      { iops: "100" },
      { sizeGiB: 10, type: "gp2" },
      ["gp2 volumes take no provisioned IOPS"],
    ],
    [
      "mutable_parameters.iopsPerGB",
      { iops: "3000", iopsPerGB: "10" },
      gp3,
      ["cannot be combined with mutable_parameters.iops"],
    ],
    [
      "mutable_parameters.iopsPerGB",
      { iopsPerGB: "1" },
      { sizeGiB: 10, type: "io1" },
      ["below the io1 minimum", "raise it or request a larger volume"],
    ],
    ["mutable_parameters.type", { type: "io1" }, gp3, ["changing to io1 needs provisioned IOPS"]],
    [
      "mutable_parameters.type",
      { type: "st1" },
      { sizeGiB: 10, type: "gp3" },
      ["a 10 GiB volume cannot become st1", "125-16384 GiB"],
    ],
    ["mutable_parameters.type", { type: "gp9" }, gp3, ["unknown type"]],
    [
      "mutable_parameters.volumeType",
      { type: "gp3", volumeType: "io2" },
      gp3,
      ["contradicts mutable_parameters.type"],
    ],
    [
      "mutable_parameters.throughput",
      { type: "gp3", throughput: "1000" },
      { sizeGiB: 100, type: "gp2" },
      ["needs at least 4000 IOPS"],
    ],
    [
      "mutable_parameters.throughput",
      { throughput: "500" },
      { sizeGiB: 100, type: "io2" },
      ["only gp3 does"],
    ],
    ["mutable_parameters.throughput", { throughput: "2001" }, gp3, ["above the gp3 maximum of 2000 MiB/s"]],
    ["mutable_parameters.tagDeletion_1", { tagDeletion_1: "team" }, gp3, ["not supported by this driver"]],
    [
      "mutable_parameters.allowAutoIOPSIncreaseOnModify",
      { allowAutoIOPSIncreaseOnModify: "true" },
      gp3,
      ["not supported"],
    ],
    [
      "mutable_parameters.encrypted",
      { encrypted: "true" },
      gp3,
      ["unknown parameter", "known: type, volumeType, iops"],
    ],
    [
      "mutable_parameters.tagSpecification_1",
      { tagSpecification_1: "CSIVolumeName=x" },
      gp3,
      ["reserved for the driver"],
    ],
    ["mutable_parameters.tagspecification_1", { tagspecification_1: "a=b" }, gp3, ["case-sensitive"]],
  ])("refuses %s in %j", (field, mutable, current, rule) => {
    invalid(() => parseModifyParameters(mutable, current), field, ...rule);
  });

  it("returns tags to add, templated from the resizer's metadata", () => {
    const result = parseModifyParameters(
      { ...PVC, tagSpecification_1: "owner={{ .PVCNamespace }}", tagSpecification_2: "tier=gold" },
      gp3,
    );
    expect(result).toEqual({ modify: {}, tags: { owner: "shop", tier: "gold" } });
  });

  it("needs the resizer's metadata to fill a template", () => {
    invalid(
      () => parseModifyParameters({ tagSpecification_1: "owner={{ .PVCName }}" }, gp3),
      "mutable_parameters.tagSpecification_1",
      "--extra-modify-metadata",
    );
  });
});

describe("limits table", () => {
  it("carries the 2025 gp3 limits and the io2 ratio", () => {
    expect(VOLUME_LIMITS.gp3).toMatchObject({
      maxSizeGiB: 65_536,
      iops: { min: 3000, max: 80_000, maxPerGiB: 500, default: 3000 },
      throughput: { min: 125, max: 2000, default: 125 },
    });
    expect(VOLUME_LIMITS.io2).toMatchObject({ minSizeGiB: 4, maxSizeGiB: 65_536, multiAttach: true });
    expect(VOLUME_LIMITS.io2.iops).toMatchObject({ max: 256_000, maxPerGiB: 1000 });
  });

  it("renders one Markdown row per type", () => {
    const markdown = renderLimitsMarkdown();
    for (const type of VOLUME_TYPES) expect(markdown).toContain(`| \`${type}\``);
    expect(markdown).toContain("3,000 – 80,000 (default 3,000)");
    expect(markdown.trim().split("\n")).toHaveLength(VOLUME_TYPES.length + 2);
  });

  it("renders every parameter the code accepts", () => {
    const create = renderCreateParametersMarkdown();
    for (const { key } of CREATE_PARAMETERS) expect(create).toContain(`\`${key}\``);
    const modify = renderModifyParametersMarkdown();
    for (const { key } of MODIFY_PARAMETERS) expect(modify).toContain(`\`${key}\``);
  });
});
