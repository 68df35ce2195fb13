/** The Efs interface on the AWS SDK's EFSClient, with the retry policy and metrics every client shares. */
import {
  type AccessPointDescription,
  CreateAccessPointCommand,
  DeleteAccessPointCommand,
  DescribeAccessPointsCommand,
  DescribeFileSystemsCommand,
  DescribeMountTargetsCommand,
  EFSClient,
  TagResourceCommand,
} from "@aws-sdk/client-efs";
import {
  awsClientConfig,
  awsErrorCode,
  instrumentClient,
  isThrottlingError,
  isTransientError,
  mutationLimiter,
  paceThrottledCalls,
} from "../aws/sdk.ts";
import { currentCallSignal } from "../call-scope.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { type AccessPoint, type Efs, EfsError, type EfsErrorKind, type MountTarget } from "./cloud.ts";

/** Access points per DescribeAccessPoints page; a file system holds at most 10,000. */
const PAGE_SIZE = 1000;

/**
 * The calls made one per CSI CreateVolume or DeleteVolume, paced once EFS throttles them. EFS
 * documents no refill rate: the limiter starts from EC2's for mutating actions and learns (mutationLimiter).
 */
const PACED_ACTIONS = ["CreateAccessPoint", "DeleteAccessPoint"];

export interface SdkEfsOptions {
  region: string | undefined;
  endpoint?: string | undefined;
  metrics: Metrics;
  log: Logger;
}

export interface SdkEfs extends Efs {
  /** The credentials the client signs with (the node's role), for the `iam` mount option. */
  credentials(): Promise<{ accessKeyId: string; secretAccessKey: string; sessionToken?: string | undefined }>;
  close(): void;
}

export function createSdkEfs(o: SdkEfsOptions): SdkEfs {
  const client = new EFSClient(awsClientConfig({ region: o.region, endpoint: o.endpoint }));
  instrumentClient(client, o.metrics, o.log);
  const limiters = new Map(PACED_ACTIONS.map((action) => [action, mutationLimiter(action, o.log)]));
  // Only the wait in line ends with the caller's deadline; a call already sent runs to its answer.
  paceThrottledCalls(client, { limiterFor: (action) => limiters.get(action), signal: currentCallSignal });

  async function call<T>(what: string, send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (err) {
      throw toEfsError(what, err);
    }
  }

  return {
    async describeFileSystem(fileSystemId) {
      const out = await call(`describe file system ${fileSystemId}`, () =>
        client.send(new DescribeFileSystemsCommand({ FileSystemId: fileSystemId })),
      );
      const fs = out.FileSystems?.find((f) => f.FileSystemId === fileSystemId);
      if (!fs)
        throw new EfsError(
          "FileSystemNotFound",
          "FileSystemNotFound",
          `file system ${fileSystemId} not found`,
        );
      return {
        id: fileSystemId,
        lifeCycleState: fs.LifeCycleState ?? "available",
        ...(fs.AvailabilityZoneName ? { availabilityZone: fs.AvailabilityZoneName } : {}),
      };
    },

    async describeMountTargets(fileSystemId) {
      const all: MountTarget[] = [];
      let marker: string | undefined;
      do {
        const out = await call(`describe mount targets of ${fileSystemId}`, () =>
          client.send(new DescribeMountTargetsCommand({ FileSystemId: fileSystemId, Marker: marker })),
        );
        for (const mt of out.MountTargets ?? []) {
          all.push({
            id: mt.MountTargetId ?? "",
            zone: mt.AvailabilityZoneName ?? "",
            lifeCycleState: mt.LifeCycleState ?? "available",
            ...((mt.IpAddress ?? mt.Ipv6Address) ? { ipAddress: mt.IpAddress ?? mt.Ipv6Address } : {}),
          });
        }
        marker = out.NextMarker || undefined;
      } while (marker);
      return all;
    },

    async listAccessPoints(fileSystemId) {
      const all: AccessPoint[] = [];
      let nextToken: string | undefined;
      do {
        const out = await call(`list access points of ${fileSystemId}`, () =>
          client.send(
            new DescribeAccessPointsCommand({
              FileSystemId: fileSystemId,
              MaxResults: PAGE_SIZE,
              NextToken: nextToken,
            }),
          ),
        );
        for (const ap of out.AccessPoints ?? []) all.push(fromDescription(ap));
        nextToken = out.NextToken || undefined;
      } while (nextToken);
      return all;
    },

    async describeAccessPoint(accessPointId) {
      const out = await call(`describe access point ${accessPointId}`, () =>
        client.send(new DescribeAccessPointsCommand({ AccessPointId: accessPointId })),
      );
      const ap = out.AccessPoints?.find((a) => a.AccessPointId === accessPointId);
      if (!ap) {
        throw new EfsError(
          "AccessPointNotFound",
          "AccessPointNotFound",
          `access point ${accessPointId} not found`,
        );
      }
      return fromDescription(ap);
    },

    async createAccessPoint(input) {
      const { creationInfo } = input.rootDirectory;
      const out = await call(`create access point on ${input.fileSystemId}`, () =>
        client.send(
          new CreateAccessPointCommand({
            ClientToken: input.clientToken,
            FileSystemId: input.fileSystemId,
            PosixUser: { Uid: input.posixUser.uid, Gid: input.posixUser.gid },
            RootDirectory: {
              Path: input.rootDirectory.path,
              ...(creationInfo
                ? {
                    CreationInfo: {
                      OwnerUid: creationInfo.ownerUid,
                      OwnerGid: creationInfo.ownerGid,
                      Permissions: creationInfo.permissions,
                    },
                  }
                : {}),
            },
            Tags: Object.entries(input.tags).map(([Key, Value]) => ({ Key, Value })),
          }),
        ),
      );
      if (!out.AccessPointId)
        throw new EfsError("Other", "NoAccessPointId", "CreateAccessPoint returned no id");
      return fromDescription(out);
    },

    async deleteAccessPoint(accessPointId) {
      await call(`delete access point ${accessPointId}`, () =>
        client.send(new DeleteAccessPointCommand({ AccessPointId: accessPointId })),
      );
    },

    async tagResource(resourceId, tags) {
      await call(`tag ${resourceId}`, () =>
        client.send(
          new TagResourceCommand({
            ResourceId: resourceId,
            Tags: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })),
          }),
        ),
      );
    },

    async probe() {
      await call("probe EFS", () => client.send(new DescribeFileSystemsCommand({ MaxItems: 1 })));
    },

    async credentials() {
      const { accessKeyId, secretAccessKey, sessionToken } = await client.config.credentials();
      return { accessKeyId, secretAccessKey, sessionToken };
    },

    close() {
      client.destroy();
    },
  };
}

