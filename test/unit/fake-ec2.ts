import {
  CloudError,
  type CopyDiskInput,
  type CreateDiskInput,
  type CreateSnapshotInput,
  type CreateSnapshotsInput,
  type Disk,
  type DiskModification,
  type DiskPage,
  type DiskStatus,
  type Ec2,
  type Instance,
  type InstanceTypeEbsInfo,
  type ModifyDiskInput,
  type Snapshot,
  type SnapshotLock,
  type SnapshotPage,
} from "../../src/ebs/cloud.ts";

/**
 * EC2 in memory, with the semantics the controller relies on: ClientToken idempotency, VolumeInUse
 * for attached volumes, attachments recorded on both the volume and the instance. Every method
 * call is counted, so tests can assert on the number of AWS calls.
 */
export class FakeEc2 implements Ec2 {
  readonly disks = new Map<string, Disk>();
  readonly instances = new Map<string, Instance>();
  readonly calls: Record<string, number> = {};
  readonly tokens = new Map<string, { input: string; id: string }>();
  zones = ["us-east-1a", "us-east-1b"];
  ebsLimit: number | undefined = 28;
  /** Volumes whose plain detach stays "detaching" until a forced DetachVolume. */
  readonly stuckDetaches = new Set<string>();
  /** Volume ids of every forced DetachVolume, in order. */
  readonly forcedDetaches: string[] = [];
  /** The account setting that encrypts every new volume, whatever the request says. */
  encryptByDefault = false;
  readonly snapshots = new Map<string, Snapshot>();
  /** The state new snapshots start in ("completed" makes them ready at once). */
  newSnapshotState: Snapshot["state"] = "pending";
  /** Fast Snapshot Restore zones enabled, by snapshot id. */
  readonly fastRestores = new Map<string, string[]>();
  readonly locks = new Map<string, SnapshotLock>();
  /** EC2's status checks per volume; a volume not listed reports "ok". */
  readonly statuses = new Map<string, DiskStatus>();
  /** Set to make the next call of that method throw. */
  failNext: Partial<Record<keyof Ec2, CloudError>> = {};
  #next = 1;

