/**
 * StorageClass parameters (CreateVolume) and VolumeAttributesClass parameters (ControllerModifyVolume)
 * -> typed EC2 requests. Pure functions: every rule of the parameter table lives here, every rejection
 * is a CsiError whose message names the parameter and the rule. Keys and volume_context keys are the
 * official EBS CSI driver's, so existing StorageClasses and PersistentVolumes keep working.
 */
import { invalidArgument, outOfRange } from "../csi/errors.ts";
import { FS_TYPES, type FsType, isSupportedFsType as isFsType } from "../host/blockdev.ts";
import type { CreateDiskInput, ModifyDiskInput, SnapshotLock, VolumeType } from "./cloud.ts";
import {
  DEFAULT_VOLUME_TYPE,
  GiB,
  isVolumeType,
  VOLUME_LIMITS,
  VOLUME_TYPES,
  type VolumeTypeLimits,
} from "./limits.ts";

/** Tags the driver sets on every volume; users may not set or override them. */
export const VOLUME_NAME_TAG = "CSIVolumeName";
export const MANAGED_TAG = "ebs.csi.aws.com/cluster";
export const SNAPSHOT_NAME_TAG = "CSIVolumeSnapshotName";
export const CREATED_FOR_TAGS = {
  pvcName: "kubernetes.io/created-for/pvc/name",
  pvcNamespace: "kubernetes.io/created-for/pvc/namespace",
  pvName: "kubernetes.io/created-for/pv/name",
} as const;

/** EC2 tag limits (per resource, key and value length in characters). */
const MAX_TAGS = 50;
const MAX_TAG_KEY_LENGTH = 128;
const MAX_TAG_VALUE_LENGTH = 256;

/** volume_context keys the node reads to build the mkfs command line (the official driver's names). */
export const VOLUME_CONTEXT_KEYS = {
  blockSize: "blocksize",
  inodeSize: "inodesize",
  bytesPerInode: "bytesperinode",
  numberOfInodes: "numberofinodes",
  ext4BigAlloc: "ext4bigalloc",
  ext4ClusterSize: "ext4clustersize",
} as const;

// The filesystems are those the node's host layer can make and grow.
export { FS_TYPES, type FsType, isSupportedFsType as isFsType } from "../host/blockdev.ts";
export const DEFAULT_FS_TYPE: FsType = "ext4";

/** The parameters' own prefix is case-sensitive in the official driver; every other key is not. */
const TAG_SPEC_PREFIX = "tagSpecification";
const PROVISIONER_PREFIX = "csi.storage.k8s.io/";
const FS_TYPE_KEY = "csi.storage.k8s.io/fstype";
const PVC_NAME_KEY = "csi.storage.k8s.io/pvc/name";
const PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace";
const PV_NAME_KEY = "csi.storage.k8s.io/pv/name";
const SNAPSHOT_NAME_KEY = "csi.storage.k8s.io/volumesnapshot/name";
const SNAPSHOT_NAMESPACE_KEY = "csi.storage.k8s.io/volumesnapshot/namespace";
const SNAPSHOT_CONTENT_NAME_KEY = "csi.storage.k8s.io/volumesnapshotcontent/name";
const GROUP_NAME_KEY = "csi.storage.k8s.io/volumegroupsnapshot/name";
const GROUP_NAMESPACE_KEY = "csi.storage.k8s.io/volumegroupsnapshot/namespace";
const GROUP_CONTENT_NAME_KEY = "csi.storage.k8s.io/volumegroupsnapshotcontent/name";
/** On every snapshot of a group: the group's id, by which Get and Delete find its members. */
export const GROUP_ID_TAG = "ebs.csi.aws.com/group-snapshot-id";
/** On every snapshot of a group: the CSI name of the group (CreateVolumeGroupSnapshot's idempotency). */
export const GROUP_NAME_TAG = "ebs.csi.aws.com/group-snapshot-name";

export interface ParameterDoc {
  readonly key: string;
  readonly values: string;
  readonly default: string;
  readonly description: string;
}

/** StorageClass parameters: the table the code accepts and the README shows. */
export const CREATE_PARAMETERS: readonly ParameterDoc[] = [
  {
    key: "type",
    values: VOLUME_TYPES.join(", "),
    default: DEFAULT_VOLUME_TYPE,
    description: "EBS volume type.",
  },
  {
    key: "iops",
    values: "whole number",
    default: "gp3: 3000",
    description: "Provisioned IOPS (gp3, io1, io2). Checked against the type's range and IOPS per GiB.",
  },
  {
    key: "iopsPerGB",
    values: "whole number",
    default: "",
    description: "IOPS per GiB of the volume (gp3, io1, io2), capped at the type's maximum. Not with iops.",
  },
  {
    key: "allowAutoIOPSPerGBIncrease",
    values: "true, false",
    default: "false",
    description: "Raise iopsPerGB × size to the type's minimum IOPS instead of failing.",
  },
  {
    key: "throughput",
    values: "MiB/s",
    default: "gp3: 125",
    description: "Provisioned throughput (gp3 only).",
  },
  { key: "encrypted", values: "true, false", default: "false", description: "Encrypt the volume." },
  {
    key: "kmsKeyId",
    values: "KMS key id or ARN",
    default: "",
    description: "Key to encrypt with; implies encrypted.",
  },
  {
    key: FS_TYPE_KEY,
    values: FS_TYPES.join(", "),
    default: DEFAULT_FS_TYPE,
    description: "Filesystem to create.",
  },
  {
    key: "fsType",
    values: FS_TYPES.join(", "),
    default: DEFAULT_FS_TYPE,
    description: `Legacy form of ${FS_TYPE_KEY}.`,
  },
  {
    key: "blockSize",
    values: "bytes, power of 2",
    default: "",
    description: "mkfs block size (ext2/3/4, xfs).",
  },
  {
    key: "inodeSize",
    values: "bytes, power of 2",
    default: "",
    description: "mkfs inode size (ext2/3/4, xfs).",
  },
  { key: "bytesPerInode", values: "bytes", default: "", description: "mkfs bytes-per-inode (ext2/3/4)." },
  {
    key: "numberOfInodes",
    values: "whole number",
    default: "",
    description: "mkfs number of inodes (ext2/3/4).",
  },
  { key: "ext4BigAlloc", values: "true, false", default: "false", description: "mkfs -O bigalloc (ext4)." },
  {
    key: "ext4ClusterSize",
    values: "bytes, power of 2",
    default: "",
    description: "Cluster size with ext4BigAlloc (ext4).",
  },
  {
    key: "volumeInitializationRate",
    values: "MiB/s, 100-300",
    default: "",
    description:
      "Volumes restored from a snapshot only: EC2 initializes (hydrates) the volume at this provisioned rate instead of on first read.",
  },
  {
    key: "blockExpress",
    values: "true, false",
    default: "false",
    description: "Deprecated, no effect: every io2 volume is Block Express. Only valid with io2.",
  },
  {
    key: `${TAG_SPEC_PREFIX}_<N>`,
    values: "key=value",
    default: "",
    description:
      "Extra volume tag; the prefix is case-sensitive. The value may use {{ .PVCName }}, " +
      "{{ .PVCNamespace }}, {{ .PVName }}, optionally piped to toUpper or toLower.",
  },
  {
    key: PVC_NAME_KEY,
    values: "set by the external-provisioner",
    default: "",
    description: `With --extra-create-metadata; becomes tag ${CREATED_FOR_TAGS.pvcName}.`,
  },
  {
    key: PVC_NAMESPACE_KEY,
    values: "set by the external-provisioner",
    default: "",
    description: `With --extra-create-metadata; becomes tag ${CREATED_FOR_TAGS.pvcNamespace}.`,
  },
  {
    key: PV_NAME_KEY,
    values: "set by the external-provisioner",
    default: "",
    description: `With --extra-create-metadata; becomes tag ${CREATED_FOR_TAGS.pvName}.`,
  },
];

