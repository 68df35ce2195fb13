// Over a thousand malformed requests against the controller RPCs, generated from tables (each RPC
// crossed with each kind of bad field, in several variants), sent concurrently. Each must be turned
// away with the code the CSI spec gives and a message that names the field, never with INTERNAL or
// a stack trace, and the driver must go on serving afterwards.
import { DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { inflightKey } from "../../src/server/rpc.ts";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";

const GiB = 1024 ** 3;
const UNKNOWN_VOLUME = "vol-0123456789abcdef0";
const UNKNOWN_INSTANCE = "i-0123456789abcdef0";
const BATCH = 100;

type Rpc =
  | "CreateVolume"
  | "DeleteVolume"
  | "ControllerPublishVolume"
  | "ControllerUnpublishVolume"
  | "ValidateVolumeCapabilities"
  | "ControllerExpandVolume"
  | "ControllerGetVolume"
  | "ControllerModifyVolume"
  | "ListVolumes"
  | "CreateSnapshot"
  | "DeleteSnapshot"
  | "ListSnapshots"
  | "GetSnapshot";

/**
 * What a case must get. NOT_CONFIRMED: ValidateVolumeCapabilities answers OK without `confirmed`
 * and with a message, which is how the spec says "this capability is not supported".
 */
type Outcome = "INVALID_ARGUMENT" | "NOT_FOUND" | "ABORTED" | "NOT_CONFIRMED";

interface Case {
  rpc: Rpc;
  kind: string;
  request: Record<string, unknown>;
  outcome: Outcome;
  /** A substring the message must contain: the field (or the id) at fault. */
  field: string;
}

type Req = Record<string, unknown>;

let env: EbsEnv;
/** A real, detached volume: cases that need an existing volume to get past the lookup use it. */
let volumeId: string;

beforeAll(async () => {
  env = await startEbsEnv({ mode: "controller" });
  const created = await env.client.call("Controller", "CreateVolume", {
    name: "pvc-malformed-fixture",
    capacity_range: { required_bytes: GiB },
    volume_capabilities: [cap("ext4")],
  });
  volumeId = created.volume.volume_id;
}, 120_000);

afterAll(async () => {
  await env?.stop();
});

// --- the tables ---

function cap(fsType: string | "block", mode: unknown = "SINGLE_NODE_WRITER"): Req {
  const accessType = fsType === "block" ? { block: {} } : { mount: { fs_type: fsType } };
  return { ...accessType, access_mode: { mode } };
}

/** Valid capabilities the bad ones are mixed into, so each table row runs in several shapes. */
const CAP_VARIANTS = ["ext4", "xfs", "block", ""] as const;

/** Bad values of a required string field (an id or a name). */
const BAD_STRINGS: [kind: string, value: unknown][] = [
  ["missing", undefined],
  ["empty", ""],
  ["129 bytes", "x".repeat(129)],
  ["129 bytes of 2-byte characters (65 characters)", `${"é".repeat(64)}x`],
  ["1 KiB", "v".repeat(1024)],
  ["64 KiB", "w".repeat(65_536)],
  ["NUL inside", "vol-0\u0000123"],
];

/** Map values that break the 4 KiB limit or the key rules. */
const BAD_MAPS: [kind: string, value: Record<string, string>][] = [
  ["one 4097-byte value", { k: "v".repeat(4096) }],
  ["10,000 keys", Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`key${i}`, "v"]))],
  [
    "300 small keys (> 4 KiB)",
    Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, "x".repeat(12)])),
  ],
  ["a 5000-byte key", { ["k".repeat(5000)]: "v" }],
  ["an empty key", { "": "v" }],
];

/** Bad access modes: out of the enum, negative, UNKNOWN, or not supported by EBS. */
const BAD_MODES: [kind: string, mode: unknown][] = [
  ["mode 99", 99],
  ["mode -1", -1],
  ["mode 8 (one past the last)", 8],
  ["mode UNKNOWN", "UNKNOWN"],
  ["MULTI_NODE_READER_ONLY", "MULTI_NODE_READER_ONLY"],
  ["MULTI_NODE_SINGLE_WRITER", "MULTI_NODE_SINGLE_WRITER"],
];

