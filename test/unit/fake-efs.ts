/**
 * An in-memory EFS for unit tests: file systems, access points, client token idempotency as AWS
 * does it (same token and arguments: the same access point; other arguments:
 * AccessPointAlreadyExists naming it), the 10,000 access point quota, call counts, and a hook to
 * delay calls or make them fail.
 */
import {
  type AccessPoint,
  type CreateAccessPointInput,
  type Efs,
  EfsError,
  type FileSystem,
  type MountTarget,
} from "../../src/efs/cloud.ts";

export type EfsMethod = keyof Efs;

export class MemoryEfs implements Efs {
  readonly fileSystems = new Map<string, FileSystem>();
  readonly accessPoints = new Map<string, AccessPoint>();
  /** Mount targets by file system; a file system not listed has one available in us-east-1a. */
  readonly mountTargets = new Map<string, MountTarget[]>();
  /** Calls made, by method. */
  readonly calls: Record<string, number> = {};
  /** Runs at the start of every call, after a macrotask turn; throw from it to make the call fail. */
  beforeCall: ((method: EfsMethod, arg: unknown) => Promise<void> | void) | undefined;
  accessPointLimit = 10_000;
  readonly #tokens = new Map<string, { id: string; args: string }>();
  #nextId = 1;

  addFileSystem(id = `fs-${(0x1000_0000 + this.fileSystems.size).toString(16)}`): string {
    this.fileSystems.set(id, { id, lifeCycleState: "available" });
    return id;
  }

  callCount(): number {
    return Object.values(this.calls).reduce((a, b) => a + b, 0);
  }

  async #enter(method: EfsMethod, arg: unknown): Promise<void> {
    this.calls[method] = (this.calls[method] ?? 0) + 1;
    // A real call takes a round trip: let other calls interleave as they would.
    await new Promise((resolve) => setTimeout(resolve, 0));
    await this.beforeCall?.(method, arg);
  }

  async describeFileSystem(fileSystemId: string): Promise<FileSystem> {
    await this.#enter("describeFileSystem", fileSystemId);
    const fs = this.fileSystems.get(fileSystemId);
    if (!fs)
      throw new EfsError("FileSystemNotFound", "FileSystemNotFound", `file system ${fileSystemId} not found`);
    return { ...fs };
  }

  async describeMountTargets(fileSystemId: string): Promise<MountTarget[]> {
    await this.#enter("describeMountTargets", fileSystemId);
    if (!this.fileSystems.has(fileSystemId)) {
      throw new EfsError("FileSystemNotFound", "FileSystemNotFound", `file system ${fileSystemId} not found`);
    }
    const fallback = [
      { id: `fsmt-${fileSystemId.slice(3)}`, zone: "us-east-1a", lifeCycleState: "available" },
    ];
    return (this.mountTargets.get(fileSystemId) ?? fallback).map((mt) => ({ ...mt }));
  }

  async listAccessPoints(fileSystemId: string): Promise<AccessPoint[]> {
    await this.#enter("listAccessPoints", fileSystemId);
    if (!this.fileSystems.has(fileSystemId)) {
      throw new EfsError("FileSystemNotFound", "FileSystemNotFound", `file system ${fileSystemId} not found`);
    }
    return [...this.accessPoints.values()].filter((ap) => ap.fileSystemId === fileSystemId).map(copy);
  }

  async describeAccessPoint(accessPointId: string): Promise<AccessPoint> {
    await this.#enter("describeAccessPoint", accessPointId);
    const ap = this.accessPoints.get(accessPointId);
    if (!ap)
      throw new EfsError(
        "AccessPointNotFound",
        "AccessPointNotFound",
        `access point ${accessPointId} not found`,
      );
    return copy(ap);
  }

  async createAccessPoint(input: CreateAccessPointInput): Promise<AccessPoint> {
    await this.#enter("createAccessPoint", input);
    if (!this.fileSystems.has(input.fileSystemId)) {
      throw new EfsError(
        "FileSystemNotFound",
        "FileSystemNotFound",
        `file system ${input.fileSystemId} not found`,
      );
    }
    const args = JSON.stringify({ ...input, clientToken: undefined });
    const earlier = this.#tokens.get(input.clientToken);
    if (earlier) {
      const ap = this.accessPoints.get(earlier.id);
      if (ap && earlier.args === args) return copy(ap);
      throw new EfsError(
        "AccessPointAlreadyExists",
        "AccessPointAlreadyExists",
        `client token ${input.clientToken} was used for access point ${earlier.id}`,
        earlier.id,
      );
    }
    const count = [...this.accessPoints.values()].filter(
      (ap) => ap.fileSystemId === input.fileSystemId,
    ).length;
    if (count >= this.accessPointLimit) {
      throw new EfsError("AccessPointLimitExceeded", "AccessPointLimitExceeded", "too many access points");
    }
    const id = `fsap-${(this.#nextId++).toString(16).padStart(17, "0")}`;
    const ap: AccessPoint = {
      id,
      fileSystemId: input.fileSystemId,
      clientToken: input.clientToken,
      posixUser: { ...input.posixUser },
      rootDirectory: structuredClone(input.rootDirectory),
      tags: { ...input.tags },
      lifeCycleState: "available",
    };
    this.accessPoints.set(id, ap);
    this.#tokens.set(input.clientToken, { id, args });
    return copy(ap);
  }

  async deleteAccessPoint(accessPointId: string): Promise<void> {
    await this.#enter("deleteAccessPoint", accessPointId);
    if (!this.accessPoints.delete(accessPointId)) {
      throw new EfsError(
        "AccessPointNotFound",
        "AccessPointNotFound",
        `access point ${accessPointId} not found`,
      );
    }
  }

  async tagResource(resourceId: string, tags: Record<string, string>): Promise<void> {
    await this.#enter("tagResource", { resourceId, tags });
    const ap = this.accessPoints.get(resourceId);
    if (!ap)
      throw new EfsError(
        "AccessPointNotFound",
        "AccessPointNotFound",
        `access point ${resourceId} not found`,
      );
    Object.assign(ap.tags, tags);
  }

  async probe(): Promise<void> {
    await this.#enter("probe", undefined);
  }
}

const copy = (ap: AccessPoint): AccessPoint => structuredClone(ap);