/** VolumeAttributesClass parameters accepted by ControllerModifyVolume (and CreateVolume's mutable_parameters). */
export const MODIFY_PARAMETERS: readonly ParameterDoc[] = [
  { key: "type", values: VOLUME_TYPES.join(", "), default: "current", description: "New volume type." },
  {
    key: "volumeType",
    values: VOLUME_TYPES.join(", "),
    default: "",
    description: "Deprecated form of type.",
  },
  { key: "iops", values: "whole number", default: "current", description: "New provisioned IOPS." },
  {
    key: "iopsPerGB",
    values: "whole number",
    default: "",
    description: "New IOPS as a ratio of the current size.",
  },
  { key: "throughput", values: "MiB/s", default: "current", description: "New throughput (gp3 only)." },
  {
    key: `${TAG_SPEC_PREFIX}_<N>`,
    values: "key=value",
    default: "",
    description: "Tag to add; templates as for StorageClasses (the resizer needs --extra-modify-metadata).",
  },
];

const PROVISIONER_KEYS = [PVC_NAME_KEY, PVC_NAMESPACE_KEY, PV_NAME_KEY];

/** How a parameter map is read: which (lower-cased) keys mean something, which are refused and why. */
interface KeyRules {
  readonly known: ReadonlySet<string>;
  readonly refused: ReadonlyMap<string, string>;
  readonly refusedPrefixes: readonly (readonly [string, string])[];
  readonly knownList: string;
}

function keyRules(
  docs: readonly ParameterDoc[],
  refused: Record<string, string>,
  refusedPrefixes: readonly (readonly [string, string])[],
  sidecarKeys: readonly string[] = PROVISIONER_KEYS,
): KeyRules {
  const keys = docs.map((d) => d.key).filter((k) => !k.startsWith(TAG_SPEC_PREFIX));
  return {
    known: new Set([...keys, ...sidecarKeys].map((k) => k.toLowerCase())),
    refused: new Map(Object.entries(refused)),
    refusedPrefixes,
    knownList: [...keys, `${TAG_SPEC_PREFIX}_<N>`].join(", "),
  };
}

const AUTO_IOPS_ON_MODIFY_REFUSAL =
  "not supported by this driver: IOPS are not recomputed on resize; set iops in a VolumeAttributesClass instead";

const CREATE_RULES = keyRules(
  CREATE_PARAMETERS,
  {
    allowautoiopsincreaseonmodify: AUTO_IOPS_ON_MODIFY_REFUSAL,
    outpostarn:
      "not a CreateVolume parameter: the Outpost comes from the topology requirement " +
      "(topology.ebs.csi.aws.com/outpost-id), as in the official driver",
  },
  [],
);

const MODIFY_RULES = keyRules(
  MODIFY_PARAMETERS,
  { allowautoiopsincreaseonmodify: AUTO_IOPS_ON_MODIFY_REFUSAL },
  [
    [
      "tagdeletion",
      "not supported by this driver: tags can be added by a VolumeAttributesClass, not removed",
    ],
  ],
);

/** One parameter as the user wrote it: the field name for messages and its raw value. */
interface Param {
  readonly field: string;
  readonly value: string;
}

interface Collected {
  /** Lower-cased key -> parameter. */
  readonly values: Map<string, Param>;
  readonly tagSpecs: Param[];
}

function collect(parameters: Record<string, string>, source: string, rules: KeyRules): Collected {
  const values = new Map<string, Param>();
  const tagSpecs: Param[] = [];
  for (const key of Object.keys(parameters).sort()) {
    const param = { field: `${source}.${key}`, value: parameters[key] ?? "" };
    if (key.startsWith(TAG_SPEC_PREFIX)) {
      tagSpecs.push(param);
      continue;
    }
    const lower = key.toLowerCase();
    if (rules.known.has(lower)) {
      const earlier = values.get(lower);
      if (earlier) throw invalidArgument(param.field, `repeats ${earlier.field} (keys are case-insensitive)`);
      values.set(lower, param);
      continue;
    }
    if (lower.startsWith(TAG_SPEC_PREFIX.toLowerCase())) {
      throw invalidArgument(
        param.field,
        `the ${TAG_SPEC_PREFIX} prefix is case-sensitive: write ${TAG_SPEC_PREFIX}_<N>`,
      );
    }
    const refusal =
      rules.refused.get(lower) ?? rules.refusedPrefixes.find(([prefix]) => lower.startsWith(prefix))?.[1];
    if (refusal) throw invalidArgument(param.field, refusal);
    // Other sidecar keys (secret names and the like) are not addressed to the driver.
    if (lower.startsWith(PROVISIONER_PREFIX)) continue;
    throw invalidArgument(param.field, `unknown parameter; known: ${rules.knownList}`);
  }
  return { values, tagSpecs };
}

/** The deprecated volumeType key of VolumeAttributesClasses means type. */
function foldVolumeTypeAlias(values: Map<string, Param>): void {
  const alias = values.get("volumetype");
  if (!alias) return;
  values.delete("volumetype");
  const type = values.get("type");
  if (type && type.value.toLowerCase() !== alias.value.toLowerCase()) {
    throw invalidArgument(
      alias.field,
      `"${alias.value}" contradicts ${type.field} "${type.value}"; set only type`,
    );
  }
  if (!type) values.set("type", alias);
}

