/**
 * EFS as the EFS driver sees it: a narrow interface in cloud terms (no CSI types), implemented by
 * the AWS SDK (sdk.ts) in production and by an in-memory EFS (test/unit/fake-efs.ts) in unit tests.
 */

export interface FileSystem {
  id: string;
  /** creating, available, updating, deleting, deleted or error. */
  lifeCycleState: string;
  /** Set for One Zone file systems. */
  availabilityZone?: string;
}

export interface MountTarget {
  id: string;
  /** The availability zone of its subnet: nodes there mount through it. */
  zone: string;
  /** creating, available, updating, deleting, deleted or error. */
  lifeCycleState: string;
  /** Its IPv4 address (else IPv6), where nodes of its zone reach NFS. */
  ipAddress?: string;
}

export interface PosixUser {
  uid: number;
  gid: number;
}

export interface RootDirectory {
  /** Absolute, at most 100 characters and 4 components (EFS rules). */
  path: string;
  /** Owner and mode EFS gives the directory when it creates it at the first mount. */
  creationInfo?: { ownerUid: number; ownerGid: number; permissions: string };
}

export interface AccessPoint {
  id: string;
  fileSystemId: string;
  /** The idempotency token it was created with; absent when EFS does not say. */
  clientToken?: string;
  posixUser?: PosixUser;
  rootDirectory: RootDirectory;
  tags: Record<string, string>;
  /** creating, available, updating, deleting, deleted or error. */
  lifeCycleState?: string;
}

export interface CreateAccessPointInput {
  /** 1 to 64 characters: a retried create with the same token and arguments returns the same access point. */
  clientToken: string;
  fileSystemId: string;
  posixUser: PosixUser;
  rootDirectory: RootDirectory;
  /** Set in the same call as the create, so no access point ever exists untagged. */
  tags: Record<string, string>;
}

/** What went wrong, in cloud terms; the controller decides the gRPC code. */
export type EfsErrorKind =
  | "FileSystemNotFound"
  | "AccessPointNotFound"
  /** The client token was used before with other arguments; `accessPointId` names the earlier one. */
  | "AccessPointAlreadyExists"
  /** The file system has its 10,000 access points (the EFS quota). */
  | "AccessPointLimitExceeded"
  | "AccessDenied"
  | "InvalidParameter"
  /** The file system is being created, updated or deleted. */
  | "FileSystemNotReady"
  | "Throttled"
  /** 5xx, timeouts, connection errors: the request may or may not have been carried out. */
  | "Unavailable"
  | "Other";

export class EfsError extends Error {
  readonly kind: EfsErrorKind;
  /** The AWS error code, e.g. AccessPointNotFound, or a network code such as ECONNREFUSED. */
  readonly awsCode: string;
  readonly accessPointId: string | undefined;

  constructor(kind: EfsErrorKind, awsCode: string, message: string, accessPointId?: string) {
    super(message);
    this.name = "EfsError";
    this.kind = kind;
    this.awsCode = awsCode;
    this.accessPointId = accessPointId;
  }
}

export const isEfsError = (err: unknown, kind?: EfsErrorKind): err is EfsError =>
  err instanceof EfsError && (kind === undefined || err.kind === kind);

/**
 * Whether a failed mutating call may still have taken effect: AWS refused it for certain only when
 * it answered with a 4xx error or a throttle.
 */
export const mayHaveTakenEffect = (err: unknown): boolean =>
  !isEfsError(err) || err.kind === "Unavailable" || err.kind === "Other";

export interface Efs {
  /** Throws EfsError FileSystemNotFound for an unknown id. */
  describeFileSystem(fileSystemId: string): Promise<FileSystem>;
  /** The file system's mount targets, all pages. Throws EfsError FileSystemNotFound for an unknown id. */
  describeMountTargets(fileSystemId: string): Promise<MountTarget[]>;
  /** Every access point of the file system, all pages. */
  listAccessPoints(fileSystemId: string): Promise<AccessPoint[]>;
  /** Throws EfsError AccessPointNotFound for an unknown id. */
  describeAccessPoint(accessPointId: string): Promise<AccessPoint>;
  createAccessPoint(input: CreateAccessPointInput): Promise<AccessPoint>;
  /** Throws EfsError AccessPointNotFound for an unknown id. */
  deleteAccessPoint(accessPointId: string): Promise<void>;
  /** Adds the tags to an access point, replacing the values of keys it has. Idempotent. */
  tagResource(resourceId: string, tags: Record<string, string>): Promise<void>;
  /** A cheap authenticated call, to tell whether EFS answers. */
  probe(): Promise<void>;
}
