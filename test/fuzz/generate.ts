// biome-ignore-all lint/suspicious/noTemplateCurlyInString: subPathPattern syntax, not templates
/**
 * Seeded, well-typed random CSI requests for every RPC of the Identity, Controller and Node
 * services: proto-shaped plain objects (keepCase names) whose values are random strings (unicode,
 * empty, long, NUL), out-of-range enums, maps of up to 10,000 entries, garbage and plausible ids,
 * negative and huge capacities, and paths inside, outside and around the kubelet directory.
 *
 * Request i of a run depends only on (seed, i): `generateCall(targets, seed, i)` gives it again, so a
 * failure found in a concurrent run is re-run alone from its seed and index.
 */
import { join } from "node:path";
import { ACCESS_MODES } from "../../src/csi/validate.ts";

export type Service = "Identity" | "Controller" | "GroupController" | "Node";

export interface FuzzCall {
  service: Service;
  method: string;
  request: Record<string, unknown>;
}

/** What the generator aims at: real ids to get past lookups, and the paths of the test's machine. */
export interface FuzzTargets {
  driver: "ebs" | "efs";
  /** The driver's --kubelet-dir. */
  kubeletDir: string;
  /** A directory below kubeletDir that holds nothing else: every valid path lies below it. */
  playground: string;
  /** A symbolic link inside playground to a directory outside kubeletDir. */
  escapeLink: string;
  /** Real volume ids (EBS vol-..., EFS fs-...::fsap-...): lookups find them. */
  volumeIds: string[];
  /** The node's instance id. */
  nodeId: string;
  zone: string;
  /** EFS: the real file system. */
  fileSystemId?: string;
}

/** Every name of a path or file the fuzz may make outside the kubelet directory starts so. */
export const OUTSIDE_MARKER = "csi-fuzz-";

export const RPCS: Record<Service, readonly string[]> = {
  Identity: ["GetPluginInfo", "GetPluginCapabilities", "Probe"],
  Controller: [
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "GetSnapshot",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
    "ControllerGetVolumeHealth",
    "ControllerListVolumeHealth",
  ],
  GroupController: [
    "GroupControllerGetCapabilities",
    "CreateVolumeGroupSnapshot",
    "DeleteVolumeGroupSnapshot",
    "GetVolumeGroupSnapshot",
  ],
  Node: [
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
    "NodeGetVolumeHealth",
    "NodeGetStorageHealth",
  ],
};

const ALL_RPCS: [Service, string][] = Object.entries(RPCS).flatMap(([service, methods]) =>
  methods.map((m): [Service, string] => [service as Service, m]),
);

/** The seed of a run: FUZZ_SEED when set (decimal or 0x hex), else a random one. */
export function seedFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const text = env.FUZZ_SEED?.trim();
  if (text) {
    const seed = Number(text);
    if (!Number.isSafeInteger(seed)) throw new Error(`FUZZ_SEED must be an integer, not "${text}"`);
    return seed >>> 0;
  }
  return (Math.random() * 2 ** 32) >>> 0;
}

/** mulberry32: a small, fast 32-bit PRNG; plenty for picking test values (and bench/rank-test.ts's samples). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export class Rng {
  readonly #next: () => number;

  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }

  /** The generator of request `index` of the run with `seed` (independent of every other request). */
  static forCall(seed: number, index: number): Rng {
    return new Rng((Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0);
  }

  float(): number {
    return this.#next();
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.#next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.#next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#next() * items.length)]!;
  }

  /** Calls one of the functions, each as likely as the others. */
  oneOf<T>(...makers: (() => T)[]): T {
    return this.pick(makers)();
  }

  hex(length: number): string {
    let s = "";
    for (let i = 0; i < length; i++) s += "0123456789abcdef"[this.int(0, 15)];
    return s;
  }
}

// --- strings ---

const ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
const PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n";
const UNICODE = [
  "é",
  "ß",
  "Ω",
  "ж",
  "中",
  "文",
  "日本",
  "한",
  "ع",
  "\u200f", // right-to-left mark
  "\u200b", // zero-width space
  "\u0301", // combining acute accent
  "\ufeff",
  "\uffff",
  "💾",
  "🦀",
  "👩‍👩‍👧",
  "\u{10ffff}",
  "\u007f",
  "\u001b[31m",
];

function charsFrom(rng: Rng, alphabet: string, length: number): string {
  let s = "";
  for (let i = 0; i < length; i++) s += alphabet[rng.int(0, alphabet.length - 1)];
  return s;
}

function unicodeText(rng: Rng, pieces: number): string {
  let s = "";
  for (let i = 0; i < pieces; i++) s += rng.chance(0.5) ? rng.pick(UNICODE) : charsFrom(rng, ASCII, 1);
  return s;
}

/** Any string: empty, short, unicode, with NUL or control characters, or long (up to 4 KiB). */
function randomString(rng: Rng): string {
  return rng.oneOf(
    () => "",
    () => charsFrom(rng, ASCII, rng.int(1, 24)),
    () => charsFrom(rng, ASCII + PUNCTUATION, rng.int(1, 40)),
    () => unicodeText(rng, rng.int(1, 40)),
    () => `${charsFrom(rng, ASCII, rng.int(0, 8))}\u0000${charsFrom(rng, ASCII, rng.int(0, 8))}`,
    () => charsFrom(rng, ASCII, rng.pick([127, 128, 129, 255, 256, 1024, 4096])),
    () => unicodeText(rng, rng.int(100, 1400)),
    () => " ".repeat(rng.int(1, 3)),
  );
}

// --- the generator of one request ---

const GiB = 1024 ** 3;

/** Every access mode of the spec, and UNKNOWN (0), which a well-formed request never carries. */
const MODE_NAMES: readonly string[] = [...ACCESS_MODES, "UNKNOWN"];
const FS_TYPES = ["", "ext4", "xfs", "ext3", "ext2", "efs", "nfs", "btrfs", "EXT4", "ext4; reboot"];
const MOUNT_FLAGS = ["ro", "noatime", "nosuid", "tls", "iam", "rw", "bind", "remount", "nfsvers=4.1"];

const EBS_KEYS = [
  "type",
  "iops",
  "iopsPerGB",
  "allowAutoIOPSPerGBIncrease",
  "throughput",
  "encrypted",
  "kmsKeyId",
  "csi.storage.k8s.io/fstype",
  "fsType",
  "blockSize",
  "inodeSize",
  "bytesPerInode",
  "numberOfInodes",
  "ext4BigAlloc",
  "ext4ClusterSize",
  "blockExpress",
  "tagSpecification_1",
  "csi.storage.k8s.io/pvc/name",
  "csi.storage.k8s.io/pvc/namespace",
  "csi.storage.k8s.io/pv/name",
  "volumeType",
];
const EFS_KEYS = [
  "provisioningMode",
  "fileSystemId",
  "directoryPerms",
  "uid",
  "gid",
  "gidRangeStart",
  "gidRangeEnd",
  "basePath",
  "subPathPattern",
  "ensureUniqueDirectory",
  "reuseAccessPoint",
  "enableTagging",
  "az",
  "enforceZoneAffinity",
  "fileSystemIdConfigRef",
  "fileSystemIdSecretRef",
  "encryptInTransit",
  "mounttargetip",
  "csi.storage.k8s.io/pvc/name",
  "csi.storage.k8s.io/pvc/namespace",
  "csi.storage.k8s.io/pv/name",
];
const VALUES = [
  "gp3",
  "gp2",
  "io1",
  "io2",
  "sc1",
  "st1",
  "standard",
  "gp9",
  "true",
  "false",
  "3000",
  "125",
  "0",
  "-1",
  "1e9",
  "ext4",
  "xfs",
  "efs-ap",
  "700",
  "0777",
  "1000",
  "2000",
  "/dynamic",
  "${.PVC.name}",
  "${.PV.name}/${.PVC.namespace}",
  "key=value",
  "a=b,c=d",
];