function parseWholeNumber(param: Param): number {
  const text = param.value.trim();
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw invalidArgument(param.field, `must be a whole number, got "${param.value}"`);
  }
  return n;
}

function parseBoolean(param: Param): boolean {
  const text = param.value.trim().toLowerCase();
  if (text === "true") return true;
  if (text === "false") return false;
  throw invalidArgument(param.field, `must be "true" or "false", got "${param.value}"`);
}

function parseVolumeType(param: Param): VolumeType {
  const text = param.value.trim().toLowerCase();
  if (isVolumeType(text)) return text;
  const why =
    text === "sbp1" || text === "sbg1" ? "Snowball Edge volume types are not supported" : "unknown type";
  throw invalidArgument(param.field, `"${param.value}": ${why}; use one of ${VOLUME_TYPES.join(", ")}`);
}

const typesWith = (has: (l: VolumeTypeLimits) => boolean): string =>
  VOLUME_TYPES.filter((t) => has(VOLUME_LIMITS[t])).join(", ");

/** Most IOPS a volume of this size may have; a type's minimum is always allowed (gp3's 3000 on 1 GiB). */
function maxIopsForSize(limits: VolumeTypeLimits, sizeGiB: number): number {
  const iops = limits.iops;
  if (!iops) return 0;
  return Math.max(iops.min, Math.min(iops.max, iops.maxPerGiB * sizeGiB));
}

function checkIops(param: Param, limits: VolumeTypeLimits, sizeGiB: number): number {
  const iops = limits.iops;
  if (!iops) throw invalidArgument(param.field, `${limits.type} volumes take no provisioned IOPS`);
  const n = parseWholeNumber(param);
  if (n < iops.min)
    throw invalidArgument(param.field, `${n} is below the ${limits.type} minimum of ${iops.min} IOPS`);
  // Capped, not refused, as the official driver does: StorageClasses written for it keep working
  // when a small volume cannot take the IOPS they ask for.
  return Math.min(n, iops.max, maxIopsForSize(limits, sizeGiB));
}

/**
 * iopsPerGB × size, capped at what the type allows (the official driver's documented behaviour).
 * allowIncrease: allowAutoIOPSPerGBIncrease, or undefined where that parameter does not exist.
 */
function iopsFromRatio(
  param: Param,
  limits: VolumeTypeLimits,
  sizeGiB: number,
  allowIncrease: boolean | undefined,
): number {
  const iops = limits.iops;
  if (!iops) throw invalidArgument(param.field, `${limits.type} volumes take no provisioned IOPS`);
  const perGiB = parseWholeNumber(param);
  const product = perGiB * sizeGiB;
  if (product >= iops.min) return Math.min(product, maxIopsForSize(limits, sizeGiB));
  if (allowIncrease) return iops.min;
  const remedy =
    allowIncrease === undefined
      ? "raise it or request a larger volume"
      : 'raise it, request a larger volume, or set allowAutoIOPSPerGBIncrease: "true"';
  throw invalidArgument(
    param.field,
    `${perGiB} IOPS per GiB × ${sizeGiB} GiB = ${product} IOPS, below the ${limits.type} minimum of ` +
      `${iops.min} IOPS; ${remedy}`,
  );
}

interface IopsParams {
  readonly iops: Param | undefined;
  readonly perGiB: Param | undefined;
}

/** The IOPS to request, or undefined to let EC2 apply the type's default. */
function resolveIops(
  { iops, perGiB }: IopsParams,
  limits: VolumeTypeLimits,
  sizeGiB: number,
  allowIncrease: boolean | undefined,
): number | undefined {
  if (iops && perGiB)
    throw invalidArgument(perGiB.field, `cannot be combined with ${iops.field}; set one of them`);
  const given = iops ?? perGiB;
  if (given && !limits.iops) {
    throw invalidArgument(
      given.field,
      `${limits.type} volumes take no provisioned IOPS; only ${typesWith((l) => l.iops !== undefined)} do`,
    );
  }
  if (iops) return checkIops(iops, limits, sizeGiB);
  if (perGiB) return iopsFromRatio(perGiB, limits, sizeGiB, allowIncrease);
  return undefined;
}

function resolveThroughput(
  param: Param | undefined,
  limits: VolumeTypeLimits,
  iops: number | undefined,
): number | undefined {
  if (!param) return undefined;
  const throughput = limits.throughput;
  if (!throughput) {
    throw invalidArgument(
      param.field,
      `${limits.type} volumes take no provisioned throughput; only ${typesWith((l) => l.throughput !== undefined)} does`,
    );
  }
  const n = parseWholeNumber(param);
  if (n < throughput.min) {
    throw invalidArgument(param.field, `${n} is below the ${limits.type} minimum of ${throughput.min} MiB/s`);
  }
  if (n > throughput.max) {
    throw invalidArgument(param.field, `${n} is above the ${limits.type} maximum of ${throughput.max} MiB/s`);
  }
  if (iops !== undefined && n > iops * throughput.maxPerIops) {
    throw invalidArgument(
      param.field,
      `${n} MiB/s needs at least ${Math.ceil(n / throughput.maxPerIops)} IOPS (${limits.type} allows ` +
        `${throughput.maxPerIops} MiB/s per provisioned IOPS), but the volume gets ${iops} IOPS`,
    );
  }
  return n;
}

/** Whole GiB to create: required_bytes rounded up (or the type's default), grown to the type's minimum. */
function resolveSize(type: VolumeType, requiredBytes: number, limitBytes: number): number {
  for (const [field, bytes] of [
    ["capacity_range.required_bytes", requiredBytes],
    ["capacity_range.limit_bytes", limitBytes],
  ] as const) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw invalidArgument(field, `must be a whole number of bytes, not negative, got ${bytes}`);
    }
  }
  const limits = VOLUME_LIMITS[type];
  const typeRange = `${type} volumes are ${limits.minSizeGiB}-${limits.maxSizeGiB} GiB`;
  if (requiredBytes > 0 && limitBytes > 0 && requiredBytes > limitBytes) {
    throw outOfRange(`capacity_range: required_bytes ${requiredBytes} is above limit_bytes ${limitBytes}`);
  }
  let sizeGiB = requiredBytes > 0 ? Math.ceil(requiredBytes / GiB) : limits.defaultSizeGiB;
  if (requiredBytes === 0 && limitBytes > 0) sizeGiB = Math.min(sizeGiB, Math.floor(limitBytes / GiB));
  if (sizeGiB > limits.maxSizeGiB) {
    throw outOfRange(
      `capacity_range: required_bytes ${requiredBytes} needs ${sizeGiB} GiB, above the ${type} maximum of ` +
        `${limits.maxSizeGiB} GiB (${typeRange})`,
    );
  }
  sizeGiB = Math.max(sizeGiB, limits.minSizeGiB);
  if (limitBytes > 0 && sizeGiB * GiB > limitBytes) {
    const holds = requiredBytes > 0 ? ` that holds required_bytes ${requiredBytes}` : "";
    throw outOfRange(
      `capacity_range: limit_bytes ${limitBytes} is below ${sizeGiB} GiB (${sizeGiB * GiB} bytes), the smallest ` +
        `${type} volume${holds} (${typeRange})`,
    );
  }
  return sizeGiB;
}

