/**
 * The Ec2 interface on the AWS SDK. Describe calls of concurrent callers are merged into one
 * request per batch window (dataloader), which is what keeps a busy controller under EC2's
 * Describe* throttling limits.
 */
import {
  type _InstanceType,
  AttachVolumeCommand,
  CopyVolumesCommand,
  CreateSnapshotCommand,
  CreateSnapshotsCommand,
  CreateTagsCommand,
  CreateVolumeCommand,
  DeleteSnapshotCommand,
  DeleteVolumeCommand,
  DescribeAvailabilityZonesCommand,
  DescribeInstanceTypesCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  DescribeVolumesModificationsCommand,
  DetachVolumeCommand,
  type EC2Client,
  type Instance as Ec2Instance,
  type Snapshot as Ec2Snapshot,
  EnableFastSnapshotRestoresCommand,
  type Filter,
  LockSnapshotCommand,
  ModifyVolumeCommand,
  paginateDescribeInstances,
  paginateDescribeSnapshots,
  paginateDescribeVolumeStatus,
  paginateDescribeVolumes,
  type Tag,
  type Volume,
  type VolumeModification,
  type VolumeStatusItem,
} from "@aws-sdk/client-ec2";
import DataLoader from "dataloader";
import { awsErrorCode, isThrottlingError, isTransientError } from "../aws/sdk.ts";
import { currentCallSignal } from "../call-scope.ts";
import type { Logger } from "../log.ts";
import {
  type AttachmentState,
  CloudError,
  type CloudErrorKind,
  type CopyDiskInput,
  type CreateDiskInput,
  type CreateSnapshotInput,
  type CreateSnapshotsInput,
  type Disk,
  type DiskModification,
  type DiskPage,
  type DiskState,
  type DiskStatus,
  type Ec2,
  type Instance,
  type InstanceTypeEbsInfo,
  type ModifyDiskInput,
  type Snapshot,
  type SnapshotLock,
  type SnapshotPage,
  type SnapshotState,
  type VolumeType,
} from "./cloud.ts";

export interface SdkEc2Options {
  /** One client, or one per API action (each with its own adaptive rate limiter). */
  client: EC2Client | ((action: string) => EC2Client);
  /** Merge concurrent getVolumes/getInstances calls into one Describe* request. */
  batching: boolean;
  /** How long a batch collects ids before it is sent. */
  batchWindowMs: number;
  log: Logger;
}

/** Ids per batched Describe* request, and the page size asked of EC2 (DescribeVolumes allows 5-500). */
const MAX_BATCH = 500;
const MIN_PAGE = 5;

export class SdkEc2 implements Ec2 {
  /** The client for an API action: one per action in production (see ClientPerAction). */
  readonly #for: (action: string) => EC2Client;
  readonly #log: Logger;
  readonly #volumeLoader: DataLoader<string, Disk | undefined> | undefined;
  readonly #instanceLoader: DataLoader<string, Instance | undefined> | undefined;
  readonly #statusLoader: DataLoader<string, DiskStatus | undefined> | undefined;
  readonly #snapshotLoader: DataLoader<string, Snapshot | undefined> | undefined;
  /** Concurrent CreateSnapshot idempotency lookups by name tag value, in one call. */
  readonly #snapshotTagLoaders = new Map<string, DataLoader<string, Snapshot[] | undefined>>();
  /** Per tag key: concurrent lookups by tag value (CreateVolume's idempotency check) in one call. */
  readonly #tagLoaders = new Map<string, DataLoader<string, Disk[] | undefined>>();
  readonly #batchWindowMs: number | undefined;
  /** Instance types do not change while the process runs; failed lookups are not kept. */
  readonly #instanceTypes = new Map<string, Promise<InstanceTypeEbsInfo | undefined>>();
  /** A region's zones change about never: asked once an hour, not once per CreateVolume. */
  #zones: { fetchedAt: number; zones: Promise<string[]> } | undefined;

  constructor(o: SdkEc2Options) {
    const { client } = o;
    this.#for = typeof client === "function" ? client : () => client;
    this.#log = o.log;
    if (o.batching) {
      this.#batchWindowMs = o.batchWindowMs;
      this.#volumeLoader = idLoader(o.batchWindowMs, (ids) => this.#describeVolumesById(ids));
      this.#instanceLoader = idLoader(o.batchWindowMs, (ids) => this.#describeInstancesById(ids));
      this.#statusLoader = idLoader(o.batchWindowMs, (ids) => this.#describeVolumeStatus(ids));
      this.#snapshotLoader = idLoader(o.batchWindowMs, (ids) => this.#describeSnapshotsById(ids));
    }
  }