/** Bad single capabilities and the field their message must name, below the capability's field. */
const BAD_CAPABILITIES: [kind: string, value: Req | null, subfield: string][] = [
  ...BAD_MODES.map(([kind, mode]): [string, Req, string] => [kind, cap("ext4", mode), ".access_mode.mode"]),
  ...BAD_MODES.map(([kind, mode]): [string, Req, string] => [
    `${kind} (block)`,
    cap("block", mode),
    ".access_mode.mode",
  ]),
  ["no access_mode", { mount: { fs_type: "ext4" } }, ".access_mode.mode"],
  ["no access type", { access_mode: { mode: "SINGLE_NODE_WRITER" } }, ""],
  ["fs_type ntfs", cap("ntfs"), ".mount.fs_type"],
  ["fs_type with a shell", cap("ext4; reboot"), ".mount.fs_type"],
  ["fs_type btrfs", cap("btrfs"), ".mount.fs_type"],
  [
    "mount flag with NUL",
    {
      mount: { fs_type: "ext4", mount_flags: ["noatime\u0000"] },
      access_mode: { mode: "SINGLE_NODE_WRITER" },
    },
    ".mount.mount_flags[0]",
  ],
  [
    "mount flag of 2 KiB",
    {
      mount: { fs_type: "ext4", mount_flags: ["o".repeat(2048)] },
      access_mode: { mode: "SINGLE_NODE_WRITER" },
    },
    ".mount.mount_flags[0]",
  ],
];

/** Bad StorageClass parameters and the key the message must name. */
const BAD_PARAMETERS: [kind: string, parameters: Record<string, string>, key: string][] = [
  ["unknown parameter", { foo: "bar" }, "parameters.foo"],
  ["unknown parameter, upper case", { FOO: "bar" }, "parameters.FOO"],
  ["type gp9", { type: "gp9" }, "parameters.type"],
  ["type empty", { type: "" }, "parameters.type"],
  ["iops not a number", { type: "io2", iops: "fast" }, "parameters.iops"],
  ["iops negative", { type: "io2", iops: "-100" }, "parameters.iops"],
  ["iops on gp2", { type: "gp2", iops: "3000" }, "parameters.iops"],
  ["iops and iopsPerGB", { type: "io2", iops: "3000", iopsPerGB: "10" }, "parameters.iopsPerGB"],
  ["throughput on io2", { type: "io2", iops: "3000", throughput: "200" }, "parameters.throughput"],
  ["throughput not a number", { throughput: "1e3" }, "parameters.throughput"],
  ["encrypted maybe", { encrypted: "maybe" }, "parameters.encrypted"],
  ["kmsKeyId with a space", { kmsKeyId: "arn:aws:kms key" }, "parameters.kmsKeyId"],
  ["kmsKeyId with encrypted false", { kmsKeyId: "alias/x", encrypted: "false" }, "parameters.kmsKeyId"],
  ["blockSize 3", { blockSize: "3" }, "parameters.blockSize"],
  ["inodeSize not a number", { inodeSize: "big" }, "parameters.inodeSize"],
  ["ext4ClusterSize without bigalloc", { ext4ClusterSize: "65536" }, "parameters.ext4ClusterSize"],
  ["type twice (case-insensitive)", { type: "gp3", TYPE: "gp2" }, "parameters.t"],
  ["tagSpecification without =", { tagSpecification_1: "novalue" }, "parameters.tagSpecification_1"],
  ["tagspecification lower case", { tagspecification_1: "a=b" }, "parameters.tagspecification_1"],
  [
    "tagSpecification of a reserved tag",
    { tagSpecification_1: "CSIVolumeName=x" },
    "parameters.tagSpecification_1",
  ],
  ["tagSpecification aws: prefix", { tagSpecification_1: "aws:x=y" }, "parameters.tagSpecification_1"],
  ["tagSpecification bad template", { tagSpecification_1: "a={{ .Nope }}" }, "parameters.tagSpecification_1"],
  ["blockExpress on gp3", { blockExpress: "true" }, "parameters.blockExpress"],
  [
    "allowAutoIOPSPerGBIncrease maybe",
    { allowAutoIOPSPerGBIncrease: "maybe" },
    "parameters.allowAutoIOPSPerGBIncrease",
  ],
];