function resolveEncryption(values: Map<string, Param>): { encrypted: boolean; kmsKeyId: string | undefined } {
  const encryptedParam = values.get("encrypted");
  const keyParam = values.get("kmskeyid");
  const encrypted = encryptedParam ? parseBoolean(encryptedParam) : undefined;
  const kmsKeyId = keyParam?.value.trim() || undefined;
  if (keyParam && kmsKeyId && /\s/.test(kmsKeyId)) {
    throw invalidArgument(keyParam.field, `"${keyParam.value}" is not a KMS key id, alias or ARN`);
  }
  if (keyParam && kmsKeyId && encryptedParam && encrypted === false) {
    throw invalidArgument(
      keyParam.field,
      `needs an encrypted volume, but ${encryptedParam.field} is "false"`,
    );
  }
  return { encrypted: encrypted === true || kmsKeyId !== undefined, kmsKeyId };
}

/** The capability's fs_type wins (the external-provisioner moves csi.storage.k8s.io/fstype there). */
function resolveFsType(values: Map<string, Param>, capabilityFsType: string | undefined): FsType {
  const csiKey = values.get(FS_TYPE_KEY);
  const legacy = values.get("fstype");
  const same = (a: string, b: string) => a.trim().toLowerCase() === b.trim().toLowerCase();
  if (csiKey && legacy && !same(csiKey.value, legacy.value)) {
    throw invalidArgument(legacy.field, `"${legacy.value}" contradicts ${csiKey.field} "${csiKey.value}"`);
  }
  const fromParameters = csiKey ?? legacy;
  const fromCapability = capabilityFsType?.trim() || undefined;
  if (fromCapability && fromParameters?.value.trim() && !same(fromCapability, fromParameters.value)) {
    throw invalidArgument(
      fromParameters.field,
      `"${fromParameters.value}" contradicts the volume capability's fs_type "${fromCapability}"`,
    );
  }
  const [field, raw] = fromCapability
    ? ["volume_capabilities.mount.fs_type", fromCapability]
    : [fromParameters?.field ?? FS_TYPE_KEY, fromParameters?.value.trim() || DEFAULT_FS_TYPE];
  const fsType = raw.toLowerCase();
  if (!isFsType(fsType)) {
    throw invalidArgument(field, `"${raw}" is not a supported filesystem; use one of ${FS_TYPES.join(", ")}`);
  }
  return fsType;
}

const EXT_FS: readonly FsType[] = ["ext2", "ext3", "ext4"];
const ALL_FS: readonly FsType[] = [...EXT_FS, "xfs"];

interface SizeRule {
  readonly min: number;
  readonly max: number;
  readonly powerOfTwo: boolean;
}

interface MkfsOption {
  readonly key: keyof typeof VOLUME_CONTEXT_KEYS;
  readonly fsTypes: readonly FsType[];
  /** Accepted values per filesystem (mke2fs(8), mkfs.xfs(8)); undefined: a boolean. */
  readonly rule: ((fsType: FsType) => SizeRule) | undefined;
}

const MKFS_OPTIONS: readonly MkfsOption[] = [
  {
    key: "blockSize",
    fsTypes: ALL_FS,
    rule: (fs) => ({ min: fs === "xfs" ? 512 : 1024, max: 65_536, powerOfTwo: true }),
  },
  {
    key: "inodeSize",
    fsTypes: ALL_FS,
    rule: (fs) =>
      fs === "xfs" ? { min: 256, max: 2048, powerOfTwo: true } : { min: 128, max: 65_536, powerOfTwo: true },
  },
  {
    key: "bytesPerInode",
    fsTypes: EXT_FS,
    rule: () => ({ min: 1024, max: 65_536 * 1024, powerOfTwo: false }),
  },
  {
    key: "numberOfInodes",
    fsTypes: EXT_FS,
    rule: () => ({ min: 1, max: Number.MAX_SAFE_INTEGER, powerOfTwo: false }),
  },
  { key: "ext4BigAlloc", fsTypes: ["ext4"], rule: undefined },
  { key: "ext4ClusterSize", fsTypes: ["ext4"], rule: () => ({ min: 2048, max: 2 ** 31, powerOfTwo: true }) },
];

const isPowerOfTwo = (n: number): boolean => n > 0 && 2 ** Math.round(Math.log2(n)) === n;

/** mkfs options -> volume_context, as the official driver passes them to NodeStageVolume. */
function resolveMkfsOptions(
  values: Map<string, Param>,
  fsType: FsType,
  block: boolean,
): Record<string, string> {
  const context: Record<string, string> = {};
  for (const option of MKFS_OPTIONS) {
    const param = values.get(option.key.toLowerCase());
    if (!param) continue;
    const rule = option.rule?.(fsType);
    const n = rule ? parseWholeNumber(param) : undefined;
    // A false ext4BigAlloc asks for nothing, whatever the filesystem.
    if (!rule && !parseBoolean(param)) continue;
    if (block)
      throw invalidArgument(
        param.field,
        "formats a filesystem, but the volume is requested as a raw block device",
      );
    if (!option.fsTypes.includes(fsType)) {
      throw invalidArgument(param.field, `does not apply to ${fsType}; only to ${option.fsTypes.join(", ")}`);
    }
    if (rule && n !== undefined) {
      if (n < rule.min || n > rule.max || (rule.powerOfTwo && !isPowerOfTwo(n))) {
        const shape = rule.powerOfTwo ? "a power of 2 " : "";
        throw invalidArgument(
          param.field,
          `${n} must be ${shape}from ${rule.min} to ${rule.max} for ${fsType}`,
        );
      }
      context[VOLUME_CONTEXT_KEYS[option.key]] = String(n);
    } else {
      context[VOLUME_CONTEXT_KEYS[option.key]] = "true";
    }
  }
  const clusterSize = values.get("ext4clustersize");
  if (clusterSize && context[VOLUME_CONTEXT_KEYS.ext4BigAlloc] !== "true") {
    throw invalidArgument(clusterSize.field, 'needs ext4BigAlloc: "true"');
  }
  const blockSize = Number(context[VOLUME_CONTEXT_KEYS.blockSize] ?? 0);
  const inodeSize = Number(context[VOLUME_CONTEXT_KEYS.inodeSize] ?? 0);
  const inodeParam = values.get("inodesize");
  if (blockSize > 0 && fsType !== "xfs" && inodeSize > blockSize && inodeParam) {
    throw invalidArgument(inodeParam.field, `${inodeSize} is larger than the block size ${blockSize}`);
  }
  return context;
}

