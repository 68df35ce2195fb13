/**
 * gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html), by name and number.
 * The driver's own table: the server speaks gRPC without a gRPC library (src/server/grpc.ts).
 */
export const status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type status = (typeof status)[keyof typeof status];

const NAMES: readonly string[] = Object.keys(status);

/** The code's name (NOT_FOUND), or its number when it has none. */
export const statusName = (code: number): string => NAMES[code] ?? String(code);