function fromDescription(ap: AccessPointDescription): AccessPoint {
  const info = ap.RootDirectory?.CreationInfo;
  const tags: Record<string, string> = {};
  for (const t of ap.Tags ?? []) if (t.Key !== undefined) tags[t.Key] = t.Value ?? "";
  return {
    id: ap.AccessPointId ?? "",
    fileSystemId: ap.FileSystemId ?? "",
    ...(ap.ClientToken ? { clientToken: ap.ClientToken } : {}),
    ...(ap.PosixUser?.Uid !== undefined && ap.PosixUser.Gid !== undefined
      ? { posixUser: { uid: ap.PosixUser.Uid, gid: ap.PosixUser.Gid } }
      : {}),
    rootDirectory: {
      path: ap.RootDirectory?.Path ?? "/",
      ...(info?.OwnerUid !== undefined && info.OwnerGid !== undefined && info.Permissions !== undefined
        ? {
            creationInfo: { ownerUid: info.OwnerUid, ownerGid: info.OwnerGid, permissions: info.Permissions },
          }
        : {}),
    },
    tags,
    ...(ap.LifeCycleState ? { lifeCycleState: ap.LifeCycleState } : {}),
  };
}

const KIND_BY_CODE: Record<string, EfsErrorKind> = {
  FileSystemNotFound: "FileSystemNotFound",
  AccessPointNotFound: "AccessPointNotFound",
  AccessPointAlreadyExists: "AccessPointAlreadyExists",
  AccessPointLimitExceeded: "AccessPointLimitExceeded",
  AccessDeniedException: "AccessDenied",
  AccessDenied: "AccessDenied",
  UnauthorizedOperation: "AccessDenied",
  UnrecognizedClientException: "AccessDenied",
  InvalidClientTokenId: "AccessDenied",
  ExpiredTokenException: "AccessDenied",
  BadRequest: "InvalidParameter",
  ValidationException: "InvalidParameter",
  IncorrectFileSystemLifeCycleState: "FileSystemNotReady",
  InternalServerError: "Unavailable",
  DependencyTimeout: "Unavailable",
  // No credentials yet (e.g. a web identity token not mounted yet): the next call may find them.
  CredentialsProviderError: "Unavailable",
  TooManyRequests: "Throttled",
};

/** An SDK or network error as an EfsError whose message says what was being done. */
export function toEfsError(what: string, err: unknown): EfsError {
  if (err instanceof EfsError) return err;
  const code = awsErrorCode(err);
  let kind = KIND_BY_CODE[code];
  if (!kind && isThrottlingError(err)) kind = "Throttled";
  if (!kind && isTransientError(err)) kind = "Unavailable";
  const message = err instanceof Error ? err.message : String(err);
  const accessPointId =
    err !== null &&
    typeof err === "object" &&
    typeof (err as { AccessPointId?: unknown }).AccessPointId === "string"
      ? (err as { AccessPointId: string }).AccessPointId
      : undefined;
  return new EfsError(kind ?? "Other", code, `${what}: ${code}: ${message}`, accessPointId);
}