  #count(method: keyof Ec2): void {
    this.calls[method] = (this.calls[method] ?? 0) + 1;
    const failure = this.failNext[method];
    if (failure) {
      delete this.failNext[method];
      throw failure;
    }
  }

  #id(prefix: string): string {
    return `${prefix}-${(this.#next++).toString(16).padStart(17, "0")}`;
  }

  addInstance(zone = "us-east-1a", type = "m5.large"): string {
    const id = this.#id("i");
    this.instances.set(id, {
      id,
      zone,
      type,
      state: "running",
      devices: new Map([["/dev/xvda", "vol-root"]]),
      networkInterfaces: 1,
      rootDeviceName: "/dev/xvda",
    });
    return id;
  }

  async createVolume(input: CreateDiskInput): Promise<Disk> {
    this.#count("createVolume");
    const { clientToken, ...rest } = input;
    const known = this.tokens.get(clientToken);
    if (known) {
      if (known.input !== JSON.stringify(rest)) {
        throw new CloudError("IdempotentParameterMismatch", "IdempotentParameterMismatch", "token reused");
      }
      return structuredClone(this.disks.get(known.id)!);
    }
    const id = this.#id("vol");
    const disk: Disk = {
      id,
      sizeGiB: input.sizeGiB,
      type: input.type,
      iops: input.iops,
      throughput: input.throughput,
      encrypted: input.encrypted || this.encryptByDefault,
      kmsKeyId: input.kmsKeyId,
      zone: input.zone,
      state: "available",
      multiAttach: input.multiAttach ?? false,
      tags: { ...input.tags },
      attachments: [],
    };
    this.disks.set(id, disk);
    this.tokens.set(clientToken, { input: JSON.stringify(rest), id });
    return structuredClone(disk);
  }

  async copyVolume(input: CopyDiskInput): Promise<Disk> {
    this.#count("copyVolume");
    const source = this.disks.get(input.sourceVolumeId);
    if (!source)
      throw new CloudError(
        "NotFound",
        "InvalidVolume.NotFound",
        `The volume '${input.sourceVolumeId}' does not exist.`,
      );
    if (input.sizeGiB < source.sizeGiB)
      throw new CloudError(
        "InvalidParameter",
        "InvalidParameterValue",
        "the copy is smaller than its source",
      );
    const known = this.tokens.get(`copy/${input.clientToken}`);
    if (known) return structuredClone(this.disks.get(known.id)!);
    const disk: Disk = {
      id: this.#id("vol"),
      sizeGiB: input.sizeGiB,
      type: input.type,
      encrypted: source.encrypted,
      zone: source.zone,
      state: "available",
      multiAttach: input.multiAttach ?? false,
      sourceVolumeId: source.id,
      tags: { ...input.tags },
      attachments: [],
      ...(source.kmsKeyId ? { kmsKeyId: source.kmsKeyId } : {}),
      ...(input.iops !== undefined ? { iops: input.iops } : {}),
      ...(input.throughput !== undefined ? { throughput: input.throughput } : {}),
    };
    this.disks.set(disk.id, disk);
    this.tokens.set(`copy/${input.clientToken}`, { input: "", id: disk.id });
    return structuredClone(disk);
  }

  async deleteVolume(volumeId: string): Promise<void> {
    this.#count("deleteVolume");
    const disk = this.disks.get(volumeId);
    if (!disk)
      throw new CloudError("NotFound", "InvalidVolume.NotFound", `The volume '${volumeId}' does not exist.`);
    if (disk.attachments.length > 0)
      throw new CloudError("InUse", "VolumeInUse", `Volume ${volumeId} is attached`);
    this.disks.delete(volumeId);
  }

  async getVolumes(ids: string[]): Promise<Map<string, Disk>> {
    this.#count("getVolumes");
    return new Map(
      ids.filter((id) => this.disks.has(id)).map((id) => [id, structuredClone(this.disks.get(id)!)]),
    );
  }

  async getVolumeStatuses(ids: string[]): Promise<Map<string, DiskStatus>> {
    this.#count("getVolumeStatuses");
    const ok: DiskStatus = { status: "ok", ioEnabled: "passed", ioPerformance: "not-applicable", events: [] };
    return new Map(
      ids.filter((id) => this.disks.has(id)).map((id) => [id, structuredClone(this.statuses.get(id) ?? ok)]),
    );
  }

  async findVolumesByTag(key: string, value: string): Promise<Disk[]> {
    this.#count("findVolumesByTag");
    return [...this.disks.values()].filter((d) => d.tags[key] === value).map((d) => structuredClone(d));
  }

  async listVolumesWithTag(key: string, maxResults: number, nextToken?: string): Promise<DiskPage> {
    this.#count("listVolumesWithTag");
    const all = [...this.disks.values()].filter((d) => key in d.tags);
    let start = 0;
    if (nextToken !== undefined) {
      const match = /^page-(\d+)$/.exec(nextToken);
      if (!match) throw new CloudError("InvalidParameter", "InvalidParameterValue", `bad token ${nextToken}`);
      start = Number(match[1]);
    }
    const disks = all.slice(start, start + maxResults).map((d) => structuredClone(d));
    const end = start + disks.length;
    return { disks, nextToken: end < all.length ? `page-${end}` : undefined };
  }

  async createSnapshot(input: CreateSnapshotInput): Promise<Snapshot> {
    this.#count("createSnapshot");
    const disk = this.disks.get(input.volumeId);
    if (!disk)
      throw new CloudError(
        "NotFound",
        "InvalidVolume.NotFound",
        `The volume '${input.volumeId}' does not exist.`,
      );
    const snapshot: Snapshot = {
      id: this.#id("snap"),
      volumeId: input.volumeId,
      sizeGiB: disk.sizeGiB,
      state: this.newSnapshotState,
      startTime: new Date(),
      tags: { ...input.tags },
      ...(input.outpostArn ? { outpostArn: input.outpostArn } : {}),
    };
    this.snapshots.set(snapshot.id, snapshot);
    return structuredClone(snapshot);
  }

  async createSnapshots(input: CreateSnapshotsInput): Promise<Snapshot[]> {
    this.#count("createSnapshots");
    const instance = this.instances.get(input.instanceId);
    if (!instance)
      throw new CloudError(
        "NotFound",
        "InvalidInstanceID.NotFound",
        `The instance '${input.instanceId}' does not exist`,
      );
    const root = instance.rootDeviceName ? instance.devices.get(instance.rootDeviceName) : undefined;
    const taken: Snapshot[] = [];
    const startTime = new Date();
    for (const volumeId of instance.devices.values()) {
      if (volumeId === root ? input.excludeBootVolume : input.excludeDataVolumeIds.includes(volumeId))
        continue;
      const snapshot: Snapshot = {
        id: this.#id("snap"),
        volumeId,
        sizeGiB: this.disks.get(volumeId)?.sizeGiB ?? 8,
        state: this.newSnapshotState,
        startTime,
        tags: { ...input.tags },
      };
      this.snapshots.set(snapshot.id, snapshot);
      taken.push(structuredClone(snapshot));
    }
    return taken;
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    this.#count("deleteSnapshot");
    if (!this.snapshots.has(snapshotId))
      throw new CloudError(
        "NotFound",
        "InvalidSnapshot.NotFound",
        `The snapshot '${snapshotId}' does not exist.`,
      );
    if (this.locks.has(snapshotId))
      throw new CloudError("Other", "FakeSnapshotLocked", `The snapshot '${snapshotId}' is locked.`);
    this.snapshots.delete(snapshotId);
    this.fastRestores.delete(snapshotId);
  }

  async getSnapshots(ids: string[]): Promise<Map<string, Snapshot>> {
    this.#count("getSnapshots");
    return new Map(
      ids.filter((id) => this.snapshots.has(id)).map((id) => [id, structuredClone(this.snapshots.get(id)!)]),
    );
  }

  async findSnapshotsByTag(key: string, value: string): Promise<Snapshot[]> {
    this.#count("findSnapshotsByTag");
    return [...this.snapshots.values()].filter((s) => s.tags[key] === value).map((s) => structuredClone(s));
  }

  async listSnapshots(
    volumeId: string | undefined,
    maxResults: number,
    nextToken?: string,
  ): Promise<SnapshotPage> {
    this.#count("listSnapshots");
    const all = [...this.snapshots.values()].filter((s) => volumeId === undefined || s.volumeId === volumeId);
    let start = 0;
    if (nextToken !== undefined) {
      const match = /^page-(\d+)$/.exec(nextToken);
      if (!match) throw new CloudError("InvalidParameter", "InvalidParameterValue", `bad token ${nextToken}`);
      start = Number(match[1]);
    }
    const max = maxResults > 0 ? maxResults : all.length;
    const snapshots = all.slice(start, start + max).map((s) => structuredClone(s));
    const end = start + snapshots.length;
    return end < all.length ? { snapshots, nextToken: `page-${end}` } : { snapshots };
  }

  async enableFastSnapshotRestores(snapshotId: string, zones: string[]): Promise<void> {
    this.#count("enableFastSnapshotRestores");
    const unknown = zones.filter((z) => !this.zones.includes(z));
    if (unknown.length > 0)
      throw new CloudError(
        "InvalidParameter",
        "InvalidParameterValue",
        `unknown zones ${unknown.join(", ")}`,
      );
    this.fastRestores.set(snapshotId, [...zones]);
  }

  async lockSnapshot(snapshotId: string, lock: SnapshotLock): Promise<void> {
    this.#count("lockSnapshot");
    if (!this.snapshots.has(snapshotId))
      throw new CloudError(
        "NotFound",
        "InvalidSnapshot.NotFound",
        `The snapshot '${snapshotId}' does not exist.`,
      );
    this.locks.set(snapshotId, { ...lock });
  }

  async attachVolume(volumeId: string, instanceId: string, device: string): Promise<void> {
    this.#count("attachVolume");
    const disk = this.disks.get(volumeId);
    const instance = this.instances.get(instanceId);
    if (!disk) throw new CloudError("NotFound", "InvalidVolume.NotFound", `no volume ${volumeId}`);
    if (!instance)
      throw new CloudError("NotFound", "InvalidInstanceID.NotFound", `no instance ${instanceId}`);
    if (disk.attachments.length > 0 && !disk.multiAttach) {
      throw new CloudError("InUse", "VolumeInUse", `${volumeId} is already attached`);
    }
    if (instance.devices.has(device)) {
      throw new CloudError(
        "InvalidParameter",
        "InvalidParameterValue",
        `Attachment point ${device} is already in use`,
      );
    }
    instance.devices.set(device, volumeId);
    disk.attachments.push({ instanceId, device, state: "attached" });
    disk.state = "in-use";
  }

  async detachVolume(volumeId: string, instanceId: string, options: { force?: boolean } = {}): Promise<void> {
    this.#count("detachVolume");
    if (options.force) this.forcedDetaches.push(volumeId);
    const disk = this.disks.get(volumeId);
    if (!disk) throw new CloudError("NotFound", "InvalidVolume.NotFound", `no volume ${volumeId}`);
    const attachment = disk.attachments.find((a) => a.instanceId === instanceId);
    if (!attachment)
      throw new CloudError("NotFound", "IncorrectState", `${volumeId} is not attached to ${instanceId}`);
    // An unreachable instance never acknowledges a plain detach: only a forced one frees the volume.
    if (this.stuckDetaches.has(volumeId) && !options.force) {
      attachment.state = "detaching";
      return;
    }
    disk.attachments = disk.attachments.filter((a) => a !== attachment);
    this.instances.get(instanceId)?.devices.delete(attachment.device);
    if (disk.attachments.length === 0) disk.state = "available";
  }

  async modifyVolume(volumeId: string, input: ModifyDiskInput): Promise<void> {
    this.#count("modifyVolume");
    const disk = this.disks.get(volumeId);
    if (!disk) throw new CloudError("NotFound", "InvalidVolume.NotFound", `no volume ${volumeId}`);
    if (input.sizeGiB !== undefined) disk.sizeGiB = input.sizeGiB;
    if (input.type !== undefined) disk.type = input.type;
    if (input.iops !== undefined) disk.iops = input.iops;
    if (input.throughput !== undefined) disk.throughput = input.throughput;
  }

  async tagVolume(volumeId: string, tags: Record<string, string>): Promise<void> {
    this.#count("tagVolume");
    const disk = this.disks.get(volumeId);
    if (!disk) throw new CloudError("NotFound", "InvalidVolume.NotFound", `no volume ${volumeId}`);
    Object.assign(disk.tags, tags);
  }

  /** The latest modification per volume, as a test sets it (EC2 keeps it while it runs). */
  readonly modifications = new Map<string, DiskModification>();

  async getModification(volumeId: string): Promise<DiskModification | undefined> {
    this.#count("getModification");
    return this.modifications.get(volumeId);
  }

  async getInstances(ids: string[]): Promise<Map<string, Instance>> {
    this.#count("getInstances");
    const found = ids.filter((id) => this.instances.has(id));
    return new Map(
      found.map((id) => [
        id,
        { ...this.instances.get(id)!, devices: new Map(this.instances.get(id)!.devices) },
      ]),
    );
  }

  async getInstanceTypeEbsInfo(): Promise<InstanceTypeEbsInfo | undefined> {
    this.#count("getInstanceTypeEbsInfo");
    return this.ebsLimit === undefined ? undefined : { maxAttachments: this.ebsLimit, limitType: "shared" };
  }

  async getZones(): Promise<string[]> {
    this.#count("getZones");
    return [...this.zones];
  }

  async probe(): Promise<void> {
    this.#count("probe");
  }
}