  async createVolume(input: CreateDiskInput): Promise<Disk> {
    const tags = Object.entries(input.tags).map(([Key, Value]) => ({ Key, Value }));
    const created = await mapErrors(() =>
      this.#for("CreateVolume").send(
        new CreateVolumeCommand({
          ClientToken: input.clientToken,
          AvailabilityZone: input.zone,
          Size: input.sizeGiB,
          VolumeType: input.type,
          Iops: input.iops,
          Throughput: input.throughput,
          // Left out when false, so an account's encryption-by-default still applies.
          Encrypted: input.encrypted || undefined,
          KmsKeyId: input.kmsKeyId,
          MultiAttachEnabled: input.multiAttach || undefined,
          SnapshotId: input.snapshotId,
          VolumeInitializationRate: input.initializationRate,
          OutpostArn: input.outpostArn,
          TagSpecifications: tags.length > 0 ? [{ ResourceType: "volume", Tags: tags }] : undefined,
        }),
        callOptions(),
      ),
    );
    // EC2 and moto echo the tags; should an answer leave them out, they are still the ones just set.
    return toDisk({ ...created, Tags: created.Tags ?? tags });
  }

  async copyVolume(input: CopyDiskInput): Promise<Disk> {
    const tags = Object.entries(input.tags).map(([Key, Value]) => ({ Key, Value }));
    const out = await mapErrors(() =>
      this.#for("CopyVolumes").send(
        new CopyVolumesCommand({
          SourceVolumeId: input.sourceVolumeId,
          ClientToken: input.clientToken,
          Size: input.sizeGiB,
          VolumeType: input.type,
          Iops: input.iops,
          Throughput: input.throughput,
          MultiAttachEnabled: input.multiAttach || undefined,
          TagSpecifications: tags.length > 0 ? [{ ResourceType: "volume", Tags: tags }] : undefined,
        }),
        callOptions(),
      ),
    );
    const copy = out.Volumes?.[0];
    if (!copy || out.Volumes?.length !== 1) {
      throw new CloudError(
        "Other",
        "UnexpectedResponse",
        `CopyVolumes answered ${out.Volumes?.length ?? 0} volumes, not 1`,
      );
    }
    return toDisk({
      ...copy,
      Tags: copy.Tags ?? tags,
      SourceVolumeId: copy.SourceVolumeId ?? input.sourceVolumeId,
    });
  }

  async deleteVolume(volumeId: string): Promise<void> {
    await mapErrors(() =>
      this.#for("DeleteVolume").send(new DeleteVolumeCommand({ VolumeId: volumeId }), callOptions()),
    );
  }

  async getVolumes(ids: string[]): Promise<Map<string, Disk>> {
    return lookUp(ids, this.#volumeLoader, (chunk) => this.#describeVolumesById(chunk));
  }

  async getInstances(ids: string[]): Promise<Map<string, Instance>> {
    return lookUp(ids, this.#instanceLoader, (chunk) => this.#describeInstancesById(chunk));
  }

  async getVolumeStatuses(ids: string[]): Promise<Map<string, DiskStatus>> {
    return lookUp(ids, this.#statusLoader, (chunk) => this.#describeVolumeStatus(chunk));
  }

  async findVolumesByTag(key: string, value: string): Promise<Disk[]> {
    if (this.#batchWindowMs === undefined)
      return this.#describeVolumes([{ Name: `tag:${key}`, Values: [value] }]);
    let loader = this.#tagLoaders.get(key);
    if (!loader) {
      loader = idLoader(this.#batchWindowMs, async (values) => {
        const byValue = new Map<string, Disk[]>(values.map((v) => [v, []]));
        for (const disk of await this.#describeVolumes([{ Name: `tag:${key}`, Values: values }])) {
          byValue.get(disk.tags[key] ?? "")?.push(disk);
        }
        return byValue;
      });
      this.#tagLoaders.set(key, loader);
    }
    return (await loader.load(value)) ?? [];
  }

  /**
   * The page token is ours, not EC2's: base64url of {t: EC2 token of the page, o: volumes of that
   * page already returned}. Two reasons: EC2 pages hold 5 to 500 volumes while CSI may ask for
   * fewer, and moto ignores MaxResults altogether and answers everything in one page. When EC2
   * pages as asked, `o` stays 0 and the token is EC2's own. maxResults 0 means "no limit" (CSI):
   * pages of 500.
   */
  async listVolumesWithTag(key: string, maxResults: number, nextToken?: string): Promise<DiskPage> {
    const page = await readPages(maxResults, nextToken, async (token, max) => {
      const out = await mapErrors(() =>
        this.#for("DescribeVolumes").send(
          new DescribeVolumesCommand({
            Filters: [{ Name: "tag-key", Values: [key] }],
            MaxResults: max,
            NextToken: token,
          }),
        ),
      );
      return { items: (out.Volumes ?? []).map(toDisk), next: out.NextToken };
    });
    return page.next ? { disks: page.items, nextToken: page.next } : { disks: page.items };
  }

  async createSnapshot(input: CreateSnapshotInput): Promise<Snapshot> {
    const tags = Object.entries(input.tags).map(([Key, Value]) => ({ Key, Value }));
    const created = await mapErrors(() =>
      this.#for("CreateSnapshot").send(
        new CreateSnapshotCommand({
          VolumeId: input.volumeId,
          Description: input.description,
          OutpostArn: input.outpostArn,
          TagSpecifications: [{ ResourceType: "snapshot", Tags: tags }],
        }),
        callOptions(),
      ),
    );
    return toSnapshot({ ...created, Tags: created.Tags ?? tags });
  }

  async createSnapshots(input: CreateSnapshotsInput): Promise<Snapshot[]> {
    const tags = Object.entries(input.tags).map(([Key, Value]) => ({ Key, Value }));
    const out = await mapErrors(() =>
      this.#for("CreateSnapshots").send(
        new CreateSnapshotsCommand({
          InstanceSpecification: {
            InstanceId: input.instanceId,
            ExcludeBootVolume: input.excludeBootVolume,
            ExcludeDataVolumeIds:
              input.excludeDataVolumeIds.length > 0 ? input.excludeDataVolumeIds : undefined,
          },
          Description: input.description,
          TagSpecifications: [{ ResourceType: "snapshot", Tags: tags }],
        }),
        callOptions(),
      ),
    );
    return (out.Snapshots ?? []).map((s) => toSnapshot({ ...s, Tags: s.Tags ?? tags }));
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    await mapErrors(() =>
      this.#for("DeleteSnapshot").send(new DeleteSnapshotCommand({ SnapshotId: snapshotId }), callOptions()),
    );
  }

  async getSnapshots(ids: string[]): Promise<Map<string, Snapshot>> {
    return lookUp(ids, this.#snapshotLoader, (chunk) => this.#describeSnapshotsById(chunk));
  }

  async findSnapshotsByTag(key: string, value: string): Promise<Snapshot[]> {
    if (this.#batchWindowMs === undefined)
      return this.#describeSnapshots([{ Name: `tag:${key}`, Values: [value] }]);
    let loader = this.#snapshotTagLoaders.get(key);
    if (!loader) {
      loader = idLoader(this.#batchWindowMs, async (values) => {
        const byValue = new Map<string, Snapshot[]>(values.map((v) => [v, []]));
        for (const snapshot of await this.#describeSnapshots([{ Name: `tag:${key}`, Values: values }])) {
          byValue.get(snapshot.tags[key] ?? "")?.push(snapshot);
        }
        return byValue;
      });
      this.#snapshotTagLoaders.set(key, loader);
    }
    return (await loader.load(value)) ?? [];
  }

  /** Paged as listVolumesWithTag, with the same token of our own. Only the account's own snapshots. */
  async listSnapshots(
    volumeId: string | undefined,
    maxResults: number,
    nextToken?: string,
  ): Promise<SnapshotPage> {
    const filters = volumeId ? [{ Name: "volume-id", Values: [volumeId] }] : undefined;
    const page = await readPages(maxResults, nextToken, async (token, max) => {
      const out = await mapErrors(() =>
        this.#for("DescribeSnapshots").send(
          new DescribeSnapshotsCommand({
            OwnerIds: ["self"],
            Filters: filters,
            MaxResults: max,
            NextToken: token,
          }),
        ),
      );
      return { items: (out.Snapshots ?? []).map(toSnapshot), next: out.NextToken };
    });
    return page.next ? { snapshots: page.items, nextToken: page.next } : { snapshots: page.items };
  }

  async enableFastSnapshotRestores(snapshotId: string, zones: string[]): Promise<void> {
    const out = await mapErrors(() =>
      this.#for("EnableFastSnapshotRestores").send(
        new EnableFastSnapshotRestoresCommand({ SourceSnapshotIds: [snapshotId], AvailabilityZones: zones }),
        callOptions(),
      ),
    );
    const refusals = (out.Unsuccessful ?? []).flatMap((u) => u.FastSnapshotRestoreStateErrors ?? []);
    if (refusals.length > 0) {
      const first = refusals[0]?.Error;
      const detail = refusals
        .map((r) => `${r.AvailabilityZone}: ${r.Error?.Code}: ${r.Error?.Message}`)
        .join("; ");
      const code = first?.Code ?? "FastSnapshotRestoreRefused";
      throw new CloudError(
        ERROR_KINDS[code] ?? "Other",
        code,
        `EnableFastSnapshotRestores refused: ${detail}`,
      );
    }
  }

  async lockSnapshot(snapshotId: string, lock: SnapshotLock): Promise<void> {
    await mapErrors(() =>
      this.#for("LockSnapshot").send(
        new LockSnapshotCommand({
          SnapshotId: snapshotId,
          LockMode: lock.mode,
          LockDuration: lock.durationDays,
          ExpirationDate: lock.expirationDate,
          CoolOffPeriod: lock.coolOffHours,
        }),
        callOptions(),
      ),
    );
  }

  async attachVolume(volumeId: string, instanceId: string, device: string): Promise<void> {
    await mapErrors(() =>
      this.#for("AttachVolume").send(
        new AttachVolumeCommand({ VolumeId: volumeId, InstanceId: instanceId, Device: device }),
        callOptions(),
      ),
    );
  }

  async detachVolume(volumeId: string, instanceId: string, options: { force?: boolean } = {}): Promise<void> {
    const force = options.force === true ? { Force: true } : {};
    await mapErrors(() =>
      this.#for("DetachVolume").send(
        new DetachVolumeCommand({ VolumeId: volumeId, InstanceId: instanceId, ...force }),
        callOptions(),
      ),
    );
  }

  async modifyVolume(volumeId: string, input: ModifyDiskInput): Promise<void> {
    await mapErrors(() =>
      this.#for("ModifyVolume").send(
        new ModifyVolumeCommand({
          VolumeId: volumeId,
          Size: input.sizeGiB,
          VolumeType: input.type,
          Iops: input.iops,
          Throughput: input.throughput,
        }),
        callOptions(),
      ),
    );
  }

  async tagVolume(volumeId: string, tags: Record<string, string>): Promise<void> {
    const Tags = Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
    if (Tags.length === 0) return;
    await mapErrors(() =>
      this.#for("CreateTags").send(new CreateTagsCommand({ Resources: [volumeId], Tags }), callOptions()),
    );
  }

  async getModification(volumeId: string): Promise<DiskModification | undefined> {
    try {
      const out = await mapErrors(() =>
        this.#for("DescribeVolumesModifications").send(
          new DescribeVolumesModificationsCommand({ VolumeIds: [volumeId] }),
        ),
      );
      return toModification(latest(out.VolumesModifications ?? []));
    } catch (err) {
      // Real EC2 answers this for a volume that was never modified (moto answers an empty list).
      if (err instanceof CloudError && err.awsCode === "InvalidVolumeModification.NotFound") return undefined;
      throw err;
    }
  }

  /** EbsInfo of an instance type, or undefined when EC2 does not know the type or says nothing. */
  getInstanceTypeEbsInfo(instanceType: string): Promise<InstanceTypeEbsInfo | undefined> {
    let info = this.#instanceTypes.get(instanceType);
    if (!info) {
      info = this.#describeInstanceType(instanceType);
      info.catch(() => this.#instanceTypes.delete(instanceType));
      this.#instanceTypes.set(instanceType, info);
    }
    return info;
  }

  async getZones(): Promise<string[]> {
    if (!this.#zones || Date.now() - this.#zones.fetchedAt > ZONES_TTL_MS) {
      const zones = this.#describeZones();
      this.#zones = { fetchedAt: Date.now(), zones };
      zones.catch(() => {
        if (this.#zones?.zones === zones) this.#zones = undefined;
      });
    }
    return [...(await this.#zones.zones)];
  }

  async #describeZones(): Promise<string[]> {
    const out = await mapErrors(() =>
      this.#for("DescribeAvailabilityZones").send(new DescribeAvailabilityZonesCommand({})),
    );
    return (out.AvailabilityZones ?? [])
      .filter((z) => z.State === "available" && (z.ZoneType ?? "availability-zone") === "availability-zone")
      .map((z) => z.ZoneName ?? "")
      .filter((name) => name !== "")
      .sort();
  }

  async probe(): Promise<void> {
    await mapErrors(() =>
      this.#for("DescribeAvailabilityZones").send(new DescribeAvailabilityZonesCommand({})),
    );
  }

  async #describeInstanceType(instanceType: string): Promise<InstanceTypeEbsInfo | undefined> {
    try {
      const out = await mapErrors(() =>
        this.#for("DescribeInstanceTypes").send(
          new DescribeInstanceTypesCommand({ InstanceTypes: [instanceType as _InstanceType] }),
        ),
      );
      const ebs = out.InstanceTypes?.[0]?.EbsInfo;
      if (ebs?.MaximumEbsAttachments === undefined) return undefined;
      return { maxAttachments: ebs.MaximumEbsAttachments, limitType: ebs.AttachmentLimitType };
    } catch (err) {
      if (err instanceof CloudError && err.awsCode === "InvalidInstanceType") return undefined;
      throw err;
    }
  }

  async #describeVolumesById(ids: string[]): Promise<Map<string, Disk>> {
    this.#log.debug({ ids: ids.length }, "DescribeVolumes by id");
    // A filter, not VolumeIds: with VolumeIds one unknown id fails the whole request.
    const disks = await this.#describeVolumes([{ Name: "volume-id", Values: ids }]);
    return new Map(disks.map((d) => [d.id, d]));
  }

  async #describeVolumes(filters: Filter[]): Promise<Disk[]> {
    return mapErrors(async () => {
      const disks: Disk[] = [];
      const pages = paginateDescribeVolumes(
        { client: this.#for("DescribeVolumes"), pageSize: MAX_BATCH },
        { Filters: filters },
      );
      for await (const page of pages) disks.push(...(page.Volumes ?? []).map(toDisk));
      return disks;
    });
  }

  /**
   * Status checks of up to 500 volumes in one request. DescribeVolumeStatus has no volume-id
   * filter, and one unknown id in VolumeIds fails the whole request; a volume deleted since its
   * caller saw it is not worth a failed sweep, so then the region's volumes whose checks are not
   * "ok" are asked for instead (volumes left out of that answer have nothing to report).
   */
  async #describeVolumeStatus(ids: string[]): Promise<Map<string, DiskStatus>> {
    this.#log.debug({ ids: ids.length }, "DescribeVolumeStatus by id");
    const wanted = new Set(ids);
    const found = new Map<string, DiskStatus>();
    const collect = async (input: { VolumeIds?: string[]; Filters?: Filter[] }, pageSize?: number) => {
      const client = this.#for("DescribeVolumeStatus");
      const pages = paginateDescribeVolumeStatus(pageSize ? { client, pageSize } : { client }, input);
      for await (const page of pages) {
        for (const item of page.VolumeStatuses ?? []) {
          if (item.VolumeId && wanted.has(item.VolumeId)) found.set(item.VolumeId, toDiskStatus(item));
        }
      }
    };
    try {
      await mapErrors(() => collect({ VolumeIds: ids }));
    } catch (err) {
      if (!(err instanceof CloudError && err.kind === "NotFound")) throw err;
      found.clear();
      const notOk = ["impaired", "warning", "insufficient-data"];
      await mapErrors(() => collect({ Filters: [{ Name: "volume-status.status", Values: notOk }] }, 1000));
    }
    return found;
  }

  async #describeSnapshotsById(ids: string[]): Promise<Map<string, Snapshot>> {
    this.#log.debug({ ids: ids.length }, "DescribeSnapshots by id");
    // A filter, not SnapshotIds: with SnapshotIds one unknown id fails the whole request.
    const snapshots = await this.#describeSnapshots([{ Name: "snapshot-id", Values: ids }]);
    return new Map(snapshots.map((s) => [s.id, s]));
  }

  async #describeSnapshots(filters: Filter[]): Promise<Snapshot[]> {
    return mapErrors(async () => {
      const snapshots: Snapshot[] = [];
      const pages = paginateDescribeSnapshots(
        { client: this.#for("DescribeSnapshots"), pageSize: 1000 },
        { Filters: filters },
      );
      for await (const page of pages) snapshots.push(...(page.Snapshots ?? []).map(toSnapshot));
      return snapshots;
    });
  }

  async #describeInstancesById(ids: string[]): Promise<Map<string, Instance>> {
    this.#log.debug({ ids: ids.length }, "DescribeInstances by id");
    return mapErrors(async () => {
      const found = new Map<string, Instance>();
      const pages = paginateDescribeInstances(
        { client: this.#for("DescribeInstances"), pageSize: MAX_BATCH },
        { Filters: [{ Name: "instance-id", Values: ids }] },
      );
      for await (const page of pages) {
        for (const instance of (page.Reservations ?? []).flatMap((r) => r.Instances ?? [])) {
          found.set(instance.InstanceId ?? "", toInstance(instance));
        }
      }
      return found;
    });
  }
}