/** Bad VolumeAttributesClass parameters (ControllerModifyVolume, CreateVolume's mutable_parameters). */
const BAD_MUTABLE: [kind: string, parameters: Record<string, string>, key: string][] = [
  ["unknown parameter", { foo: "bar" }, "mutable_parameters.foo"],
  ["type gp9", { type: "gp9" }, "mutable_parameters.type"],
  ["iops not a number", { iops: "many" }, "mutable_parameters.iops"],
  ["throughput below the gp3 minimum", { throughput: "1" }, "mutable_parameters.throughput"],
  ["throughput on gp2", { type: "gp2", throughput: "200" }, "mutable_parameters.throughput"],
  ["tagSpecification without =", { tagSpecification_1: "novalue" }, "mutable_parameters.tagSpecification_1"],
  ["volumeType contradicting type", { type: "gp3", volumeType: "gp2" }, "mutable_parameters.volumeType"],
  ["tagDeletion", { tagDeletion_1: "x" }, "mutable_parameters.tagDeletion_1"],
];

const BAD_RANGES: [kind: string, range: Req, field: string][] = [
  ["required -1", { required_bytes: -1 }, "capacity_range.required_bytes"],
  ["required -1 TiB", { required_bytes: -(2 ** 40) }, "capacity_range.required_bytes"],
  ["limit -1", { required_bytes: GiB, limit_bytes: -1 }, "capacity_range.limit_bytes"],
  ["limit < required", { required_bytes: 10 * GiB, limit_bytes: GiB }, "capacity_range"],
  ["limit one byte < required", { required_bytes: 2 * GiB, limit_bytes: 2 * GiB - 1 }, "capacity_range"],
];

const ZONE = "topology.kubernetes.io/zone";
const BAD_TOPOLOGY: [kind: string, requirement: Req, field: string][] = [
  [
    "requisite without segments",
    { requisite: [{ segments: {} }] },
    "accessibility_requirements.requisite[0]",
  ],
  [
    "requisite with a foreign key",
    { requisite: [{ segments: { rack: "r1" } }] },
    "accessibility_requirements.requisite[0]",
  ],
  [
    "second requisite without a zone",
    {
      requisite: [
        { segments: { [ZONE]: "us-east-1a" } },
        { segments: { "topology.kubernetes.io/region": "us-east-1" } },
      ],
    },
    "accessibility_requirements.requisite[1]",
  ],
  [
    "preferred without a zone",
    { preferred: [{ segments: { host: "h1" } }] },
    "accessibility_requirements.preferred[0]",
  ],
  [
    "zone key with an empty value",
    { requisite: [{ segments: { [ZONE]: "" } }] },
    "accessibility_requirements.requisite[0]",
  ],
];

const NOT_VOLUME_IDS = [
  "volume-1",
  "vol-XYZ",
  "vol-",
  "vol-deadbeef0",
  "snap-0123456789abcdef0",
  UNKNOWN_VOLUME,
  "vol-01234567",
];
const NOT_INSTANCE_IDS = ["node-1", "i-zz", "ip-10-0-0-1.ec2.internal", UNKNOWN_INSTANCE, "i-01234567"];

const BAD_TOKENS = [
  "garbage",
  "!!!",
  "%%%%",
  Buffer.from('{"o":-1}').toString("base64url"),
  Buffer.from("[]").toString("base64url"),
  Buffer.from('{"t":5,"o":0}').toString("base64url"),
  Buffer.from('{"o":1.5}').toString("base64url"),
  Buffer.from("null").toString("base64url"),
];