/**
 * Builds the fields of one request. Half the requests are "sane": each field is valid (real ids,
 * supported capabilities, a StorageClass that parses, paths below the playground) nine times in
 * ten, so that they get past validation to the cloud and the machine; the others are random
 * throughout.
 */
class Fields {
  readonly rng: Rng;
  readonly t: FuzzTargets;
  readonly #sane: boolean;

  constructor(rng: Rng, t: FuzzTargets) {
    this.rng = rng;
    this.t = t;
    this.#sane = rng.chance(0.5);
  }

  /** Whether this field is to be valid. */
  ok(): boolean {
    return this.#sane && this.rng.chance(0.9);
  }

  string(): string {
    return randomString(this.rng);
  }

  name(): string {
    const rng = this.rng;
    return this.ok() || rng.chance(0.5) ? `pvc-${rng.hex(8)}-${rng.hex(4)}-${rng.hex(12)}` : this.string();
  }

  volumeId(): string {
    const { rng, t } = this;
    if (this.ok()) {
      if (rng.chance(0.6)) return rng.pick(t.volumeIds);
      return t.driver === "ebs"
        ? `vol-${rng.hex(17)}`
        : `${rng.chance(0.5) && t.fileSystemId ? t.fileSystemId : `fs-${rng.hex(8)}`}::fsap-${rng.hex(17)}`;
    }
    if (rng.chance(0.1)) return t.driver === "ebs" ? this.#efsVolumeId() : this.#ebsVolumeId();
    return t.driver === "ebs" ? this.#ebsVolumeId() : this.#efsVolumeId();
  }