/** Template field -> the sidecar parameter that carries its value. */
type TemplateFields = Readonly<Record<string, string>>;
type TemplateProps = Record<string, string>;

const VOLUME_TEMPLATE: TemplateFields = {
  PVCName: PVC_NAME_KEY,
  PVCNamespace: PVC_NAMESPACE_KEY,
  PVName: PV_NAME_KEY,
};
const GROUP_TEMPLATE: TemplateFields = {
  VolumeGroupSnapshotName: GROUP_NAME_KEY,
  VolumeGroupSnapshotNamespace: GROUP_NAMESPACE_KEY,
  VolumeGroupSnapshotContentName: GROUP_CONTENT_NAME_KEY,
};
const SNAPSHOT_TEMPLATE: TemplateFields = {
  VolumeSnapshotName: SNAPSHOT_NAME_KEY,
  VolumeSnapshotNamespace: SNAPSHOT_NAMESPACE_KEY,
  VolumeSnapshotContentName: SNAPSHOT_CONTENT_NAME_KEY,
};

const templateHelp = (fields: TemplateFields) =>
  `use ${Object.keys(fields)
    .map((f) => `{{ .${f} }}`)
    .join(", ")}, optionally with | toUpper or | toLower`;
// {{ .Field }}, {{ .Field | toUpper }}, {{ toUpper .Field }}: the part of Go's text/template that tags need.
const TEMPLATE_ACTION = /^(?:(toUpper|toLower)\s+\.(\w+)|\.(\w+)(?:\s*\|\s*(toUpper|toLower))?)$/;

function evaluateAction(field: string, action: string, props: TemplateProps, fields: TemplateFields): string {
  const match = TEMPLATE_ACTION.exec(action);
  if (!match) throw invalidArgument(field, `unsupported template {{ ${action} }}; ${templateHelp(fields)}`);
  const name = match[2] ?? match[3] ?? "";
  const fn = match[1] ?? match[4];
  if (!Object.hasOwn(fields, name))
    throw invalidArgument(field, `unknown template field .${name}; ${templateHelp(fields)}`);
  const value = props[name];
  if (value === undefined) {
    throw invalidArgument(
      field,
      `{{ .${name} }} needs the ${fields[name]} parameter, which the CSI sidecar adds when started ` +
        "with --extra-create-metadata (provisioner, snapshotter) or --extra-modify-metadata (resizer)",
    );
  }
  if (fn === "toUpper") return value.toUpperCase();
  if (fn === "toLower") return value.toLowerCase();
  return value;
}

function renderTemplate(field: string, text: string, props: TemplateProps, fields: TemplateFields): string {
  let out = "";
  let rest = text;
  for (let open = rest.indexOf("{{"); open >= 0; open = rest.indexOf("{{")) {
    const close = rest.indexOf("}}", open + 2);
    if (close < 0) throw invalidArgument(field, `"{{" without "}}" in "${text}"`);
    out += rest.slice(0, open) + evaluateAction(field, rest.slice(open + 2, close).trim(), props, fields);
    rest = rest.slice(close + 2);
  }
  return out + rest;
}

function templateProps(values: Map<string, Param>, fields: TemplateFields): TemplateProps {
  const props: TemplateProps = {};
  for (const [name, key] of Object.entries(fields)) {
    const value = values.get(key)?.value;
    if (value !== undefined) props[name] = value;
  }
  return props;
}

const RESERVED_TAG_KEYS: ReadonlySet<string> = new Set([VOLUME_NAME_TAG, MANAGED_TAG, SNAPSHOT_NAME_TAG]);
const charCount = (s: string): number => [...s].length;

function checkTagSize(field: string, key: string, value: string): void {
  if (key === "") throw invalidArgument(field, "a tag key must not be empty");
  if (charCount(key) > MAX_TAG_KEY_LENGTH) {
    throw invalidArgument(
      field,
      `tag key "${key}" is ${charCount(key)} characters; EC2 allows ${MAX_TAG_KEY_LENGTH}`,
    );
  }
  if (charCount(value) > MAX_TAG_VALUE_LENGTH) {
    throw invalidArgument(
      field,
      `the value of tag "${key}" is ${charCount(value)} characters; EC2 allows ${MAX_TAG_VALUE_LENGTH}`,
    );
  }
}

/** Rules for tags a user adds (extra tags, tagSpecification_N): the official driver's reservations. */
function checkUserTag(field: string, key: string, value: string): void {
  checkTagSize(field, key, value);
  if (RESERVED_TAG_KEYS.has(key)) throw invalidArgument(field, `tag key "${key}" is reserved for the driver`);
  if (key.toLowerCase().startsWith("aws:"))
    throw invalidArgument(field, `tag key "${key}": the aws: prefix is reserved for AWS`);
  if (key.startsWith("kubernetes.io")) {
    throw invalidArgument(field, `tag key "${key}": the kubernetes.io prefix is reserved for Kubernetes`);
  }
}

/** --extra-tags, checked by the rules for tags a user adds, in key order. */
function addExtraTags(tags: Map<string, string>, extraTags: Record<string, string>): void {
  for (const key of Object.keys(extraTags).sort()) {
    const value = extraTags[key] ?? "";
    checkUserTag(`extraTags.${key}`, key, value);
    tags.set(key, value);
  }
}

/** tagSpecification_N = "key=value" -> tags; two of them may not give one key different values. */
function evaluateTagSpecs(
  specs: readonly Param[],
  props: TemplateProps,
  fields: TemplateFields = VOLUME_TEMPLATE,
): Map<string, string> {
  const tags = new Map<string, string>();
  const setBy = new Map<string, string>();
  for (const spec of specs) {
    const eq = spec.value.indexOf("=");
    if (eq < 0) throw invalidArgument(spec.field, `"${spec.value}" is not key=value`);
    const key = spec.value.slice(0, eq);
    const value = renderTemplate(spec.field, spec.value.slice(eq + 1), props, fields);
    checkUserTag(spec.field, key, value);
    const earlier = tags.get(key);
    if (earlier !== undefined && earlier !== value) {
      throw invalidArgument(
        spec.field,
        `sets tag "${key}" to "${value}", but ${setBy.get(key)} sets it to "${earlier}"`,
      );
    }
    tags.set(key, value);
    setBy.set(key, spec.field);
  }
  return tags;
}

