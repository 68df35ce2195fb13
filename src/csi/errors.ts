import { status } from "./status.ts";

/**
 * The one error type the services throw. It carries the gRPC status code that the caller sees;
 * its message goes to the caller as is, so it must name the field or resource and the rule.
 */
export class CsiError extends Error {
  readonly code: status;

  constructor(code: status, message: string) {
    super(message);
    this.name = "CsiError";
    this.code = code;
  }
}

export const invalidArgument = (field: string, rule: string): CsiError =>
  new CsiError(status.INVALID_ARGUMENT, `${field}: ${rule}`);
export const notFound = (message: string): CsiError => new CsiError(status.NOT_FOUND, message);
export const alreadyExists = (message: string): CsiError => new CsiError(status.ALREADY_EXISTS, message);
export const failedPrecondition = (message: string): CsiError =>
  new CsiError(status.FAILED_PRECONDITION, message);
export const outOfRange = (message: string): CsiError => new CsiError(status.OUT_OF_RANGE, message);
export const resourceExhausted = (message: string): CsiError =>
  new CsiError(status.RESOURCE_EXHAUSTED, message);
export const aborted = (message: string): CsiError => new CsiError(status.ABORTED, message);
export const unavailable = (message: string): CsiError => new CsiError(status.UNAVAILABLE, message);
export const internal = (message: string): CsiError => new CsiError(status.INTERNAL, message);
export const permissionDenied = (message: string): CsiError =>
  new CsiError(status.PERMISSION_DENIED, message);

/** A failure of the machine or a command, for the caller: INTERNAL with what was being done. */
export function asInternal(err: unknown, what: string): CsiError {
  if (err instanceof CsiError) return err;
  const timedOut = asTimeout(err);
  if (timedOut) return timedOut;
  return internal(`${what}: ${err instanceof Error ? err.message : String(err)}`);
}

/**
 * A host call that did not return in time (src/host/bounded.ts), as the caller sees it: UNAVAILABLE,
 * so kubelet retries, with what hung. Matched by name: the CSI layer does not import the host's.
 */
export function asTimeout(err: unknown): CsiError | undefined {
  if (!(err instanceof Error) || err.name !== "HostTimeoutError") return undefined;
  return unavailable(`${err.message}: the filesystem or device does not answer`);
}