  #ebsVolumeId(): string {
    const { rng, t } = this;
    return rng.oneOf(
      () => rng.pick(t.volumeIds),
      () => `vol-${rng.hex(rng.pick([8, 17]))}`,
      () => `vol-${rng.hex(rng.int(1, 30))}`,
      () => `vol-${charsFrom(rng, ASCII, rng.int(1, 20))}`,
      () => `${rng.pick(t.volumeIds)}${rng.pick(["/", "\u0000", " ", "x", "/../x"])}`,
      () => this.string(),
    );
  }

  #efsVolumeId(): string {
    const { rng, t } = this;
    const fs = () =>
      rng.chance(0.5) && t.fileSystemId ? t.fileSystemId : `fs-${rng.hex(rng.pick([8, 17, 41]))}`;
    const ap = () => `fsap-${rng.hex(rng.pick([8, 17, 7]))}`;
    return rng.oneOf(
      () => rng.pick(t.volumeIds),
      () => fs(),
      () => `${fs()}::${ap()}`,
      () => `${fs()}:${rng.pick(["/", "/data", "a/b/", "/../..", "/x/./y", `/${unicodeText(rng, 5)}`])}`,
      () => `${fs()}:/${charsFrom(rng, ASCII, rng.int(1, 12))}:${ap()}`,
      () => `efs:${fs()}`,
      () => `s3files:${fs()}`,
      () => `${fs()}:${this.string()}:${ap()}`,
      () => `${fs()}.efs.us-east-1.amazonaws.com`,
      () => `${fs()}:::${ap()}`,
      () => this.string(),
    );
  }

  nodeId(): string {
    const { rng, t } = this;
    if (this.ok()) return t.nodeId;
    return rng.oneOf(
      () => t.nodeId,
      () => `i-${rng.hex(rng.pick([8, 17]))}`,
      () => `i-${rng.hex(rng.int(1, 30))}`,
      () => this.string(),
    );
  }

  groupSnapshotId(): string {
    return this.ok() || this.rng.chance(0.5) ? `groupsnap-${this.rng.hex(32)}` : this.string();
  }

  snapshotId(): string {
    return this.ok() || this.rng.chance(0.5) ? `snap-${this.rng.hex(17)}` : this.string();
  }

  /**
   * Sizes: garbage (negative, huge, odd bytes) and valid sizes up to 8 GiB. Valid sizes stay small
   * because a real volume may be expanded to one and its filesystem then grown on a loop device.
   */
  bytes(): number {
    const rng = this.rng;
    if (this.ok()) return rng.int(1, 8) * GiB;
    return rng.oneOf(
      () => 0,
      () => rng.int(1, 8) * GiB,
      () => rng.int(1, 10_000_000),
      () => -rng.int(1, 2 ** 31),
      () =>
        rng.pick([-1, -(2 ** 53), -(2 ** 62), 2 ** 53 - 1, 2 ** 62, 9.2e18, 20 * 1024 * GiB, 2 ** 40 * 100]),
    );
  }

  capacityRange(): Record<string, number> | null {
    if (this.ok()) return { required_bytes: this.bytes(), limit_bytes: 0 };
    if (this.rng.chance(0.15)) return null;
    return { required_bytes: this.bytes(), limit_bytes: this.rng.chance(0.5) ? 0 : this.bytes() };
  }

  /** An access mode: a name of the enum, or a number in or out of its range. */
  #accessMode(): string | number {
    const rng = this.rng;
    if (this.ok()) {
      return this.t.driver === "efs"
        ? rng.pick(ACCESS_MODES)
        : rng.pick(["SINGLE_NODE_WRITER", "SINGLE_NODE_READER_ONLY", "SINGLE_NODE_MULTI_WRITER"]);
    }
    return rng.oneOf<string | number>(
      () => rng.pick(MODE_NAMES),
      () => rng.pick(MODE_NAMES),
      () => rng.pick([0, 1, 5, 7, 8, 9, 99, -1, 2 ** 31 - 1, -(2 ** 31)]),
    );
  }

  capability(): Record<string, unknown> | null {
    const rng = this.rng;
    const mode = this.#accessMode();
    if (this.ok()) {
      if (this.t.driver === "ebs" && rng.chance(0.25)) return { block: {}, access_mode: { mode } };
      const fsType = this.t.driver === "ebs" ? rng.pick(["ext4", "xfs", ""]) : rng.pick(["", "efs"]);
      const flags = rng.chance(0.7) ? [] : [rng.pick(["noatime", "ro", "nosuid"])];
      return { mount: { fs_type: fsType, mount_flags: flags }, access_mode: { mode } };
    }
    if (rng.chance(0.05)) return null;
    const cap: Record<string, unknown> = {};
    const kind = rng.int(0, 9);
    if (kind < 2) cap.block = {};
    else if (kind < 9) {
      const flagCount = rng.chance(0.6) ? 0 : rng.int(1, rng.chance(0.1) ? 200 : 4);
      cap.mount = {
        fs_type: rng.chance(0.8) ? rng.pick(FS_TYPES) : this.string(),
        mount_flags: Array.from({ length: flagCount }, () =>
          rng.chance(0.5) ? rng.pick(MOUNT_FLAGS) : this.string(),
        ),
        volume_mount_group: rng.chance(0.8) ? "" : this.string(),
      };
    }
    if (rng.chance(0.93)) cap.access_mode = { mode };
    return cap;
  }

  capabilities(): Record<string, unknown>[] {
    const n = this.ok() ? 1 : this.rng.pick([0, 1, 1, 2, 3, 17]);
    return Array.from({ length: n }, () => this.capability() ?? {});
  }

  /** A map: empty, a few entries, hundreds, or up to 10,000 (the issue's), of known keys or any. */
  map(keys: readonly string[]): Record<string, string> {
    const rng = this.rng;
    const out: Record<string, string> = {};
    const value = () =>
      rng.oneOf(
        () => rng.pick(VALUES),
        () => rng.pick(VALUES),
        () => (this.t.fileSystemId && rng.chance(0.7) ? this.t.fileSystemId : `fs-${rng.hex(8)}`),
        () => this.string(),
      );
    const key = () => (rng.chance(0.75) ? rng.pick(keys) : this.string());
    const size = rng.int(0, 99);
    if (size < 30) return out;
    if (size < 90) {
      for (let i = rng.int(1, 6); i > 0; i--) out[key()] = value();
    } else if (size < 97) {
      for (let i = rng.int(10, 300); i > 0; i--) out[`${key()}${i}`] = value();
    } else {
      // Many small entries, or long keys and values.
      const n = rng.int(1000, 10_000);
      const long = rng.chance(0.3);
      for (let i = 0; i < n; i++) {
        out[long ? `${charsFrom(rng, ASCII, 40)}${i}` : `k${i}`] = long ? charsFrom(rng, ASCII, 60) : "v";
      }
    }
    return out;
  }

  /** StorageClass parameters: mostly ones that parse when sane. */
  parameters(): Record<string, string> {
    const { rng, t } = this;
    if (!this.ok()) return this.map(t.driver === "ebs" ? EBS_KEYS : EFS_KEYS);
    if (t.driver === "ebs") {
      return rng.oneOf(
        () => ({}),
        () => ({ type: rng.pick(["gp3", "gp2", "standard"]) }),
        () => ({ type: "gp3", iops: "3000", throughput: "125", encrypted: rng.pick(["true", "false"]) }),
        () => ({ type: "io2", iops: String(rng.int(100, 3000)) }),
        () => ({
          "csi.storage.k8s.io/pvc/name": "pvc",
          "csi.storage.k8s.io/pvc/namespace": "ns",
          tagSpecification_1: "team=fuzz",
        }),
      );
    }
    const fileSystemId = t.fileSystemId && rng.chance(0.8) ? t.fileSystemId : `fs-${rng.hex(17)}`;
    const base: Record<string, string> = {
      provisioningMode: "efs-ap",
      fileSystemId,
      directoryPerms: rng.pick(["700", "755", "0777"]),
    };
    return rng.oneOf(
      () => base,
      () => ({ ...base, basePath: `/${charsFrom(rng, ASCII, rng.int(1, 10))}` }),
      () => ({ ...base, gidRangeStart: "1000", gidRangeEnd: String(rng.int(1001, 1100)) }),
      () => ({ ...base, uid: String(rng.int(0, 65535)), gid: String(rng.int(0, 65535)) }),
      () => ({
        ...base,
        subPathPattern: "${.PVC.namespace}/${.PVC.name}",
        ensureUniqueDirectory: "true",
        "csi.storage.k8s.io/pvc/name": `c${rng.int(0, 20)}`,
        "csi.storage.k8s.io/pvc/namespace": "ns",
      }),
      () => ({ ...base, reuseAccessPoint: "true", "csi.storage.k8s.io/pvc/name": `claim-${rng.int(0, 20)}` }),
    );
  }

  /** Any map field besides parameters: empty when sane. */
  anyMap(): Record<string, string> {
    if (this.ok()) return {};
    return this.map(this.rng.chance(0.5) ? EBS_KEYS : EFS_KEYS);
  }

  secrets(): Record<string, string> {
    if (this.ok() || this.rng.chance(0.6)) return {};
    return this.map(["awsRoleArn", "password", "token", "key"]);
  }

  topology(): Record<string, unknown> {
    const { rng, t } = this;
    if (this.ok()) {
      const zone = { segments: { "topology.kubernetes.io/zone": t.zone } };
      return { requisite: [zone], preferred: [zone] };
    }
    const segments = () => {
      const out: Record<string, string> = {};
      for (let i = rng.int(0, 3); i > 0; i--) {
        const key = rng.pick([
          "topology.kubernetes.io/zone",
          "topology.ebs.csi.aws.com/zone",
          "kubernetes.io/hostname",
        ]);
        out[rng.chance(0.9) ? key : this.string()] = rng.chance(0.6)
          ? rng.pick([t.zone, "us-east-1b", "us-west-2a", "nowhere-1z"])
          : this.string();
      }
      return { segments: out };
    };
    const list = () => Array.from({ length: rng.pick([0, 0, 1, 2, 5]) }, segments);
    return { requisite: list(), preferred: list() };
  }

  /**
   * A path for target_path, staging_target_path or volume_path. Valid paths are leaves of a few
   * fixed shapes below the playground, so that none is the parent of another (unpublishing a
   * parent would meet a non-empty directory); outside the kubelet directory only names that
   * cannot exist are made (marked OUTSIDE_MARKER), and nothing that names an existing file.
   */
  path(): string {
    const { rng, t } = this;
    const leaf = () => `p${rng.int(0, 15)}`;
    const valid = () =>
      rng.oneOf(
        () => join(t.playground, "t", leaf()),
        () =>
          join(t.playground, "pods", `uid-${rng.int(0, 7)}`, "volumes/kubernetes.io~csi", leaf(), "mount"),
        () => join(t.playground, "staging", leaf()),
        () => join(t.playground, "block", `uid-${rng.int(0, 7)}`, leaf()),
      );
    if (this.ok()) return valid();
    const outside = () => `${OUTSIDE_MARKER}${rng.hex(8)}`;
    const long = (length: number) =>
      pathOfLength(join(t.playground, "long", `l${rng.int(0, 3)}`), length, rng);
    return rng.oneOf(
      valid,
      valid,
      () => `${t.playground}/t/${leaf()}/`,
      () => `${t.playground}//t/${leaf()}`,
      () => `${t.playground}/t/./${leaf()}`,
      () => `${t.playground}/t/../../../${outside()}`,
      () => `${t.playground}/${rng.pick(["t", "staging"])}/../${leaf()}`,
      () => `${outside()}/mount`,
      () => rng.pick(["", ".", "..", `./${outside()}`, `../${outside()}`]),
      () => `/proc/${outside()}`,
      () => `/proc/self/${outside()}`,
      () => `/sys/${outside()}`,
      () => `/sys/kernel/${outside()}`,
      () => `/etc/${outside()}`,
      () => `/etc/${outside()}/mount`,
      () => `/dev/${outside()}`,
      () => `/dev/shm/${outside()}`,
      () => `/${outside()}`,
      () => `${t.escapeLink}/${leaf()}`,
      () => `${t.escapeLink}/${leaf()}/mount`,
      () => `${t.escapeLink}/../${outside()}`,
      () => long(4095),
      () => long(4096),
      () => long(rng.pick([4097, 5000, 70_000])),
      () => `${t.playground}/t/${"x".repeat(256)}`,
      () => `${t.playground}/t/${leaf()}\u0000/etc`,
      () => `${t.playground}/t/${unicodeText(rng, rng.int(1, 10))}`,
      () => this.string(),
    );
  }

  /** An optional path: empty in a fifth of the calls. */
  maybePath(): string {
    return this.rng.chance(0.2) ? "" : this.path();
  }
}

