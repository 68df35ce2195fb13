/**
 * EFS volume handles, the volume_id of every EFS volume: `[efs:]FS[:PATH[:AP]]`.
 *
 *   fs-12345678                    the whole file system
 *   fs-12345678:/data              a directory of it
 *   fs-12345678::fsap-0123abcd…    an access point (what CreateVolume returns)
 *   fs-12345678:/data:fsap-…       an access point, mounted at a directory below its root
 *
 * The official driver accepts the same forms, an optional `efs:` prefix (since v3, which added
 * `s3files:` for S3 Files), empty trailing fields (`fs-x:` and `fs-x::` equal `fs-x`), relative
 * paths (`fs-x:a/b/` mounts `/a/b`) and a mount-target DNS name in place of the file system id.
 */
import { posix } from "node:path";
import { CsiError, invalidArgument } from "../csi/errors.ts";

export interface VolumeHandle {
  fileSystemId: string;
  /** Set when the handle names the file system by a mount-target DNS name (fs-x.efs.REGION.amazonaws.com). */
  dnsName?: string;
  /** Absolute and normalized; "/" when the handle names no path. */
  path: string;
  accessPointId?: string;
}

// The EFS API's own patterns (and the official driver's since v2.1): 8 to 40 lowercase hex digits.
// Real ids have 8 or 17; moto makes access point ids with 8.
const FILE_SYSTEM_ID = /^fs-[0-9a-f]{8,40}$/;
const ACCESS_POINT_ID = /^fsap-[0-9a-f]{8,40}$/;
const MOUNT_TARGET_DNS = /^(fs-[0-9a-f]{8,40})\.efs\.[a-z0-9-]+\.[a-z0-9.-]+$/;
/** Control characters would end up in a mount source or a path; nothing legitimate needs them. */
export const hasControlCharacter = (text: string): boolean =>
  [...text].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);

export const isFileSystemId = (id: string): boolean => FILE_SYSTEM_ID.test(id);
export const isAccessPointId = (id: string): boolean => ACCESS_POINT_ID.test(id);

const FORMS = "[efs:]fs-ID[:PATH[:fsap-ID]]";

/** Throws INVALID_ARGUMENT naming the handle and the rule it breaks. */
export function parseVolumeHandle(volumeId: string): VolumeHandle {
  const bad = (rule: string) =>
    invalidArgument("volume_id", `"${volumeId}" is not an EFS volume handle: ${rule}`);
  if (volumeId.startsWith("s3files:"))
    throw bad("S3 Files volumes (s3files:) are not supported by this driver");
  const body = volumeId.startsWith("efs:") ? volumeId.slice("efs:".length) : volumeId;
  const fields = body.split(":");
  if (fields.length > 3) throw bad(`expected at most three fields separated by ':' (${FORMS})`);
  const [fsField = "", pathField = "", apField = ""] = fields;

  const handle: VolumeHandle = { fileSystemId: fsField, path: "/" };
  if (!FILE_SYSTEM_ID.test(fsField)) {
    const dns = MOUNT_TARGET_DNS.exec(fsField);
    if (!dns) {
      throw bad(`expected a file system id fs- and 8 to 40 hex digits, or its DNS name, first (${FORMS})`);
    }
    handle.fileSystemId = dns[1]!;
    handle.dnsName = fsField;
  }
  if (pathField !== "") {
    if (hasControlCharacter(pathField)) throw bad("the path has a control character");
    handle.path = posix.resolve("/", pathField);
  }
  if (apField !== "") {
    if (!ACCESS_POINT_ID.test(apField)) {
      throw bad(`the access point id "${apField}" is not fsap- and 8 to 40 hex digits`);
    }
    handle.accessPointId = apField;
  }
  return handle;
}

/** The handle of a volume: `fs-x::fsap-y` for a dynamically provisioned one. */
export function formatVolumeHandle(h: {
  fileSystemId: string;
  path?: string;
  accessPointId?: string;
}): string {
  const path = h.path === undefined || h.path === "/" ? "" : h.path;
  if (h.accessPointId) return `${h.fileSystemId}:${path}:${h.accessPointId}`;
  return path ? `${h.fileSystemId}:${path}` : h.fileSystemId;
}

/** The parsed handle, or undefined when it is not an EFS volume handle (CSI calls that must answer OK or NOT_FOUND for it). */
export function tryParseVolumeHandle(volumeId: string): VolumeHandle | undefined {
  try {
    return parseVolumeHandle(volumeId);
  } catch (err) {
    if (err instanceof CsiError) return undefined;
    throw err;
  }
}
