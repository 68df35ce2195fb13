/** EC2 errors as CSI errors, for the controller's RPCs (volumes and snapshots alike). */

import { WaitTimeoutError } from "../backoff.ts";
import {
  alreadyExists,
  CsiError,
  failedPrecondition,
  internal,
  notFound,
  resourceExhausted,
} from "../csi/errors.ts";
import { status } from "../csi/status.ts";
import { isCloudError } from "./cloud.ts";

/** An EBS volume id; anything else cannot name a volume. */
export const VOLUME_ID = /^vol-[0-9a-f]{8}([0-9a-f]{9})?$/;

/** Throws the CSI error for an error of an EC2 call made for `what`; a CsiError passes unchanged. */
export function mapCloudError(err: unknown, what: string): never {
  if (err instanceof CsiError) throw err;
  if (err instanceof WaitTimeoutError)
    throw new CsiError(status.DEADLINE_EXCEEDED, `${what}: ${err.message}`);
  if (!isCloudError(err)) throw err;
  const message = `${what}: ${err.message}`;
  switch (err.kind) {
    case "NotFound":
      throw notFound(message);
    case "InUse":
      throw failedPrecondition(message);
    case "IdempotentParameterMismatch":
      throw alreadyExists(message);
    case "AttachmentLimitExceeded":
    case "QuotaExceeded":
      throw resourceExhausted(message);
    case "InvalidParameter":
      throw new CsiError(status.INVALID_ARGUMENT, message);
    case "Unauthorized":
      throw new CsiError(status.PERMISSION_DENIED, message);
    case "Throttled":
    case "Unavailable":
      throw new CsiError(status.UNAVAILABLE, message);
    case "Cancelled":
      throw new CsiError(status.CANCELLED, message);
    default:
      throw internal(message);
  }
}