async function mapErrors<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toCloudError(err);
  }
}

const ZONES_TTL_MS = 60 * 60 * 1000;

/**
 * A mutation made for one CSI call stops when that call's caller gives up; all of them are safe to
 * repeat (ClientToken, idempotent deletes and detaches), so the caller's retry finishes the job.
 */
const callOptions = () => ({ abortSignal: currentCallSignal() });

/** A DataLoader that sends the ids collected during `windowMs` in one lookup. */
function idLoader<T>(
  windowMs: number,
  lookup: (ids: string[]) => Promise<Map<string, T>>,
): DataLoader<string, T | undefined> {
  return new DataLoader<string, T | undefined>(
    async (ids) => {
      const found = await lookup([...new Set(ids)]);
      return ids.map((id) => found.get(id));
    },
    // No cache: a volume's state changes between calls, and an old answer would be wrong.
    { cache: false, maxBatchSize: MAX_BATCH, batchScheduleFn: (send) => setTimeout(send, windowMs) },
  );
}

async function lookUp<T>(
  ids: string[],
  loader: DataLoader<string, T | undefined> | undefined,
  lookup: (ids: string[]) => Promise<Map<string, T>>,
): Promise<Map<string, T>> {
  const unique = [...new Set(ids)];
  if (unique.length === 0) return new Map();
  if (loader) {
    const values = await Promise.all(unique.map((id) => loader.load(id)));
    const found = new Map<string, T>();
    values.forEach((value, i) => {
      if (value !== undefined) found.set(unique[i]!, value);
    });
    return found;
  }
  const found = new Map<string, T>();
  for (let i = 0; i < unique.length; i += MAX_BATCH) {
    for (const [id, value] of await lookup(unique.slice(i, i + MAX_BATCH))) found.set(id, value);
  }
  return found;
}