// --- the generator ---

function generateCases(): Case[] {
  const cases: Case[] = [];
  const add = (rpc: Rpc, kind: string, request: Req, outcome: Outcome, field: string) =>
    cases.push({ rpc, kind, request, outcome, field });
  let n = 0;
  const name = () => `pvc-bad-${++n}`;

  for (const variant of CAP_VARIANTS) {
    const good = cap(variant);
    const create = (over: Req): Req => ({
      name: name(),
      capacity_range: { required_bytes: GiB },
      volume_capabilities: [good],
      parameters: {},
      ...over,
    });
    const publish = (over: Req): Req => ({
      volume_id: volumeId,
      node_id: env.instanceId,
      volume_capability: good,
      ...over,
    });
    const validate = (over: Req): Req => ({ volume_id: volumeId, volume_capabilities: [good], ...over });
    const expand = (over: Req): Req => ({
      volume_id: volumeId,
      capacity_range: { required_bytes: 2 * GiB },
      volume_capability: good,
      ...over,
    });
    const tag = `[${variant || "mount, no fs_type"}]`;

    // Required strings.
    for (const [kind, value] of BAD_STRINGS) {
      add("CreateVolume", `name ${kind} ${tag}`, create({ name: value }), "INVALID_ARGUMENT", "name");
      add(
        "DeleteVolume",
        `volume_id ${kind} ${tag}`,
        { volume_id: value, secrets: { v: variant } },
        "INVALID_ARGUMENT",
        "volume_id",
      );
      add(
        "ControllerPublishVolume",
        `volume_id ${kind} ${tag}`,
        publish({ volume_id: value }),
        "INVALID_ARGUMENT",
        "volume_id",
      );
      add(
        "ControllerPublishVolume",
        `node_id ${kind} ${tag}`,
        publish({ node_id: value }),
        "INVALID_ARGUMENT",
        "node_id",
      );
      add(
        "ControllerUnpublishVolume",
        `volume_id ${kind} ${tag}`,
        { volume_id: value, node_id: env.instanceId, secrets: { v: variant } },
        "INVALID_ARGUMENT",
        "volume_id",
      );
      if (kind !== "missing" && kind !== "empty") {
        // An empty node_id means "every node" in ControllerUnpublishVolume; an oversized one is malformed.
        add(
          "ControllerUnpublishVolume",
          `node_id ${kind} ${tag}`,
          { volume_id: volumeId, node_id: value, secrets: { v: variant } },
          "INVALID_ARGUMENT",
          "node_id",
        );
      }
      add(
        "ValidateVolumeCapabilities",
        `volume_id ${kind} ${tag}`,
        validate({ volume_id: value }),
        "INVALID_ARGUMENT",
        "volume_id",
      );
      add(
        "ControllerExpandVolume",
        `volume_id ${kind} ${tag}`,
        expand({ volume_id: value }),
        "INVALID_ARGUMENT",
        "volume_id",
      );
      add(
        "ControllerGetVolume",
        `volume_id ${kind} ${tag}`,
        { volume_id: value },
        "INVALID_ARGUMENT",
        "volume_id",
      );
      add(
        "ControllerModifyVolume",
        `volume_id ${kind} ${tag}`,
        { volume_id: value, mutable_parameters: { iops: "4000" } },
        "INVALID_ARGUMENT",
        "volume_id",
      );
    }

    // Oversized and malformed maps.
    for (const [kind, map] of BAD_MAPS) {
      add(
        "CreateVolume",
        `parameters ${kind} ${tag}`,
        create({ parameters: map }),
        "INVALID_ARGUMENT",
        "parameters",
      );
      add("CreateVolume", `secrets ${kind} ${tag}`, create({ secrets: map }), "INVALID_ARGUMENT", "secrets");
      add(
        "CreateVolume",
        `mutable_parameters ${kind} ${tag}`,
        create({ mutable_parameters: map }),
        "INVALID_ARGUMENT",
        "mutable_parameters",
      );
      add(
        "DeleteVolume",
        `secrets ${kind} ${tag}`,
        { volume_id: volumeId, secrets: map },
        "INVALID_ARGUMENT",
        "secrets",
      );
      add(
        "ControllerPublishVolume",
        `volume_context ${kind} ${tag}`,
        publish({ volume_context: map }),
        "INVALID_ARGUMENT",
        "volume_context",
      );
      add(
        "ControllerPublishVolume",
        `secrets ${kind} ${tag}`,
        publish({ secrets: map }),
        "INVALID_ARGUMENT",
        "secrets",
      );
      add(
        "ControllerUnpublishVolume",
        `secrets ${kind} ${tag}`,
        { volume_id: volumeId, node_id: env.instanceId, secrets: map },
        "INVALID_ARGUMENT",
        "secrets",
      );
      for (const field of ["volume_context", "parameters", "mutable_parameters", "secrets"]) {
        add(
          "ValidateVolumeCapabilities",
          `${field} ${kind} ${tag}`,
          validate({ [field]: map }),
          "INVALID_ARGUMENT",
          field,
        );
      }
      add(
        "ControllerExpandVolume",
        `secrets ${kind} ${tag}`,
        expand({ secrets: map }),
        "INVALID_ARGUMENT",
        "secrets",
      );
      add(
        "ControllerModifyVolume",
        `mutable_parameters ${kind} ${tag}`,
        { volume_id: volumeId, mutable_parameters: map },
        "INVALID_ARGUMENT",
        "mutable_parameters",
      );
      add(
        "ControllerModifyVolume",
        `secrets ${kind} ${tag}`,
        { volume_id: volumeId, mutable_parameters: {}, secrets: map },
        "INVALID_ARGUMENT",
        "secrets",
      );
    }

    // Bad capabilities, alone and after a good one.
    for (const [kind, bad, sub] of BAD_CAPABILITIES) {
      add(
        "CreateVolume",
        `capability ${kind} ${tag}`,
        create({ volume_capabilities: [bad] }),
        "INVALID_ARGUMENT",
        `volume_capabilities[0]${sub}`,
      );
      add(
        "CreateVolume",
        `second capability ${kind} ${tag}`,
        create({ volume_capabilities: [good, bad] }),
        "INVALID_ARGUMENT",
        `volume_capabilities[1]${sub}`,
      );
      add(
        "ControllerPublishVolume",
        `capability ${kind} ${tag}`,
        publish({ volume_capability: bad }),
        "INVALID_ARGUMENT",
        `volume_capability${sub}`,
      );
      add(
        "ControllerExpandVolume",
        `capability ${kind} ${tag}`,
        expand({ volume_capability: bad }),
        "INVALID_ARGUMENT",
        `volume_capability${sub}`,
      );
      // For an existing volume, an unsupported capability is "not confirmed", with the reason.
      add(
        "ValidateVolumeCapabilities",
        `capability ${kind} ${tag}`,
        validate({ volume_capabilities: [good, bad] }),
        "NOT_CONFIRMED",
        `volume_capabilities[1]${sub}`,
      );
    }
    add(
      "CreateVolume",
      `no capabilities ${tag}`,
      create({ volume_capabilities: [] }),
      "INVALID_ARGUMENT",
      "volume_capabilities",
    );
    add(
      "CreateVolume",
      `17 capabilities ${tag}`,
      create({ volume_capabilities: Array(17).fill(good) }),
      "INVALID_ARGUMENT",
      "volume_capabilities",
    );
    add(
      "ControllerPublishVolume",
      `no capability ${tag}`,
      publish({ volume_capability: null }),
      "INVALID_ARGUMENT",
      "volume_capability",
    );
    add(
      "ValidateVolumeCapabilities",
      `no capabilities ${tag}`,
      validate({ volume_capabilities: [] }),
      "INVALID_ARGUMENT",
      "volume_capabilities",
    );
    add(
      "ValidateVolumeCapabilities",
      `no capabilities, unknown volume ${tag}`,
      validate({ volume_id: UNKNOWN_VOLUME, volume_capabilities: [] }),
      "INVALID_ARGUMENT",
      "volume_capabilities",
    );

    // Capacities.
    for (const [kind, range, field] of BAD_RANGES) {
      add("CreateVolume", `${kind} ${tag}`, create({ capacity_range: range }), "INVALID_ARGUMENT", field);
      add(
        "ControllerExpandVolume",
        `${kind} ${tag}`,
        expand({ capacity_range: range }),
        "INVALID_ARGUMENT",
        field,
      );
    }
    add(
      "ControllerExpandVolume",
      `no capacity_range ${tag}`,
      expand({ capacity_range: null }),
      "INVALID_ARGUMENT",
      "capacity_range",
    );
    add(
      "ControllerExpandVolume",
      `only limit_bytes ${tag}`,
      expand({ capacity_range: { limit_bytes: 5 * GiB } }),
      "INVALID_ARGUMENT",
      "capacity_range.required_bytes",
    );

    // Topology.
    for (const [kind, requirement, field] of BAD_TOPOLOGY) {
      add(
        "CreateVolume",
        `${kind} ${tag}`,
        create({ accessibility_requirements: requirement }),
        "INVALID_ARGUMENT",
        field,
      );
    }

    // Parameters.
    for (const [kind, parameters, key] of BAD_PARAMETERS) {
      if (variant === "block" && key.includes("fsType")) continue;
      add("CreateVolume", `${kind} ${tag}`, create({ parameters }), "INVALID_ARGUMENT", key);
    }
    for (const [kind, parameters, key] of BAD_MUTABLE) {
      add(
        "CreateVolume",
        `mutable ${kind} ${tag}`,
        create({ mutable_parameters: parameters }),
        "INVALID_ARGUMENT",
        key,
      );
      add(
        "ControllerModifyVolume",
        `${kind} ${tag}`,
        { volume_id: volumeId, mutable_parameters: parameters, secrets: { v: variant } },
        "INVALID_ARGUMENT",
        key,
      );
    }
    add(
      "CreateVolume",
      `unknown snapshot source ${tag}`,
      create({ volume_content_source: { snapshot: { snapshot_id: "snap-0123456789abcdef0" } } }),
      "NOT_FOUND",
      "snap-0123456789abcdef0",
    );
    add(
      "CreateVolume",
      `unknown volume source ${tag}`,
      create({ volume_content_source: { volume: { volume_id: "vol-0123456789abcdef0" } } }),
      "NOT_FOUND",
      "vol-0123456789abcdef0",
    );

    // Ids that name nothing: NOT_FOUND, naming the id.
    for (const id of NOT_VOLUME_IDS) {
      add(
        "ControllerPublishVolume",
        `unknown volume ${id} ${tag}`,
        publish({ volume_id: id }),
        "NOT_FOUND",
        id,
      );
      add(
        "ValidateVolumeCapabilities",
        `unknown volume ${id} ${tag}`,
        validate({ volume_id: id }),
        "NOT_FOUND",
        id,
      );
      add(
        "ControllerExpandVolume",
        `unknown volume ${id} ${tag}`,
        expand({ volume_id: id }),
        "NOT_FOUND",
        id,
      );
      add("ControllerGetVolume", `unknown volume ${id} ${tag}`, { volume_id: id }, "NOT_FOUND", id);
      add(
        "ControllerModifyVolume",
        `unknown volume ${id} ${tag}`,
        { volume_id: id, mutable_parameters: { iops: "4000" } },
        "NOT_FOUND",
        id,
      );
    }
    for (const id of NOT_INSTANCE_IDS) {
      add("ControllerPublishVolume", `unknown node ${id} ${tag}`, publish({ node_id: id }), "NOT_FOUND", id);
    }

    // ListVolumes.
    for (const token of BAD_TOKENS) {
      add(
        "ListVolumes",
        `starting_token ${token.slice(0, 12)} ${tag}`,
        { starting_token: token, max_entries: 5 },
        "ABORTED",
        "starting_token",
      );
    }
    add("ListVolumes", `max_entries -1 ${tag}`, { max_entries: -1 }, "INVALID_ARGUMENT", "max_entries");
  }
  // Snapshots: missing fields, bad VolumeSnapshotClass parameters, ids that name nothing.
  const snapshot = (over: Req): Req => ({
    name: `snapshot-bad-${++n}`,
    source_volume_id: UNKNOWN_VOLUME,
    ...over,
  });
  add("CreateSnapshot", "no name", snapshot({ name: "" }), "INVALID_ARGUMENT", "name");
  add(
    "CreateSnapshot",
    "no source",
    snapshot({ source_volume_id: "" }),
    "INVALID_ARGUMENT",
    "source_volume_id",
  );
  for (const [key, value] of [
    ["type", "gp3"],
    ["lockMode", "forever"],
    ["lockDuration", "7"],
    ["lockCoolOffPeriod", "x"],
    ["lockExpirationDate", "tomorrow"],
    ["outpostArn", "op-1"],
    ["fastSnapshotRestoreAvailabilityZones", ","],
    ["tagSpecification_1", "novalue"],
    ["tagSpecification_2", "k={{ .PVName }}"],
  ] as const) {
    add(
      "CreateSnapshot",
      `parameter ${key}=${value}`,
      snapshot({ parameters: { [key]: value } }),
      "INVALID_ARGUMENT",
      "parameters.",
    );
  }
  for (const id of NOT_VOLUME_IDS) {
    add("CreateSnapshot", `unknown source ${id}`, snapshot({ source_volume_id: id }), "NOT_FOUND", id);
  }
  add("DeleteSnapshot", "no id", { snapshot_id: "" }, "INVALID_ARGUMENT", "snapshot_id");
  add("GetSnapshot", "no id", { snapshot_id: "" }, "INVALID_ARGUMENT", "snapshot_id");
  for (const id of ["snap-0123456789abcdef0", "snapshot-1", "snap-"]) {
    add("GetSnapshot", `unknown ${id}`, { snapshot_id: id }, "NOT_FOUND", id);
  }
  add("ListSnapshots", "negative max_entries", { max_entries: -1 }, "INVALID_ARGUMENT", "max_entries");
  for (const token of BAD_TOKENS) {
    add("ListSnapshots", `bad token ${token}`, { starting_token: token }, "ABORTED", "starting_token");
  }
  return cases;
}