/** A path of exactly `length` bytes below dir, made of components of at most 255 bytes. */
function pathOfLength(dir: string, length: number, rng: Rng): string {
  let p = dir;
  while (p.length < length) {
    const room = length - p.length - 1;
    const take = Math.min(255, Math.max(room, 1));
    // Leave no one-byte tail that would need an empty component.
    const size = room - take === 1 ? take - 1 : take;
    p += `/${charsFrom(rng, "abcdefghij", size)}`;
  }
  return p;
}

// --- requests ---

/** Builders of one request per RPC; fields are sometimes left out, as a caller may. */
const BUILDERS: Record<string, (f: Fields) => Record<string, unknown>> = {
  GetPluginInfo: () => ({}),
  GetPluginCapabilities: () => ({}),
  Probe: () => ({}),
  ControllerGetCapabilities: () => ({}),
  NodeGetCapabilities: () => ({}),
  NodeGetInfo: () => ({}),
  CreateVolume: (f) => ({
    name: f.name(),
    capacity_range: f.capacityRange(),
    volume_capabilities: f.capabilities(),
    parameters: f.parameters(),
    secrets: f.secrets(),
    ...(!f.ok() &&
      f.rng.chance(0.2) && {
        volume_content_source: f.rng.chance(0.5)
          ? { snapshot: { snapshot_id: f.snapshotId() } }
          : { volume: { volume_id: f.volumeId() } },
      }),
    ...(f.rng.chance(0.7) && { accessibility_requirements: f.topology() }),
    mutable_parameters: f.anyMap(),
  }),
  DeleteVolume: (f) => ({ volume_id: f.volumeId(), secrets: f.secrets() }),
  ControllerPublishVolume: (f) => ({
    volume_id: f.volumeId(),
    node_id: f.nodeId(),
    volume_capability: f.capability(),
    readonly: f.rng.chance(0.2),
    secrets: f.secrets(),
    volume_context: f.anyMap(),
  }),
  ControllerUnpublishVolume: (f) => ({
    volume_id: f.volumeId(),
    node_id: f.rng.chance(0.2) ? "" : f.nodeId(),
    secrets: f.secrets(),
  }),
  ValidateVolumeCapabilities: (f) => ({
    volume_id: f.volumeId(),
    volume_context: f.anyMap(),
    volume_capabilities: f.capabilities(),
    parameters: f.parameters(),
    secrets: f.secrets(),
    mutable_parameters: f.anyMap(),
  }),
  ListVolumes: (f) => ({
    max_entries: f.rng.pick([0, 1, 2, 5, 100, -1, -(2 ** 31), 2 ** 31 - 1]),
    starting_token:
      f.ok() || f.rng.chance(0.5)
        ? ""
        : f.rng.oneOf(
            () => f.string(),
            () =>
              Buffer.from(JSON.stringify({ o: f.rng.int(-5, 5000), t: f.string() })).toString("base64url"),
            () => Buffer.from(f.string()).toString("base64url"),
          ),
  }),
  GetCapacity: (f) => ({
    volume_capabilities: f.capabilities(),
    parameters: f.parameters(),
    ...(f.rng.chance(0.5) && { accessible_topology: { segments: f.anyMap() } }),
  }),
  CreateSnapshot: (f) => ({
    source_volume_id: f.volumeId(),
    name: f.name(),
    secrets: f.secrets(),
    parameters: f.anyMap(),
  }),
  DeleteSnapshot: (f) => ({ snapshot_id: f.snapshotId(), secrets: f.secrets() }),
  ListSnapshots: (f) => ({
    max_entries: f.rng.pick([0, 1, -1, 2 ** 31 - 1]),
    starting_token: f.rng.chance(0.5) ? "" : f.string(),
    source_volume_id: f.rng.chance(0.5) ? "" : f.volumeId(),
    snapshot_id: f.rng.chance(0.5) ? "" : f.snapshotId(),
    secrets: f.secrets(),
  }),
  GetSnapshot: (f) => ({ snapshot_id: f.snapshotId(), secrets: f.secrets() }),
  ControllerExpandVolume: (f) => ({
    volume_id: f.volumeId(),
    capacity_range: f.capacityRange(),
    secrets: f.secrets(),
    volume_capability: f.rng.chance(0.5) ? f.capability() : null,
  }),
  ControllerGetVolume: (f) => ({ volume_id: f.volumeId() }),
  ControllerModifyVolume: (f) => ({
    volume_id: f.volumeId(),
    secrets: f.secrets(),
    mutable_parameters: f.ok() ? { type: f.rng.pick(["gp3", "gp2"]) } : f.anyMap(),
  }),
  NodeStageVolume: (f) => ({
    volume_id: f.volumeId(),
    publish_context: f.ok()
      ? {}
      : { devicePath: f.rng.pick(["/dev/xvdaa", "/dev/sdb", "/dev/null", "/dev/loop0", "", f.string()]) },
    staging_target_path: f.path(),
    volume_capability: f.capability(),
    secrets: f.secrets(),
    volume_context: f.anyMap(),
  }),
  NodeUnstageVolume: (f) => ({ volume_id: f.volumeId(), staging_target_path: f.path() }),
  NodePublishVolume: (f) => ({
    volume_id: f.volumeId(),
    publish_context: f.anyMap(),
    staging_target_path: f.maybePath(),
    target_path: f.path(),
    volume_capability: f.capability(),
    readonly: f.rng.chance(0.3),
    secrets: f.secrets(),
    volume_context: f.anyMap(),
  }),
  NodeUnpublishVolume: (f) => ({ volume_id: f.volumeId(), target_path: f.path() }),
  NodeGetVolumeHealth: (f) => ({
    volume_id: f.volumeId(),
    volume_publish_path: f.maybePath(),
    staging_target_path: f.maybePath(),
  }),
  NodeGetStorageHealth: () => ({}),
  ControllerGetVolumeHealth: (f) => ({ volume_id: f.volumeId(), secrets: f.secrets() }),
  ControllerListVolumeHealth: (f) => ({
    max_entries: f.rng.pick([0, 1, -1, 2 ** 31 - 1]),
    starting_token: f.rng.chance(0.5) ? "" : f.string(),
    secrets: f.secrets(),
  }),
  GroupControllerGetCapabilities: () => ({}),
  CreateVolumeGroupSnapshot: (f) => ({
    name: f.name(),
    source_volume_ids: Array.from({ length: f.rng.int(0, 4) }, () => f.volumeId()),
    secrets: f.secrets(),
    parameters: f.anyMap(),
  }),
  DeleteVolumeGroupSnapshot: (f) => ({
    group_snapshot_id: f.groupSnapshotId(),
    snapshot_ids: Array.from({ length: f.rng.int(0, 3) }, () => f.snapshotId()),
    secrets: f.secrets(),
  }),
  GetVolumeGroupSnapshot: (f) => ({
    group_snapshot_id: f.groupSnapshotId(),
    snapshot_ids: Array.from({ length: f.rng.int(0, 3) }, () => f.snapshotId()),
    secrets: f.secrets(),
  }),
  NodeGetVolumeStats: (f) => ({
    volume_id: f.volumeId(),
    volume_path: f.path(),
    staging_target_path: f.maybePath(),
  }),
  NodeExpandVolume: (f) => ({
    volume_id: f.volumeId(),
    volume_path: f.path(),
    capacity_range: f.capacityRange(),
    staging_target_path: f.maybePath(),
    volume_capability: f.rng.chance(0.5) ? f.capability() : null,
    secrets: f.secrets(),
  }),
};