/**
 * Up to maxResults items (0: a page of 500) from an EC2 Describe call, starting at our page token
 * (see listVolumesWithTag); `fetch` asks EC2 for one page at its token with a MaxResults it accepts.
 */
async function readPages<T>(
  maxResults: number,
  nextToken: string | undefined,
  fetch: (token: string | undefined, max: number) => Promise<{ items: T[]; next: string | undefined }>,
): Promise<{ items: T[]; next?: string }> {
  const wanted = maxResults > 0 ? maxResults : MAX_BATCH;
  let cursor: PageCursor = nextToken ? decodePageToken(nextToken) : { o: 0 };
  const items: T[] = [];
  for (;;) {
    const { t, o } = cursor;
    const page = await fetch(t, Math.min(MAX_BATCH, Math.max(MIN_PAGE, wanted)));
    const taken = page.items.slice(o, o + wanted - items.length);
    items.push(...taken);
    const consumed = o + taken.length;
    if (consumed < page.items.length) return { items, next: encodePageToken({ t, o: consumed }) };
    if (!page.next) return { items };
    cursor = { t: page.next, o: 0 };
    if (items.length === wanted) return { items, next: encodePageToken(cursor) };
  }
}

interface PageCursor {
  /** EC2's NextToken for the page; absent for the first page. */
  t?: string;
  /** Volumes of that page already returned. */
  o: number;
}

