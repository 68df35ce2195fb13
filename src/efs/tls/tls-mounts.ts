/**
 * The node's EFS TLS relays, in place of efs-utils' tunnels: one relay per TLS mount, on a port of
 * efs-utils' range, that the kernel mounts as `127.0.0.1:/path` with `port=<p>`.
 *
 * Nothing is written down: after a restart the relays are found again from the mount table (an
 * NFS mount of 127.0.0.1 with its port) and kubelet's vol_data.json beside the mount (the volume
 * handle: file system and access point). The one mount flag the relay needs that neither keeps is
 * `iam`: the port records it, odd for `iam`, even without. The mount target is looked up again.
 */
import { generateKeyPair, type KeyObject, X509Certificate } from "node:crypto";
import { lookup } from "node:dns/promises";
import { readFile } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { rootCertificates } from "node:tls";
import { promisify } from "node:util";
import { failedPrecondition, notFound, unavailable } from "../../csi/errors.ts";
import type { MountEntry } from "../../host/mounts.ts";
import type { Logger } from "../../log.ts";
import { type Efs, isEfsError } from "../cloud.ts";
import { tryParseVolumeHandle } from "../handle.ts";
import { type EfsMountCommand, type EfsMountInput, efsMountCommand, fileSystemDnsName } from "../mount.ts";
import { efsClientCertificate, type IamCredentials } from "./client-certificate.ts";
import { EFS_TLS_PORT_RANGE, type Relay, type RelayStats, startTlsRelay } from "./relay.ts";

/** What a relay is for: the identity its certificate carries and where it connects. */
export interface TlsMountSpec {
  fileSystemId: string;
  accessPointId?: string | undefined;
  /** volumeAttributes mounttargetip: connect there instead of looking the mount target up. */
  mountTargetIp?: string | undefined;
  /** The `az` mount flag: the zone whose mount target to use (default: the node's). */
  az?: string | undefined;
  /** The `iam` mount flag: the certificate carries a SigV4 signature of the node's credentials. */
  iam: boolean;
}

export interface TlsMountsOptions {
  region: string;
  /** The node's zone: its mount target is the one used when DNS does not name one (unknown: any). */
  zone: string | undefined;
  log: Logger;
  /** For mount targets when the file system's DNS name does not resolve (DescribeMountTargets). */
  efs?: Pick<Efs, "describeMountTargets"> | undefined;
  /** The node's AWS credentials, for `iam`. */
  credentials?: (() => Promise<Omit<IamCredentials, "region">>) | undefined;
  /** PEM of a CA trusted besides Amazon's roots (a test's mount target; never needed on AWS). */
  extraCa?: string | undefined;
  /** Sent in the certificate as efs-utils' client-info source (the official driver sends "k8s"). */
  clientSource?: string;
  /** This driver's version, sent where efs-utils sends its own. */
  version: string;
  /** [lowest, highest excluded]; default efs-utils' 20049..21048. */
  portRange?: readonly [number, number];
  /** How often a relay's certificate is made again (efs-utils: hourly; it is valid for 3 hours). */
  renewEveryMs?: number;
  /** Resolves a DNS name to one address, or undefined when it does not resolve. */
  resolve?: (name: string) => Promise<string | undefined>;
}

/**
 * The roots efs-utils trusts (its efs-utils.crt: Amazon Root CA 1 to 4), from Node's bundled store.
 * Picked out at the first TLS mount, not at start-up: parsing the store takes milliseconds.
 */
const amazonRoots = (): string[] =>
  rootCertificates.filter((pem) => /(^|\n)O=Amazon(\n|$)/.test(new X509Certificate(pem).subject));
const RENEW_EVERY_MS = 60 * 60_000;
/** How long a DNS lookup of the file system's name may take before the API is asked instead. */
const RESOLVE_TIMEOUT_MS = 5_000;

interface Entry {
  spec: TlsMountSpec;
  relay: Relay;
  /** Makes the client certificate again (renewEveryMs). */
  renewal: NodeJS.Timeout;
}