/** Request `index` of the run with `seed`: any RPC of the three services, equally likely. */
export function generateCall(targets: FuzzTargets, seed: number, index: number): FuzzCall {
  const rng = Rng.forCall(seed, index);
  const [service, method] = rng.pick(ALL_RPCS);
  return { service, method, request: BUILDERS[method]!(new Fields(rng, targets)) };
}

/** Long runs without spaces (paths, ids) cut in the middle: their start and end tell most. */
export function abbreviate(text: string): string {
  return text.replace(/\S{161,}/g, (run) => `${run.slice(0, 60)}…(${run.length} chars)…${run.slice(-60)}`);
}

/** A request for a log line: long strings and big maps cut, so that one line stays readable. */
export function shorten(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return abbreviate(value);
  if (value === null || typeof value !== "object" || depth > 6) return value;
  if (Array.isArray(value)) {
    const items = value.slice(0, 5).map((v) => shorten(v, depth + 1));
    return value.length > 5 ? [...items, `…(${value.length} items)`] : items;
  }
  const entries = Object.entries(value);
  const out: Record<string, unknown> = {};
  for (const [k, v] of entries.slice(0, 8)) out[shorten(k) as string] = shorten(v, depth + 1);
  if (entries.length > 8) out["…"] = `${entries.length} keys`;
  return out;
}