const encodePageToken = (cursor: PageCursor): string =>
  Buffer.from(JSON.stringify(cursor)).toString("base64url");

function decodePageToken(token: string): PageCursor {
  try {
    const value: unknown = JSON.parse(Buffer.from(token, "base64url").toString());
    if (value !== null && typeof value === "object") {
      const { t, o } = value as Record<string, unknown>;
      if ((t === undefined || typeof t === "string") && Number.isInteger(o) && (o as number) >= 0) {
        return t === undefined ? { o: o as number } : { t, o: o as number };
      }
    }
  } catch {
    // fall through to the error below
  }
  throw new CloudError("InvalidParameter", "InvalidNextToken", `invalid page token "${token}"`);
}

function tagMap(tags: Tag[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const { Key, Value } of tags ?? []) if (Key !== undefined) out[Key] = Value ?? "";
  return out;
}

function toDisk(v: Volume): Disk {
  const disk: Disk = {
    id: v.VolumeId ?? "",
    sizeGiB: v.Size ?? 0,
    type: (v.VolumeType ?? "standard") as VolumeType,
    encrypted: v.Encrypted ?? false,
    zone: v.AvailabilityZone ?? "",
    state: (v.State ?? "error") as DiskState,
    multiAttach: v.MultiAttachEnabled ?? false,
    tags: tagMap(v.Tags),
    attachments: (v.Attachments ?? []).map((a) => ({
      instanceId: a.InstanceId ?? "",
      device: a.Device ?? "",
      state: (a.State ?? "attaching") as AttachmentState,
    })),
  };
  if (v.Iops !== undefined) disk.iops = v.Iops;
  if (v.Throughput !== undefined) disk.throughput = v.Throughput;
  if (v.KmsKeyId) disk.kmsKeyId = v.KmsKeyId;
  // EC2 answers SnapshotId "" for a volume that was not made from a snapshot.
  if (v.SnapshotId) disk.snapshotId = v.SnapshotId;
  if (v.SourceVolumeId) disk.sourceVolumeId = v.SourceVolumeId;
  if (v.OutpostArn) disk.outpostArn = v.OutpostArn;
  return disk;
}