export interface TlsMountStats extends RelayStats {
  fileSystemId: string;
  accessPointId: string | undefined;
  port: number;
  targetPath: string;
}

/** A file system's relays, those running and those closed since the start, added up. */
export interface TlsFileSystemTotals extends Omit<RelayStats, "active"> {
  fileSystemId: string;
  /** Relays running: its TLS mounts on this node. */
  relays: number;
}

export class TlsMounts {
  readonly #o: TlsMountsOptions;
  #ca: string[] | undefined;
  /** By target path: the mount each relay serves. */
  readonly #relays = new Map<string, Entry>();
  /** What closed relays carried, by file system: the metrics' counters never go down. */
  readonly #closed = new Map<string, Omit<RelayStats, "active">>();
  #key: Promise<KeyObject> | undefined;

  constructor(options: TlsMountsOptions) {
    this.#o = options;
  }

  /**
   * A relay for the mount at targetPath, listening before this returns: on `port` (a mount being
   * recovered) or on a free port of the range with the parity of spec.iam. A relay there already
   * for the same spec is kept. Throws a CsiError when no mount target can be found.
   */
  async open(spec: TlsMountSpec, targetPath: string, port?: number): Promise<number> {
    const existing = this.#relays.get(targetPath);
    if (existing && sameSpec(existing.spec, spec) && (port === undefined || existing.relay.port === port)) {
      return existing.relay.port;
    }
    if (existing) await this.close(targetPath);
    const host = await this.#mountTarget(spec);
    // The certificate the next connection presents: renewed below.
    let identity = await this.#identity(spec);
    const log = this.#o.log.child({ fileSystemId: spec.fileSystemId, targetPath });
    const relay = await startTlsRelay({
      target: { host },
      serverName: fileSystemDnsName(spec.fileSystemId, this.#o.region),
      ca: this.#trusted(),
      identity: () => identity,
      log,
      ...(port !== undefined ? { port } : { portRange: this.#o.portRange ?? EFS_TLS_PORT_RANGE }),
      acceptPort: port !== undefined ? undefined : (p) => p % 2 === (spec.iam ? 1 : 0),
    });
    if (port === undefined) {
      // A new mount: a mount target that refuses TLS fails the publish now, with the reason.
      await relay.probe().catch(async (err: unknown) => {
        await relay.close();
        throw unavailable(
          `TLS to the mount target of ${spec.fileSystemId} failed: ${err instanceof Error ? err.message : String(err)}`,
        );
      });
    }
    const renewal = setInterval(() => {
      this.#identity(spec).then(
        (fresh) => {
          identity = fresh;
        },
        (err: unknown) =>
          log.warn(
            { err: String(err) },
            "renewing the TLS client certificate failed; the current one stays in use",
          ),
      );
    }, this.#o.renewEveryMs ?? RENEW_EVERY_MS);
    renewal.unref();
    this.#relays.set(targetPath, { spec, relay, renewal });
    return relay.port;
  }

  /** Amazon's roots, and the extra CA if one was given. */
  #trusted(): string[] {
    this.#ca ??= [...amazonRoots(), ...(this.#o.extraCa ? [this.#o.extraCa] : [])];
    return this.#ca;
  }

  /** Stops the relay of the mount at targetPath, if there is one (the mount is gone). */
  async close(targetPath: string): Promise<void> {
    const entry = this.#relays.get(targetPath);
    if (!entry) return;
    this.#relays.delete(targetPath);
    clearInterval(entry.renewal);
    await entry.relay.close();
    const { active: _, ...carried } = entry.relay.stats();
    const sum = this.#closed.get(entry.spec.fileSystemId) ?? {
      connections: 0,
      bytesIn: 0,
      bytesOut: 0,
      failures: 0,
    };
    for (const key of Object.keys(sum) as (keyof typeof sum)[]) sum[key] += carried[key];
    this.#closed.set(entry.spec.fileSystemId, sum);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#relays.keys()].map((target) => this.close(target)));
  }

  /**
   * Relays again for the TLS mounts a previous run of the plugin left (restart, crash): each NFS
   * mount of 127.0.0.1 below the kubelet directory whose vol_data.json names a volume of this
   * driver, on the port it was mounted with. A mount that cannot be served again is logged and left
   * (its NFS client keeps retrying; a later NodeUnpublish unmounts it).
   */
  async recover(
    mounts: readonly MountEntry[],
    isKubeletPath: (path: string) => boolean,
    driverName: string,
  ): Promise<number> {
    let recovered = 0;
    for (const entry of mounts) {
      const port = relayedPort(entry);
      if (port === undefined || !isKubeletPath(entry.mountPoint)) continue;
      const volume = await volumeData(entry.mountPoint);
      if (volume?.driverName !== driverName) continue;
      const handle = tryParseVolumeHandle(volume.volumeHandle);
      if (!handle) continue;
      const spec: TlsMountSpec = {
        fileSystemId: handle.fileSystemId,
        accessPointId: handle.accessPointId,
        iam: port % 2 === 1,
      };
      try {
        await this.open(spec, entry.mountPoint, port);
        recovered++;
        this.#o.log.info({ targetPath: entry.mountPoint, port, ...spec }, "TLS relay recovered");
      } catch (err) {
        this.#o.log.error(
          { targetPath: entry.mountPoint, port, ...spec, err: String(err) },
          "cannot relay again for a TLS mount: its NFS client retries until the relay is back or it is unmounted",
        );
      }
    }
    return recovered;
  }