// --- running them ---

interface Answer {
  c: Case;
  code: number;
  message: string;
  confirmed: boolean;
}

async function send(c: Case): Promise<Answer> {
  try {
    const reply = await env.client.call("Controller", c.rpc, c.request, 60_000);
    return {
      c,
      code: status.OK,
      message: String(reply?.message ?? ""),
      confirmed: Boolean(reply?.confirmed),
    };
  } catch (err) {
    const { code, details } = err as ServiceError;
    return { c, code, message: details ?? "", confirmed: false };
  }
}

/**
 * Cases that share an in-flight key (the same volume for a mutating call) are sent in different
 * rounds, so that no answer is an ABORTED from a neighbour; each round goes out in concurrent batches.
 */
async function sendAll(cases: Case[]): Promise<Answer[]> {
  const byKey = new Map<string, Case[]>();
  cases.forEach((c, i) => {
    const key = inflightKey(c.rpc, c.request) ?? `free/${i}`;
    byKey.set(key, [...(byKey.get(key) ?? []), c]);
  });
  const rounds: Case[][] = [];
  for (const group of byKey.values()) {
    group.forEach((c, i) => {
      rounds[i] ??= [];
      rounds[i].push(c);
    });
  }
  const answers: Answer[] = [];
  for (const round of rounds) {
    for (let i = 0; i < round.length; i += BATCH) {
      answers.push(...(await Promise.all(round.slice(i, i + BATCH).map(send))));
    }
  }
  return answers;
}

