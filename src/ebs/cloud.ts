/**
 * EC2 as the EBS driver sees it: a narrow interface in cloud terms (no CSI types), implemented by
 * the AWS SDK (ec2.ts) in production and by an in-memory fake in unit tests.
 */

export type VolumeType = "gp2" | "gp3" | "io1" | "io2" | "sc1" | "st1" | "standard";

export type DiskState = "creating" | "available" | "in-use" | "deleting" | "deleted" | "error";

export type AttachmentState = "attaching" | "attached" | "detaching" | "detached" | "busy";

export interface Attachment {
  instanceId: string;
  device: string;
  state: AttachmentState;
}

export interface Disk {
  id: string;
  sizeGiB: number;
  type: VolumeType;
  iops?: number;
  throughput?: number;
  encrypted: boolean;
  kmsKeyId?: string;
  zone: string;
  state: DiskState;
  multiAttach: boolean;
  snapshotId?: string;
  /** The volume this one is a copy of (CopyVolumes). */
  sourceVolumeId?: string;
  outpostArn?: string;
  tags: Record<string, string>;
  attachments: Attachment[];
}

export interface DiskModification {
  state: "modifying" | "optimizing" | "completed" | "failed";
  targetSizeGiB?: number;
  targetType?: VolumeType;
  targetIops?: number;
  targetThroughput?: number;
}

export interface Instance {
  id: string;
  zone: string;
  type: string;
  state: string;
  /** Device name -> volume id, as EC2 reports the instance's block device mappings. */
  devices: Map<string, string>;
  /** Network interfaces attached: they count against shared attachment limits. */
  networkInterfaces: number;
  /** The root volume's device name, e.g. /dev/xvda; devices.get(rootDeviceName) is the root volume. */
  rootDeviceName?: string;
}

export interface CreateDiskInput {
  /** Makes a retried create return the same volume (EC2 keeps tokens for at least 24 hours). */
  clientToken: string;
  zone: string;
  sizeGiB: number;
  type: VolumeType;
  iops?: number;
  throughput?: number;
  encrypted: boolean;
  kmsKeyId?: string;
  multiAttach?: boolean;
  snapshotId?: string;
  /** MiB/s at which EC2 initializes a volume restored from a snapshot. */
  initializationRate?: number;
  outpostArn?: string;
  /** Set in the same call as the create, so no volume ever exists untagged. */
  tags: Record<string, string>;
}

/** EC2 CopyVolumes: a crash-consistent copy in the source's zone, with its encryption. */
export interface CopyDiskInput {
  sourceVolumeId: string;
  /** As for CreateVolume: a retried copy returns the same volume. */
  clientToken: string;
  sizeGiB: number;
  type: VolumeType;
  iops?: number;
  throughput?: number;
  multiAttach?: boolean;
  tags: Record<string, string>;
}

export interface ModifyDiskInput {
  sizeGiB?: number;
  type?: VolumeType;
  iops?: number;
  throughput?: number;
}

export interface InstanceTypeEbsInfo {
  maxAttachments: number;
  /** "shared": network interfaces and instance store volumes count against maxAttachments. */
  limitType: "shared" | "dedicated" | undefined;
}

/**
 * EC2's status checks of a volume (DescribeVolumeStatus). Values are EC2's words, kept as strings:
 * EC2 adds new ones from time to time, and an unknown one must not break a health sweep.
 */
export interface DiskStatus {
  /** ok, warning, impaired or insufficient-data. */
  status: string;
  /** The io-enabled check: passed, or failed when EC2 disabled I/O (potential data inconsistency). */
  ioEnabled?: string;
  /** The io-performance check (Provisioned IOPS volumes): normal, degraded, severely-degraded, stalled. */
  ioPerformance?: string;
  /** Scheduled and past events, e.g. potential-data-inconsistency. */
  events: { type: string; description: string }[];
}

export interface DiskPage {
  disks: Disk[];
  nextToken?: string;
}

export type SnapshotState = "pending" | "completed" | "error" | "recoverable" | "recovering";

export interface Snapshot {
  id: string;
  /** The source volume. */
  volumeId: string;
  /** The source volume's size when the snapshot was taken. */
  sizeGiB: number;
  state: SnapshotState;
  /** When EC2 started it: the CSI creation_time. */
  startTime: Date;
  tags: Record<string, string>;
  /** EC2's reason for state "error", when it gives one. */
  stateMessage?: string;
  outpostArn?: string;
}

export interface CreateSnapshotInput {
  volumeId: string;
  /** Set in the same call as the create: the snapshot's name tag is what makes a retry find it. */
  tags: Record<string, string>;
  description: string;
  /** A local snapshot on this Outpost. */
  outpostArn?: string;
}

/** EC2 snapshot lock (LockSnapshot): one of durationDays and expirationDate. */
export interface SnapshotLock {
  mode: "compliance" | "governance";
  durationDays?: number;
  expirationDate?: Date;
  /** Compliance mode only: hours during which the lock can still be changed. */
  coolOffHours?: number;
}