  totals(): TlsFileSystemTotals[] {
    const byFs = new Map<string, TlsFileSystemTotals>();
    for (const [fileSystemId, closed] of this.#closed)
      byFs.set(fileSystemId, { fileSystemId, relays: 0, ...closed });
    for (const s of this.stats()) {
      const t = byFs.get(s.fileSystemId) ?? {
        fileSystemId: s.fileSystemId,
        relays: 0,
        connections: 0,
        bytesIn: 0,
        bytesOut: 0,
        failures: 0,
      };
      t.relays++;
      t.connections += s.connections;
      t.bytesIn += s.bytesIn;
      t.bytesOut += s.bytesOut;
      t.failures += s.failures;
      byFs.set(s.fileSystemId, t);
    }
    return [...byFs.values()];
  }

  stats(): TlsMountStats[] {
    return [...this.#relays].map(([targetPath, { spec, relay }]) => ({
      fileSystemId: spec.fileSystemId,
      accessPointId: spec.accessPointId,
      port: relay.port,
      targetPath,
      ...relay.stats(),
    }));
  }

  /**
   * Where the relay connects: volumeAttributes mounttargetip; else the file system's DNS name (with
   * the `az` flag, that zone's name), as efs-utils resolves it; else, as efs-utils falls back, the
   * mount target in the zone (the node's, or `az`) from DescribeMountTargets.
   */
  async #mountTarget(spec: TlsMountSpec): Promise<string> {
    if (spec.mountTargetIp) return spec.mountTargetIp;
    const name = fileSystemDnsName(spec.fileSystemId, this.#o.region);
    const resolved = await (this.#o.resolve ?? resolveName)(spec.az ? `${spec.az}.${name}` : name);
    if (resolved) return resolved;
    const zone = spec.az ?? this.#o.zone;
    const { efs } = this.#o;
    if (!efs)
      throw failedPrecondition(
        `${name} does not resolve and the node has no EFS client to find a mount target`,
      );
    const targets = await efs.describeMountTargets(spec.fileSystemId).catch((err: unknown) => {
      if (isEfsError(err, "FileSystemNotFound"))
        throw notFound(`file system ${spec.fileSystemId} was not found`);
      throw unavailable(`${name} does not resolve, and DescribeMountTargets failed: ${String(err)}`);
    });
    // efs-utils too takes any available mount target when it knows no zone.
    const inZone = targets.find(
      (t) => (zone === undefined || t.zone === zone) && t.lifeCycleState === "available" && t.ipAddress,
    );
    if (!inZone?.ipAddress) {
      const zones = [...new Set(targets.filter((t) => t.lifeCycleState === "available").map((t) => t.zone))];
      throw failedPrecondition(
        `${name} does not resolve, and file system ${spec.fileSystemId} has no available mount target in ${zone ?? "any zone"}` +
          ` (it has in: ${zones.join(", ") || "none"}); create one there, or set volumeAttributes mounttargetip`,
      );
    }
    return inZone.ipAddress;
  }

  /** A client certificate for the spec, made now: efs-utils' extensions, signed for `iam`. */
  async #identity(spec: TlsMountSpec): Promise<{ cert: string; key: string }> {
    this.#key ??= promisify(generateKeyPair)("rsa", { modulusLength: 3072 }).then((pair) => pair.privateKey);
    const key = await this.#key.catch((err: unknown) => {
      this.#key = undefined;
      throw err;
    });
    let iam: IamCredentials | undefined;
    if (spec.iam) {
      if (!this.#o.credentials)
        throw failedPrecondition("mount flag iam: the node has no AWS credentials to sign with");
      iam = { ...(await this.#o.credentials()), region: this.#o.region };
    }
    const certificate = efsClientCertificate({
      key,
      fileSystemId: spec.fileSystemId,
      accessPointId: spec.accessPointId,
      clientSource: this.#o.clientSource ?? "k8s",
      version: this.#o.version,
      now: new Date(),
      commonName: hostname(),
      iam,
    });
    return { cert: certificate.pem, key: key.export({ type: "pkcs8", format: "pem" }).toString() };
  }
}

/**
 * The mount command for input at target. For a TLS mount without efs-utils, the relay it goes
 * through is opened first (a mount target that fails the checks fails here, named) and its port is
 * in the command; the caller closes it if the mount fails.
 */
export async function relayedMountCommand(
  input: EfsMountInput,
  target: string,
  tlsMounts: TlsMounts | undefined,
): Promise<EfsMountCommand> {
  const command = efsMountCommand(input, target);
  if (!command.relay) return command;
  if (!tlsMounts) throw failedPrecondition("this plugin runs no TLS relay: it cannot mount EFS with TLS");
  const relayPort = await tlsMounts.open(command.relay, target);
  return efsMountCommand({ ...input, relayPort }, target);
}

/** The local port of an NFS mount through a relay (server 127.0.0.1), or undefined for any other mount. */
export function relayedPort(entry: MountEntry): number | undefined {
  if (!/^nfs4?$/.test(entry.fsType) || !entry.source.startsWith("127.0.0.1:")) return undefined;
  const option = [...entry.superOptions, ...entry.mountOptions].find((o) => o.startsWith("port="));
  const port = Number(option?.slice("port=".length));
  return Number.isInteger(port) && port > 0 && port < 65_536 ? port : undefined;
}

/** kubelet's record of a CSI volume mounted at <dir>/mount: <dir>/vol_data.json. */
async function volumeData(
  mountPoint: string,
): Promise<{ volumeHandle: string; driverName: string } | undefined> {
  try {
    const data = JSON.parse(await readFile(join(dirname(mountPoint), "vol_data.json"), "utf8")) as Record<
      string,
      unknown
    >;
    return typeof data["volumeHandle"] === "string" && typeof data["driverName"] === "string"
      ? { volumeHandle: data["volumeHandle"], driverName: data["driverName"] }
      : undefined;
  } catch {
    return undefined;
  }
}

async function resolveName(name: string): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), RESOLVE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([
      lookup(name).then(
        (r) => r.address,
        () => undefined,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function sameSpec(a: TlsMountSpec, b: TlsMountSpec): boolean {
  return (
    a.fileSystemId === b.fileSystemId &&
    a.accessPointId === b.accessPointId &&
    a.mountTargetIp === b.mountTargetIp &&
    a.az === b.az &&
    a.iam === b.iam
  );
}