export interface CreateVolumeRequestInfo {
  /** CreateVolumeRequest.name, the CSIVolumeName tag. */
  name: string;
  /** 0 = not set. */
  requiredBytes: number;
  /** 0 = not set. */
  limitBytes: number;
  /** --extra-tags. */
  extraTags: Record<string, string>;
  /** --k8s-tag-cluster-id. */
  clusterId?: string;
  /** fs_type of the mount capability, which wins over the parameters. */
  fsType?: string;
  /** True when a capability is a raw block volume: no filesystem, so mkfs options are refused. */
  block?: boolean;
  /** The volume is restored from a snapshot (volumeInitializationRate applies only then). */
  fromSnapshot?: boolean;
  /** CreateVolumeRequest.mutable_parameters (a VolumeAttributesClass): they win over the parameters. */
  mutableParameters?: Record<string, string>;
}

export type CreateDiskRequest = Omit<CreateDiskInput, "clientToken" | "zone" | "snapshotId" | "outpostArn">;

export interface CreateParameters {
  disk: CreateDiskRequest;
  /** The CreateVolumeResponse volume_context: mkfs options for NodeStageVolume. */
  volumeContext: Record<string, string>;
  fsType: FsType;
}

/** Mutable parameters replace their StorageClass counterparts ("MUST take precedence", CSI spec). */
function overlay(values: Map<string, Param>, mutable: Map<string, Param>): void {
  const exclusive: Record<string, string> = { iops: "iopspergb", iopspergb: "iops" };
  for (const [key, param] of mutable) {
    values.set(key, param);
    const other = exclusive[key];
    if (other) values.delete(other);
  }
}

export function parseCreateParameters(
  parameters: Record<string, string>,
  request: CreateVolumeRequestInfo,
): CreateParameters {
  const { values, tagSpecs } = collect(parameters, "parameters", CREATE_RULES);
  const mutable = request.mutableParameters
    ? collect(request.mutableParameters, "mutable_parameters", MODIFY_RULES)
    : undefined;
  if (mutable) {
    foldVolumeTypeAlias(mutable.values);
    overlay(values, mutable.values);
  }

  const typeParam = values.get("type");
  const type = typeParam ? parseVolumeType(typeParam) : DEFAULT_VOLUME_TYPE;
  const limits = VOLUME_LIMITS[type];
  const sizeGiB = resolveSize(type, request.requiredBytes, request.limitBytes);

  const iopsParams = { iops: values.get("iops"), perGiB: values.get("iopspergb") };
  const allowIncreaseParam = values.get("allowautoiopspergbincrease");
  const allowIncrease = allowIncreaseParam ? parseBoolean(allowIncreaseParam) : false;
  const iops = resolveIops(iopsParams, limits, sizeGiB, allowIncrease);
  if (iops === undefined && limits.iops && limits.iops.default === undefined) {
    throw invalidArgument("parameters.iops", `${type} volumes need provisioned IOPS: set iops or iopsPerGB`);
  }
  const throughput = resolveThroughput(values.get("throughput"), limits, iops ?? limits.iops?.default);

  const initRateParam = values.get("volumeinitializationrate");
  let initializationRate: number | undefined;
  if (initRateParam) {
    if (!request.fromSnapshot) {
      throw invalidArgument(
        initRateParam.field,
        "applies only to volumes restored from a snapshot (volume_content_source.snapshot)",
      );
    }
    initializationRate = parseRange(initRateParam, 100, 300, "MiB/s");
  }

  const blockExpress = values.get("blockexpress");
  if (blockExpress && parseBoolean(blockExpress) && type !== "io2") {
    throw invalidArgument(blockExpress.field, `applies only to io2 volumes, not ${type}`);
  }

  const { encrypted, kmsKeyId } = resolveEncryption(values);
  const fsType = resolveFsType(values, request.fsType);
  const volumeContext = resolveMkfsOptions(values, fsType, request.block === true);
  // The node formats with the capability's fs_type; when a CO leaves that empty, this is the one
  // the StorageClass asked for.
  if (request.block !== true) volumeContext[FS_TYPE_KEY] = fsType;

  const disk: CreateDiskRequest = {
    sizeGiB,
    type,
    encrypted,
    tags: createTags(request, values, tagSpecs, mutable?.tagSpecs ?? []),
    ...(iops !== undefined && { iops }),
    ...(throughput !== undefined && { throughput }),
    ...(kmsKeyId !== undefined && { kmsKeyId }),
    ...(initializationRate !== undefined && { initializationRate }),
  };
  return { disk, volumeContext, fsType };
}

function createTags(
  request: CreateVolumeRequestInfo,
  values: Map<string, Param>,
  tagSpecs: readonly Param[],
  mutableTagSpecs: readonly Param[],
): Record<string, string> {
  const tags = new Map<string, string>([
    [VOLUME_NAME_TAG, request.name],
    [MANAGED_TAG, "true"],
  ]);
  const createdFor: readonly (readonly [string, string])[] = [
    [PVC_NAME_KEY, CREATED_FOR_TAGS.pvcName],
    [PVC_NAMESPACE_KEY, CREATED_FOR_TAGS.pvcNamespace],
    [PV_NAME_KEY, CREATED_FOR_TAGS.pvName],
  ];
  for (const [key, tag] of createdFor) {
    const value = values.get(key)?.value;
    if (value !== undefined) tags.set(tag, value);
  }
  if (request.clusterId) {
    // The in-tree plugin's tags, which the official driver keeps for compatibility.
    tags.set(`kubernetes.io/cluster/${request.clusterId}`, "owned");
    tags.set("KubernetesCluster", request.clusterId);
    tags.set("Name", `${request.clusterId}-dynamic-${request.name}`);
  }
  addExtraTags(tags, request.extraTags);
  const props = templateProps(values, VOLUME_TEMPLATE);
  // The VolumeAttributesClass's tags win over the StorageClass's.
  for (const specs of [tagSpecs, mutableTagSpecs]) {
    for (const [key, value] of evaluateTagSpecs(specs, props)) tags.set(key, value);
  }
  for (const [key, value] of tags) checkTagSize(`tags.${key}`, key, value);
  if (tags.size > MAX_TAGS) {
    throw invalidArgument(
      "parameters",
      `the volume would carry ${tags.size} tags (driver tags, extraTags and ${TAG_SPEC_PREFIX}_<N> together); ` +
        `EC2 allows ${MAX_TAGS}`,
    );
  }
  return Object.fromEntries(tags);
}

export interface CurrentVolume {
  sizeGiB: number;
  type: VolumeType;
}