/** Why an answer is wrong, or undefined when it is right. */
function judge(a: Answer): string | undefined {
  const got = status[a.code] ?? String(a.code);
  const where = `${a.c.rpc} ${a.c.kind}`;
  if (/\n\s+at |\(\/|\/work\/|node_modules|\.[jt]s:\d+/.test(a.message)) {
    return `${where}: the message shows code internals: ${a.message.slice(0, 300)}`;
  }
  if (a.c.outcome === "NOT_CONFIRMED") {
    if (a.code === status.OK && !a.confirmed && a.message.includes(a.c.field)) return undefined;
    if (a.code === status.INVALID_ARGUMENT && a.message.includes(a.c.field)) return undefined;
    return `${where}: expected not confirmed with a message naming ${a.c.field}, got ${got} confirmed=${a.confirmed}: ${a.message.slice(0, 200)}`;
  }
  if (got !== a.c.outcome) return `${where}: expected ${a.c.outcome}, got ${got}: ${a.message.slice(0, 200)}`;
  if (!a.message.includes(a.c.field)) {
    return `${where}: the message does not name ${a.c.field}: ${a.message.slice(0, 200)}`;
  }
  return undefined;
}

describe("malformed controller requests", () => {
  it("over 1,000 of them across every controller RPC are refused with the right code and a message naming the field", async () => {
    const cases = generateCases();
    expect(cases.length).toBeGreaterThanOrEqual(1000);
    const rpcs = new Set(cases.map((c) => c.rpc));
    expect(rpcs.size).toBe(13);

    const answers = await sendAll(cases);
    expect(answers).toHaveLength(cases.length);

    const counts: Record<string, number> = {};
    for (const a of answers) {
      const label =
        a.c.outcome === "NOT_CONFIRMED" && a.code === status.OK ? "OK (not confirmed)" : status[a.code];
      counts[label ?? String(a.code)] = (counts[label ?? String(a.code)] ?? 0) + 1;
    }
    console.log(`${cases.length} malformed requests over ${rpcs.size} RPCs: ${JSON.stringify(counts)}`);

    expect(answers.filter((a) => a.code === status.INTERNAL || a.code === status.UNKNOWN).map(judge)).toEqual(
      [],
    );
    expect(answers.map(judge).filter((why) => why !== undefined)).toEqual([]);
    // The bad ListVolumes and ListSnapshots tokens are answered ABORTED, as the spec asks, and counted apart.
    for (const rpc of ["ListVolumes", "ListSnapshots"]) {
      expect(answers.filter((a) => a.c.rpc === rpc && a.code === status.ABORTED)).toHaveLength(
        cases.filter((c) => c.rpc === rpc && c.outcome === "ABORTED").length,
      );
    }
  });

  it("the driver is still up and well afterwards, and the bad requests changed nothing in EC2", async () => {
    expect(env.driver.child?.exitCode).toBeNull();
    expect(env.driver.child?.signalCode).toBeNull();
    const probe = await env.client.call("Identity", "Probe", {});
    expect(probe.ready?.value).toBe(true);

    const fixture = await env.aws.ec2.send(
      new DescribeVolumesCommand({ Filters: [{ Name: "volume-id", Values: [volumeId] }] }),
    );
    expect(fixture.Volumes?.[0]).toMatchObject({ Size: 1, VolumeType: "gp3", State: "available" });
    expect(fixture.Volumes?.[0]?.Attachments ?? []).toEqual([]);

    const created = await env.client.call("Controller", "CreateVolume", {
      name: "pvc-after-malformed",
      capacity_range: { required_bytes: GiB },
      volume_capabilities: [cap("ext4")],
    });
    const all = await env.aws.ec2.send(
      new DescribeVolumesCommand({ Filters: [{ Name: "tag-key", Values: ["CSIVolumeName"] }] }),
    );
    expect((all.Volumes ?? []).map((v) => v.VolumeId).sort()).toEqual(
      [volumeId, created.volume.volume_id].sort(),
    );
  });
});