/**
 * EC2 CreateSnapshots: crash-consistent snapshots of the EBS volumes attached to one instance, all
 * taken at the same point in time; the boot volume and the listed data volumes are left out.
 */
export interface CreateSnapshotsInput {
  instanceId: string;
  excludeBootVolume: boolean;
  excludeDataVolumeIds: string[];
  tags: Record<string, string>;
  description: string;
}

export interface SnapshotPage {
  snapshots: Snapshot[];
  nextToken?: string;
}

/** What went wrong, in cloud terms; the controller decides the gRPC code. */
export type CloudErrorKind =
  | "NotFound"
  | "InUse"
  | "IdempotentParameterMismatch"
  | "AttachmentLimitExceeded"
  /** An account quota (e.g. SnapshotLimitExceeded): retrying will not help until something is freed. */
  | "QuotaExceeded"
  | "InvalidParameter"
  | "Unauthorized"
  | "Throttled"
  | "Unavailable"
  /** The CSI call it was made for was cancelled by its caller. */
  | "Cancelled"
  | "Other";

export class CloudError extends Error {
  readonly kind: CloudErrorKind;
  /** The AWS error code, e.g. InvalidVolume.NotFound. */
  readonly awsCode: string;

  constructor(kind: CloudErrorKind, awsCode: string, message: string) {
    super(message);
    this.name = "CloudError";
    this.kind = kind;
    this.awsCode = awsCode;
  }
}

export const isCloudError = (err: unknown, kind?: CloudErrorKind): err is CloudError =>
  err instanceof CloudError && (kind === undefined || err.kind === kind);

export interface Ec2 {
  createVolume(input: CreateDiskInput): Promise<Disk>;
  /** Throws CloudError NotFound for an unknown id, InUse for an attached volume. */
  deleteVolume(volumeId: string): Promise<void>;
  /** Throws CloudError NotFound when the source does not exist. */
  copyVolume(input: CopyDiskInput): Promise<Disk>;
  /** The volumes that exist among `ids`; unknown ids are simply absent (never an error). */
  getVolumes(ids: string[]): Promise<Map<string, Disk>>;
  /**
   * EC2's status checks of the volumes among `ids` that exist; unknown ids are absent (never an
   * error), and so may be a volume EC2 has no checks for yet.
   */
  getVolumeStatuses(ids: string[]): Promise<Map<string, DiskStatus>>;
  /** Volumes carrying tag key=value (the idempotency lookup by CSIVolumeName). */
  findVolumesByTag(key: string, value: string): Promise<Disk[]>;
  /** Volumes carrying tag `key` (any value), a page at a time. */
  listVolumesWithTag(key: string, maxResults: number, nextToken?: string): Promise<DiskPage>;
  attachVolume(volumeId: string, instanceId: string, device: string): Promise<void>;
  /** force: EC2's forced detach, for an instance known to be gone (may lose unflushed writes). */
  detachVolume(volumeId: string, instanceId: string, options?: { force?: boolean }): Promise<void>;
  modifyVolume(volumeId: string, input: ModifyDiskInput): Promise<void>;
  /** Adds or overwrites tags on a volume. */
  tagVolume(volumeId: string, tags: Record<string, string>): Promise<void>;
  /** Latest modification of the volume, or undefined when it was never modified. */
  getModification(volumeId: string): Promise<DiskModification | undefined>;
  /** The snapshot; its name tag must be among `input.tags`. */
  createSnapshot(input: CreateSnapshotInput): Promise<Snapshot>;
  /** Throws CloudError NotFound for an unknown id, InUse for a snapshot an AMI uses or a lock holds. */
  deleteSnapshot(snapshotId: string): Promise<void>;
  /** The snapshots that exist among `ids`; unknown ids are absent (never an error). */
  getSnapshots(ids: string[]): Promise<Map<string, Snapshot>>;
  /** Snapshots carrying tag key=value (the idempotency lookup by CSIVolumeSnapshotName). */
  findSnapshotsByTag(key: string, value: string): Promise<Snapshot[]>;
  /** The account's own snapshots, of one source volume if given, a page at a time. */
  listSnapshots(volumeId: string | undefined, maxResults: number, nextToken?: string): Promise<SnapshotPage>;
  /** Multi-volume, crash-consistent snapshots of one instance's volumes. */
  createSnapshots(input: CreateSnapshotsInput): Promise<Snapshot[]>;
  /** Fast Snapshot Restore in these zones; throws when EC2 refuses any of them. */
  enableFastSnapshotRestores(snapshotId: string, zones: string[]): Promise<void>;
  lockSnapshot(snapshotId: string, lock: SnapshotLock): Promise<void>;
  /** The instances that exist among `ids`; unknown ids are absent. */
  getInstances(ids: string[]): Promise<Map<string, Instance>>;
  /** EBS attachment limit of an instance type, or undefined when EC2 does not say. */
  getInstanceTypeEbsInfo(instanceType: string): Promise<InstanceTypeEbsInfo | undefined>;
  /** The region's availability zones that are available, sorted by name. */
  getZones(): Promise<string[]>;
  /** A cheap authenticated call, to tell whether EC2 answers. */
  probe(): Promise<void>;
}