export interface ModifyParameters {
  /** Only what changes; type is left out when it equals the current type. */
  modify: ModifyDiskInput;
  /** Tags to add (CreateTags); empty when none. */
  tags: Record<string, string>;
}

/** ControllerModifyVolume mutable_parameters -> ModifyVolume input and tags to add, all checked first. */
export function parseModifyParameters(
  mutable: Record<string, string>,
  current: CurrentVolume,
): ModifyParameters {
  const { values, tagSpecs } = collect(mutable, "mutable_parameters", MODIFY_RULES);
  foldVolumeTypeAlias(values);

  const typeParam = values.get("type");
  const type = typeParam ? parseVolumeType(typeParam) : current.type;
  const limits = VOLUME_LIMITS[type];
  const typeChanges = type !== current.type;
  if (
    typeParam &&
    typeChanges &&
    (current.sizeGiB < limits.minSizeGiB || current.sizeGiB > limits.maxSizeGiB)
  ) {
    throw invalidArgument(
      typeParam.field,
      `a ${current.sizeGiB} GiB volume cannot become ${type}: ${type} volumes are ` +
        `${limits.minSizeGiB}-${limits.maxSizeGiB} GiB`,
    );
  }

  const iopsParams = { iops: values.get("iops"), perGiB: values.get("iopspergb") };
  const iops = resolveIops(iopsParams, limits, current.sizeGiB, undefined);
  if (typeParam && typeChanges && iops === undefined && limits.iops && limits.iops.default === undefined) {
    throw invalidArgument(
      typeParam.field,
      `changing to ${type} needs provisioned IOPS: set iops or iopsPerGB too`,
    );
  }
  // Unchanged gp3 keeps IOPS we do not know here; a type change to gp3 gets EC2's default.
  const knownIops = iops ?? (typeChanges ? limits.iops?.default : undefined);
  const throughput = resolveThroughput(values.get("throughput"), limits, knownIops);

  const modify: ModifyDiskInput = {
    ...(typeChanges && { type }),
    ...(iops !== undefined && { iops }),
    ...(throughput !== undefined && { throughput }),
  };
  return {
    modify,
    tags: Object.fromEntries(evaluateTagSpecs(tagSpecs, templateProps(values, VOLUME_TEMPLATE))),
  };
}

/** VolumeSnapshotClass parameters (CreateSnapshot): the official driver's keys, case-insensitive. */
export const SNAPSHOT_PARAMETERS: readonly ParameterDoc[] = [
  {
    key: `${TAG_SPEC_PREFIX}_<N>`,
    values: "key=value",
    default: "",
    description:
      "Tag to add. The value may use {{ .VolumeSnapshotName }}, {{ .VolumeSnapshotNamespace }} and " +
      "{{ .VolumeSnapshotContentName }} (the snapshotter adds them with --extra-create-metadata), " +
      "optionally with | toUpper or | toLower.",
  },
  {
    key: "fastSnapshotRestoreAvailabilityZones",
    values: "zones, comma-separated",
    default: "",
    description: "Enable Fast Snapshot Restore in these zones of the region (billed per zone and hour).",
  },
  {
    key: "outpostArn",
    values: "Outpost ARN",
    default: "",
    description: "Keep the snapshot on this Outpost (a local snapshot).",
  },
  {
    key: "lockMode",
    values: "governance, compliance",
    default: "",
    description:
      "Lock the snapshot against deletion (EC2 snapshot lock). Governance locks can be lifted with the " +
      "right IAM permission; compliance locks cannot until they expire. DeleteSnapshot fails while it holds.",
  },
  {
    key: "lockDuration",
    values: "days, 1-36500",
    default: "",
    description: "How long the lock holds. Exactly one of lockDuration and lockExpirationDate.",
  },
  {
    key: "lockExpirationDate",
    values: "RFC 3339 time",
    default: "",
    description: "When the lock ends (in the future).",
  },
  {
    key: "lockCoolOffPeriod",
    values: "hours, 1-72",
    default: "",
    description: "Compliance mode only: the time during which the lock can still be changed or removed.",
  },
  {
    key: SNAPSHOT_NAME_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "With --extra-create-metadata; for the templates above (it becomes no tag by itself).",
  },
  {
    key: SNAPSHOT_NAMESPACE_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "As above.",
  },
  {
    key: SNAPSHOT_CONTENT_NAME_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "As above.",
  },
];

const SNAPSHOT_RULES = keyRules(SNAPSHOT_PARAMETERS, {}, [], []);

export interface SnapshotRequestInfo {
  /** CreateSnapshotRequest.name, the CSIVolumeSnapshotName tag. */
  name: string;
  /** --extra-tags. */
  extraTags: Record<string, string>;
  /** --k8s-tag-cluster-id. */
  clusterId?: string | undefined;
}

export interface SnapshotParameters {
  tags: Record<string, string>;
  fastRestoreZones: string[];
  outpostArn?: string;
  lock?: SnapshotLock;
}

const MAX_LOCK_DAYS = 36_500;
const MAX_COOL_OFF_HOURS = 72;
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function parseRange(param: Param, min: number, max: number, unit: string): number {
  const n = parseWholeNumber(param);
  if (n < min || n > max) throw invalidArgument(param.field, `must be ${min}-${max} ${unit}, got ${n}`);
  return n;
}

function parseLock(values: Map<string, Param>, now: Date): SnapshotLock | undefined {
  const mode = values.get("lockmode");
  const duration = values.get("lockduration");
  const expiration = values.get("lockexpirationdate");
  const coolOff = values.get("lockcooloffperiod");
  const given = [mode, duration, expiration, coolOff].filter((p) => p !== undefined);
  if (given.length === 0) return undefined;
  if (!mode)
    throw invalidArgument(given[0]!.field, "a snapshot lock needs lockMode (governance or compliance)");
  const lockMode = mode.value.trim().toLowerCase();
  if (lockMode !== "governance" && lockMode !== "compliance") {
    throw invalidArgument(mode.field, `must be governance or compliance, got "${mode.value}"`);
  }
  if ((duration === undefined) === (expiration === undefined)) {
    throw invalidArgument(
      mode.field,
      "a snapshot lock needs exactly one of lockDuration and lockExpirationDate",
    );
  }
  const lock: SnapshotLock = { mode: lockMode };
  if (duration) lock.durationDays = parseRange(duration, 1, MAX_LOCK_DAYS, "days");
  if (expiration) {
    const when = new Date(expiration.value.trim());
    if (!RFC3339.test(expiration.value.trim()) || Number.isNaN(when.getTime())) {
      throw invalidArgument(
        expiration.field,
        `must be an RFC 3339 time such as 2030-12-31T23:59:59Z, got "${expiration.value}"`,
      );
    }
    if (when.getTime() <= now.getTime())
      throw invalidArgument(expiration.field, `${expiration.value} is in the past`);
    lock.expirationDate = when;
  }
  if (coolOff) {
    if (lockMode !== "compliance")
      throw invalidArgument(coolOff.field, "applies only with lockMode compliance");
    lock.coolOffHours = parseRange(coolOff, 1, MAX_COOL_OFF_HOURS, "hours");
  }
  return lock;
}