function toDiskStatus(item: VolumeStatusItem): DiskStatus {
  const details = new Map((item.VolumeStatus?.Details ?? []).map((d) => [d.Name ?? "", d.Status ?? ""]));
  const status: DiskStatus = {
    status: item.VolumeStatus?.Status ?? "insufficient-data",
    events: (item.Events ?? []).map((e) => ({ type: e.EventType ?? "", description: e.Description ?? "" })),
  };
  const ioEnabled = details.get("io-enabled");
  const ioPerformance = details.get("io-performance");
  if (ioEnabled) status.ioEnabled = ioEnabled;
  if (ioPerformance) status.ioPerformance = ioPerformance;
  return status;
}

function toSnapshot(s: Ec2Snapshot): Snapshot {
  const snapshot: Snapshot = {
    id: s.SnapshotId ?? "",
    volumeId: s.VolumeId ?? "",
    sizeGiB: s.VolumeSize ?? 0,
    // moto's CreateSnapshots answers leave State out; a snapshot EC2 just accepted is pending.
    state: (s.State ?? "pending") as SnapshotState,
    startTime: s.StartTime ?? new Date(0),
    tags: tagMap(s.Tags),
  };
  if (s.StateMessage) snapshot.stateMessage = s.StateMessage;
  if (s.OutpostArn) snapshot.outpostArn = s.OutpostArn;
  return snapshot;
}

