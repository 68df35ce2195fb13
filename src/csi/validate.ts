import { type KubeletDirs, MAX_PATH_BYTES } from "../host/paths.ts";
import { invalidArgument } from "./errors.ts";
import type { VolumeCapability } from "./types.ts";

/** CSI size limits: strings up to 128 bytes, map fields up to 4 KiB in total. */
export const MAX_STRING_BYTES = 128;
export const MAX_MAP_BYTES = 4096;

export type AccessMode =
  | "SINGLE_NODE_WRITER"
  | "SINGLE_NODE_READER_ONLY"
  | "MULTI_NODE_READER_ONLY"
  | "MULTI_NODE_SINGLE_WRITER"
  | "MULTI_NODE_MULTI_WRITER"
  | "SINGLE_NODE_SINGLE_WRITER"
  | "SINGLE_NODE_MULTI_WRITER";

/** A required string field: present, at most `maxBytes` long, no NUL. Returns it. */
export function requireString(value: unknown, field: string, maxBytes = MAX_STRING_BYTES): string {
  if (typeof value !== "string" || value === "") throw invalidArgument(field, "required");
  checkString(value, field, maxBytes);
  return value;
}

export function checkString(value: string, field: string, maxBytes = MAX_STRING_BYTES): void {
  const bytes = Buffer.byteLength(value);
  if (bytes > maxBytes) throw invalidArgument(field, `${bytes} bytes long, the limit is ${maxBytes}`);
  if (value.includes("\0")) throw invalidArgument(field, "contains a NUL character");
}

/**
 * A kubelet path (target_path, staging_target_path), judged from the string alone: absolute,
 * normalized, at most PATH_MAX - 1 bytes, below the kubelet directory; else INVALID_ARGUMENT.
 * Call `confinePath` before touching it.
 */
export function requirePath(value: string | undefined, field: string, dirs: KubeletDirs): string {
  const path = requireString(value, field, MAX_PATH_BYTES);
  const reason = dirs.lexicalReason(path);
  if (reason) throw invalidArgument(field, reason);
  return path;
}

/**
 * The path with its existing directories resolved, after checking that no symbolic link in it
 * leads out of the kubelet directory (INVALID_ARGUMENT naming the field when one does).
 */
export async function confinePath(path: string, field: string, dirs: KubeletDirs): Promise<string> {
  const confined = await dirs.confine(path);
  if (!confined.ok) throw invalidArgument(field, confined.reason);
  return confined.path;
}

/** A map field (parameters, secrets, volume_context...): at most 4 KiB of keys and values. */
export function checkMap(
  map: Record<string, string> | undefined | null,
  field: string,
): Record<string, string> {
  if (!map) return {};
  let bytes = 0;
  for (const [key, value] of Object.entries(map)) {
    if (key === "") throw invalidArgument(field, "has an empty key");
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
  }
  if (bytes > MAX_MAP_BYTES)
    throw invalidArgument(field, `${bytes} bytes of keys and values, the limit is 4 KiB`);
  return map;
}

export interface CapabilityRules {
  modes: readonly AccessMode[];
  block: boolean;
  fsTypes?: readonly string[];
}

export interface CheckedCapability {
  mode: AccessMode;
  block: boolean;
  fsType: string;
  mountFlags: string[];
  volumeMountGroup: string;
}

/** Every access mode of the CSI spec. */
export const ACCESS_MODES: readonly AccessMode[] = [
  "SINGLE_NODE_WRITER",
  "SINGLE_NODE_READER_ONLY",
  "MULTI_NODE_READER_ONLY",
  "MULTI_NODE_SINGLE_WRITER",
  "MULTI_NODE_MULTI_WRITER",
  "SINGLE_NODE_SINGLE_WRITER",
  "SINGLE_NODE_MULTI_WRITER",
];