/** VolumeSnapshotClass parameters -> the snapshot's tags and what to do after the create, all checked first. */
export function parseSnapshotParameters(
  parameters: Record<string, string>,
  request: SnapshotRequestInfo,
  now = new Date(),
): SnapshotParameters {
  const { values, tagSpecs } = collect(parameters, "parameters", SNAPSHOT_RULES);
  const tags = new Map<string, string>([
    [SNAPSHOT_NAME_TAG, request.name],
    [MANAGED_TAG, "true"],
  ]);
  if (request.clusterId) {
    tags.set(`kubernetes.io/cluster/${request.clusterId}`, "owned");
    tags.set("Name", `${request.clusterId}-dynamic-${request.name}`);
    tags.set("ebs.csi.aws.com/cluster-name", request.clusterId);
  }
  addExtraTags(tags, request.extraTags);
  for (const [key, value] of evaluateTagSpecs(
    tagSpecs,
    templateProps(values, SNAPSHOT_TEMPLATE),
    SNAPSHOT_TEMPLATE,
  )) {
    tags.set(key, value);
  }
  if (tags.size > MAX_TAGS) {
    throw invalidArgument("parameters", `the snapshot would carry ${tags.size} tags; EC2 allows ${MAX_TAGS}`);
  }

  const zonesParam = values.get("fastsnapshotrestoreavailabilityzones");
  const fastRestoreZones: string[] = [];
  if (zonesParam) {
    for (const zone of zonesParam.value.split(",").map((z) => z.trim())) {
      if (zone === "") throw invalidArgument(zonesParam.field, `an empty zone in "${zonesParam.value}"`);
      if (!fastRestoreZones.includes(zone)) fastRestoreZones.push(zone);
    }
  }
  const out: SnapshotParameters = { tags: Object.fromEntries(tags), fastRestoreZones };
  const outpost = values.get("outpostarn");
  if (outpost) {
    const arn = outpost.value.trim();
    if (!/^arn:[^:]+:outposts:[^:]+:\d{12}:outpost\/op-[0-9a-f]+$/.test(arn)) {
      throw invalidArgument(
        outpost.field,
        `"${outpost.value}" is not an Outpost ARN (arn:aws:outposts:<region>:<account>:outpost/op-<id>)`,
      );
    }
    out.outpostArn = arn;
  }
  const lock = parseLock(values, now);
  if (lock) out.lock = lock;
  return out;
}

/** VolumeGroupSnapshotClass parameters (CreateVolumeGroupSnapshot). */
export const GROUP_SNAPSHOT_PARAMETERS: readonly ParameterDoc[] = [
  {
    key: `${TAG_SPEC_PREFIX}_<N>`,
    values: "key=value",
    default: "",
    description:
      "Tag to add to every snapshot of the group. The value may use {{ .VolumeGroupSnapshotName }}, " +
      "{{ .VolumeGroupSnapshotNamespace }} and {{ .VolumeGroupSnapshotContentName }} (--extra-create-metadata), " +
      "optionally with | toUpper or | toLower.",
  },
  {
    key: GROUP_NAME_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "With --extra-create-metadata; for the templates above.",
  },
  {
    key: GROUP_NAMESPACE_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "As above.",
  },
  {
    key: GROUP_CONTENT_NAME_KEY,
    values: "set by the external-snapshotter",
    default: "",
    description: "As above.",
  },
];

const GROUP_SNAPSHOT_RULES = keyRules(GROUP_SNAPSHOT_PARAMETERS, {}, [], []);

/** VolumeGroupSnapshotClass parameters -> the tags of every snapshot in the group, all checked first. */
export function parseGroupSnapshotParameters(
  parameters: Record<string, string>,
  request: {
    name: string;
    groupId: string;
    extraTags: Record<string, string>;
    clusterId?: string | undefined;
  },
): { tags: Record<string, string> } {
  const { values, tagSpecs } = collect(parameters, "parameters", GROUP_SNAPSHOT_RULES);
  const tags = new Map<string, string>([
    [MANAGED_TAG, "true"],
    [GROUP_ID_TAG, request.groupId],
    [GROUP_NAME_TAG, request.name],
  ]);
  if (request.clusterId) {
    tags.set(`kubernetes.io/cluster/${request.clusterId}`, "owned");
    tags.set("ebs.csi.aws.com/cluster-name", request.clusterId);
  }
  addExtraTags(tags, request.extraTags);
  for (const [key, value] of evaluateTagSpecs(
    tagSpecs,
    templateProps(values, GROUP_TEMPLATE),
    GROUP_TEMPLATE,
  )) {
    if (key === GROUP_ID_TAG || key === GROUP_NAME_TAG) {
      throw invalidArgument("parameters", `tag key "${key}" is reserved for the driver`);
    }
    tags.set(key, value);
  }
  if (tags.size > MAX_TAGS) {
    throw invalidArgument(
      "parameters",
      `each snapshot would carry ${tags.size} tags; EC2 allows ${MAX_TAGS}`,
    );
  }
  return { tags: Object.fromEntries(tags) };
}

function markdownTable(docs: readonly ParameterDoc[]): string {
  const cell = (s: string) => s.replaceAll("|", "\\|");
  const rows = docs.map(
    (d) => `| \`${cell(d.key)}\` | ${cell(d.values)} | ${cell(d.default)} | ${cell(d.description)} |`,
  );
  return `${["| Parameter | Values | Default | Description |", "|---|---|---|---|", ...rows].join("\n")}\n`;
}

/** StorageClass parameters as Markdown, for the README. */
export const renderCreateParametersMarkdown = (): string => markdownTable(CREATE_PARAMETERS);

/** VolumeAttributesClass parameters as Markdown, for the README. */
export const renderModifyParametersMarkdown = (): string => markdownTable(MODIFY_PARAMETERS);

/** VolumeSnapshotClass parameters as Markdown, for the README. */
export const renderSnapshotParametersMarkdown = (): string => markdownTable(SNAPSHOT_PARAMETERS);

/** VolumeGroupSnapshotClass parameters as Markdown, for the README. */
export const renderGroupSnapshotParametersMarkdown = (): string => markdownTable(GROUP_SNAPSHOT_PARAMETERS);