function toInstance(i: Ec2Instance): Instance {
  const devices = new Map<string, string>();
  for (const mapping of i.BlockDeviceMappings ?? []) {
    if (mapping.DeviceName && mapping.Ebs?.VolumeId) devices.set(mapping.DeviceName, mapping.Ebs.VolumeId);
  }
  return {
    id: i.InstanceId ?? "",
    zone: i.Placement?.AvailabilityZone ?? "",
    type: i.InstanceType ?? "",
    state: i.State?.Name ?? "unknown",
    devices,
    networkInterfaces: i.NetworkInterfaces?.length ?? 1,
    ...(i.RootDeviceName ? { rootDeviceName: i.RootDeviceName } : {}),
  };
}

function latest(modifications: VolumeModification[]): VolumeModification | undefined {
  let newest: VolumeModification | undefined;
  for (const m of modifications) {
    if (!newest || (m.StartTime?.getTime() ?? 0) > (newest.StartTime?.getTime() ?? 0)) newest = m;
  }
  return newest;
}

function toModification(m: VolumeModification | undefined): DiskModification | undefined {
  if (!m?.ModificationState) return undefined;
  const out: DiskModification = { state: m.ModificationState };
  if (m.TargetSize !== undefined) out.targetSizeGiB = m.TargetSize;
  if (m.TargetVolumeType !== undefined) out.targetType = m.TargetVolumeType as VolumeType;
  if (m.TargetIops !== undefined) out.targetIops = m.TargetIops;
  if (m.TargetThroughput !== undefined) out.targetThroughput = m.TargetThroughput;
  return out;
}