/**
 * Whether a capability is well formed at all (an access mode the spec knows, an access type),
 * apart from whether this driver supports it: ValidateVolumeCapabilities answers the first with
 * INVALID_ARGUMENT and the second with an unconfirmed answer.
 */
export function checkCapabilityShape(cap: VolumeCapability | null, field: string): VolumeCapability {
  if (!cap) throw invalidArgument(field, "required");
  const mode = cap.access_mode?.mode as unknown;
  if (!cap.access_mode || mode === "UNKNOWN") throw invalidArgument(`${field}.access_mode.mode`, "required");
  if (!ACCESS_MODES.includes(mode as AccessMode)) {
    throw invalidArgument(
      `${field}.access_mode.mode`,
      `${String(mode)} is not an access mode of the CSI spec`,
    );
  }
  if (!cap.block && !cap.mount) throw invalidArgument(field, "access_type is required: mount or block");
  return cap;
}

/** Checks one capability against what the driver supports; throws INVALID_ARGUMENT naming the field. */
export function checkCapability(
  capability: VolumeCapability | null,
  field: string,
  rules: CapabilityRules,
): CheckedCapability {
  const cap = checkCapabilityShape(capability, field);
  const mode = cap.access_mode?.mode as unknown;
  if (!rules.modes.includes(mode as AccessMode)) {
    throw invalidArgument(
      `${field}.access_mode.mode`,
      `${String(mode)} is not supported; supported: ${rules.modes.join(", ")}`,
    );
  }
  if (cap.block) {
    if (!rules.block)
      throw invalidArgument(`${field}.block`, "raw block volumes are not supported by this driver");
    return { mode: mode as AccessMode, block: true, fsType: "", mountFlags: [], volumeMountGroup: "" };
  }
  if (!cap.mount) throw invalidArgument(field, "access_type is required: mount or block");
  const fsType = cap.mount.fs_type ?? "";
  if (fsType !== "" && rules.fsTypes && !rules.fsTypes.includes(fsType)) {
    throw invalidArgument(
      `${field}.mount.fs_type`,
      `"${fsType}" is not supported; supported: ${rules.fsTypes.join(", ")}`,
    );
  }
  const mountFlags = cap.mount.mount_flags ?? [];
  mountFlags.forEach((flag, i) => {
    checkString(flag, `${field}.mount.mount_flags[${i}]`, 1024);
  });
  return {
    mode: mode as AccessMode,
    block: false,
    fsType,
    mountFlags,
    volumeMountGroup: cap.mount.volume_mount_group ?? "",
  };
}

/** Checks a non-empty list of capabilities; throws INVALID_ARGUMENT naming the first bad entry. */
export function checkCapabilities(
  caps: VolumeCapability[] | undefined,
  field: string,
  rules: CapabilityRules,
): CheckedCapability[] {
  if (!caps || caps.length === 0) throw invalidArgument(field, "at least one capability is required");
  if (caps.length > 16) throw invalidArgument(field, `${caps.length} capabilities, the limit is 16`);
  return caps.map((cap, i) => checkCapability(cap, `${field}[${i}]`, rules));
}

export const GiB = 1024 ** 3;

/** capacity_range: required_bytes and limit_bytes non-negative, limit (when set) not below required. */
export function checkCapacityRange(
  range: { required_bytes?: number; limit_bytes?: number } | null | undefined,
  field = "capacity_range",
): { requiredBytes: number; limitBytes: number } {
  const requiredBytes = Number(range?.required_bytes ?? 0);
  const limitBytes = Number(range?.limit_bytes ?? 0);
  if (requiredBytes < 0) throw invalidArgument(`${field}.required_bytes`, "must not be negative");
  if (limitBytes < 0) throw invalidArgument(`${field}.limit_bytes`, "must not be negative");
  if (limitBytes > 0 && limitBytes < requiredBytes) {
    throw invalidArgument(`${field}.limit_bytes`, `${limitBytes} is below required_bytes ${requiredBytes}`);
  }
  return { requiredBytes, limitBytes };
}
