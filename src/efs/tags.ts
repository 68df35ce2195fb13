/**
 * The tags this driver puts on the access points it creates. The controller writes them; the node
 * reads the capacity back for NodeGetVolumeStats. In cloud terms: no CSI types.
 */
import type { AccessPoint } from "./cloud.ts";

/** The official driver's tag on every access point it creates (its IAM policy conditions on it). */
export const TAG_CLUSTER = "efs.csi.aws.com/cluster";
/**
 * The volume's size in bytes: EFS has none, so the driver keeps it here. Written by CreateVolume,
 * raised by ControllerExpandVolume, compared by a retried CreateVolume, reported by the node.
 */
export const TAG_CAPACITY = "efs.csi.aws.com/capacity-bytes";
/** The StorageClass basePath: DeleteVolume never deletes that directory itself. */
export const TAG_BASE_PATH = "efs.csi.aws.com/base-path";

/** The capacity recorded on the access point, or undefined when it has none (or a malformed one). */
export function recordedCapacity(ap: AccessPoint): number | undefined {
  const text = ap.tags[TAG_CAPACITY];
  if (text === undefined || !/^\d{1,19}$/.test(text)) return undefined;
  const bytes = Number(text);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}