/** AWS error codes -> what they mean to the driver. Codes not listed fall to the rules in toCloudError. */
const ERROR_KINDS: Record<string, CloudErrorKind> = {
  "InvalidVolume.NotFound": "NotFound",
  "InvalidInstanceID.NotFound": "NotFound",
  "InvalidSnapshot.NotFound": "NotFound",
  // A snapshot an AMI was registered from.
  "InvalidSnapshot.InUse": "InUse",
  SnapshotLimitExceeded: "QuotaExceeded",
  // EC2's limit on how often one volume may be snapshotted: wait and retry.
  SnapshotCreationPerVolumeRateExceeded: "Throttled",
  // Detaching a volume that is not attached (any more) to that instance.
  "InvalidAttachment.NotFound": "NotFound",
  // An id EC2 cannot parse names no volume or instance: delete and detach then succeed, lookups say NOT_FOUND.
  "InvalidVolumeID.Malformed": "NotFound",
  "InvalidInstanceID.Malformed": "NotFound",
  "InvalidSnapshotID.Malformed": "NotFound",
  // An unknown zone is a bad parameter, not a missing volume.
  "InvalidZone.NotFound": "InvalidParameter",
  InvalidParameterValue: "InvalidParameter",
  InvalidParameter: "InvalidParameter",
  InvalidParameterCombination: "InvalidParameter",
  MissingParameter: "InvalidParameter",
  UnknownVolumeType: "InvalidParameter",
  "InvalidVolume.ZoneMismatch": "InvalidParameter",
  VolumeInUse: "InUse",
  IncorrectState: "InUse",
  IncorrectModificationState: "InUse",
  "InvalidVolume.NotAvailable": "InUse",
  IdempotentParameterMismatch: "IdempotentParameterMismatch",
  AttachmentLimitExceeded: "AttachmentLimitExceeded",
  UnauthorizedOperation: "Unauthorized",
  AuthFailure: "Unauthorized",
  Blocked: "Unauthorized",
  OptInRequired: "Unauthorized",
  CredentialsProviderError: "Unauthorized",
  InternalError: "Unavailable",
  ServiceUnavailable: "Unavailable",
  Unavailable: "Unavailable",
};

/** EC2 says InvalidParameterValue for some malformed ids, e.g. `Invalid id: "x" (expecting "vol-...")`. */
const MALFORMED_ID = /invalid id: .*\(expecting "(vol|i|snap)-/i;

/** The one place that turns an EC2 or network error into a CloudError; the message keeps AWS's code and text. */
export function toCloudError(err: unknown): CloudError {
  if (err instanceof CloudError) return err;
  const code = awsErrorCode(err);
  const message = `${code}: ${err instanceof Error ? err.message : String(err)}`;
  return new CloudError(errorKind(err, code, message), code, message);
}

function errorKind(err: unknown, code: string, message: string): CloudErrorKind {
  if (err instanceof Error && err.name === "AbortError") return "Cancelled";
  if (code === "InvalidParameterValue" && MALFORMED_ID.test(message)) return "NotFound";
  const known = ERROR_KINDS[code];
  if (known) return known;
  if (isThrottlingError(err)) return "Throttled";
  if (isTransientError(err)) return "Unavailable";
  return "Other";
}
