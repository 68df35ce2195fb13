/**
 * How an EFS volume is mounted: the one place that turns a volume handle, a publish request and the
 * node's tools into the arguments of `mount`. Pure. The node (NodePublishVolume) and the controller
 * (deleting an access point's root directory) run exactly what efsMountCommand returns.
 *
 *   amazon-efs-utils installed:  mount -t efs  -o tls,accesspoint=fsap-…[,ro][,flags] -- fs-x:/path TARGET
 *   otherwise, TLS (the default): mount -t nfs4 -o nfsvers=4.1,rsize=1048576,…,port=P[,ro][,flags] -- 127.0.0.1:/path TARGET
 *     through this driver's relay on 127.0.0.1:P (tls/tls-mounts.ts), as efs-utils mounts
 *   otherwise, plain NFS (encryptInTransit=false): mount -t nfs4 -o nfsvers=4.1,…[,ro][,flags] -- fs-x.efs.REGION.amazonaws.com:/path TARGET
 */
import { isIP } from "node:net";
import { posix } from "node:path";
import { failedPrecondition, invalidArgument } from "../csi/errors.ts";
import type { MountEntry } from "../host/mounts.ts";
import { hasControlCharacter, isAccessPointId, type VolumeHandle } from "./handle.ts";
import { parseGoBool } from "./params.ts";
import type { TlsMountSpec } from "./tls/tls-mounts.ts";

/** Where amazon-efs-utils installs its mount helper; `mount -t efs` runs it. */
export const EFS_MOUNT_HELPER = "/sbin/mount.efs";

/** AWS's recommended NFS options for EFS (amazon-efs-utils uses the same). The first is required. */
export const NFS_OPTIONS = [
  "nfsvers=4.1",
  "rsize=1048576",
  "wsize=1048576",
  "hard",
  "timeo=600",
  "retrans=2",
  "noresvport",
] as const;

export interface EfsMountInput {
  handle: VolumeHandle;
  /** The request's readonly, or a reader-only access mode. A `ro` mount flag makes the mount read-only too. */
  readOnly: boolean;
  /** volume_capability.mount.mount_flags (the PV's mountOptions), as given. */
  mountFlags: readonly string[];
  /** volume_context (the PV's volumeAttributes): the keys the official driver reads. */
  volumeContext: Record<string, string>;
  /** Whether amazon-efs-utils' mount helper is installed: `mount -t efs` rather than `mount -t nfs4`. */
  efsUtils: boolean;
  /** The node's region, for the file system's DNS name when mounting with plain NFS. */
  region: string;
  /** Without efs-utils, with TLS: the port of the mount's relay (0 until it is known). */
  relayPort?: number;
}

export interface EfsMountCommand {
  fsType: "efs" | "nfs4";
  /** `host:/path`: the file system id (efs) or its DNS name (nfs4), and the path below the root or access point. */
  source: string;
  /** The mounted directory, below the access point's root directory when there is one. */
  path: string;
  options: string[];
  readOnly: boolean;
  /** Mount flags left out, each with the reason, for a log line. */
  dropped: string[];
  /** Without efs-utils, with TLS: what the relay on 127.0.0.1:relayPort must be for. */
  relay: TlsMountSpec | undefined;
  /** The arguments of `mount`. */
  args: string[];
}

/** Mount flags that would point the mount at another server or change what mount does: refused. */
const FORBIDDEN: Record<string, string> = {
  addr: "sets the server address; the server comes from the volume handle",
  port: "sets the server port; the server comes from the volume handle",
  mounttargetip: "sets the server address; set it as volumeAttributes mounttargetip instead",
  bind: "is not an EFS mount option",
  rbind: "is not an EFS mount option",
  remount: "is not an EFS mount option",
  move: "is not an EFS mount option",
};

/** Options only amazon-efs-utils understands: the kernel's NFS client refuses them. */
const EFS_UTILS_ONLY = new Set([
  "tls",
  "notls",
  "tlsport",
  "verify",
  "ocsp",
  "noocsp",
  "iam",
  "awsprofile",
  "accesspoint",
  "crossaccount",
  "az",
  "region",
  "netns",
  "cafile",
  "rolearn",
  "jwtpath",
  "stunnel",
]);

/** efs-utils options this driver's relay takes in its place (the others need efs-utils itself). */
const RELAY_OPTIONS = new Set(["tls", "iam", "accesspoint", "az", "region", "noocsp"]);

/** Flags that switch one setting either way: both sides share a slot, and only one may be given. */
const EXCLUSIVE: [string, string][] = [
  ["rw", "ro"],
  ["hard", "soft"],
  ["resvport", "noresvport"],
  ["sync", "async"],
  ["ac", "noac"],
  ["cto", "nocto"],
  ["lock", "nolock"],
  ["sharecache", "nosharecache"],
  ["fsc", "nofsc"],
  ["exec", "noexec"],
  ["suid", "nosuid"],
  ["dev", "nodev"],
  ["atime", "noatime"],
  ["diratime", "nodiratime"],
  ["relatime", "norelatime"],
  ["strictatime", "nostrictatime"],
  ["ocsp", "noocsp"],
];
const SLOT = new Map<string, string>(
  EXCLUSIVE.flatMap(([a, b]): [string, string][] => [
    [a, a],
    [b, a],
  ]),
);

interface MountOption {
  /** Lowercase key; `vers` is spelled `nfsvers`. */
  key: string;
  value: string | undefined;
  text: string;
  /** Required by the volume (refuse a conflicting flag), a default (a flag replaces it), or the user's. */
  origin: "required" | "default" | "user";
}

/**
 * The `mount` command for one EFS volume at target. Throws INVALID_ARGUMENT naming the mount flag
 * or volume_context key that is conflicting, forbidden or malformed, and FAILED_PRECONDITION when
 * the volume needs amazon-efs-utils (an access point, TLS) and the node lacks it.
 */
export function efsMountCommand(input: EfsMountInput, target: string): EfsMountCommand {
  const { handle } = input;
  const context = parseVolumeContext(input.volumeContext);
  const flags = input.mountFlags.flatMap(splitFlags).map((text) => parseOption(text, "user"));

  // The official driver still honours an access point given as a mount flag (the v0.3 way).
  const flaggedAccessPoint = flags.find((f) => f.key === "accesspoint");
  if (flaggedAccessPoint) {
    const id = flaggedAccessPoint.value ?? "";
    if (!isAccessPointId(id)) {
      throw invalidArgument(`mount flag ${flaggedAccessPoint.text}`, "is not accesspoint=fsap-<hex id>");
    }
    if (handle.accessPointId && id !== handle.accessPointId) {
      throw invalidArgument(
        `mount flag ${flaggedAccessPoint.text}`,
        `conflicts with access point ${handle.accessPointId} of the volume handle`,
      );
    }
  }
  const accessPointId = handle.accessPointId ?? flaggedAccessPoint?.value;
  const path = handle.path !== "/" ? handle.path : (context.path ?? "/");
  const readOnly = input.readOnly || flags.some((f) => f.key === "ro");
  const fsType = input.efsUtils ? "efs" : "nfs4";
  const notls = flags.find((f) => f.key === "notls");
  if (notls && accessPointId) {
    throw invalidArgument(
      `mount flag ${notls.text}`,
      `access point ${accessPointId} is mounted with TLS only`,
    );
  }
  if (notls && context.encryptInTransit === true) {
    throw invalidArgument(
      `mount flag ${notls.text}`,
      "conflicts with volumeAttributes encryptInTransit=true",
    );
  }
  // Access point mounts only work over TLS: efs-utils refuses accesspoint= without tls.
  const tls = accessPointId !== undefined || (context.encryptInTransit !== false && !notls);

  const base: MountOption[] = [];
  let host: string;
  let relay: TlsMountSpec | undefined;
  if (fsType === "efs") {
    if (tls) base.push(parseOption("tls", "required"));
    if (accessPointId) base.push(parseOption(`accesspoint=${accessPointId}`, "required"));
    if (context.mountTargetIp) base.push(parseOption(`mounttargetip=${context.mountTargetIp}`, "required"));
    if (context.crossAccount) base.push(parseOption("crossaccount", "required"));
    host = handle.dnsName ?? handle.fileSystemId;
  } else {
    if (context.crossAccount) {
      throw failedPrecondition(
        `volumeAttributes crossaccount=true needs amazon-efs-utils (mount -t efs), which is not installed on this node ` +
          `(${EFS_MOUNT_HELPER} is missing): it names the mount target by zone id`,
      );
    }
    for (const [i, text] of NFS_OPTIONS.entries())
      base.push(parseOption(text, i === 0 ? "required" : "default"));
    if (tls) {
      const az = flags.find((f) => f.key === "az");
      if (az && !/^[a-z]{2}(-[a-z]+)+-\d+[a-z]$/.test(az.value ?? "")) {
        throw invalidArgument(
          `mount flag ${az.text}`,
          "is not az=<availability zone name>, e.g. az=us-east-1a",
        );
      }
      const region = flags.find((f) => f.key === "region");
      if (region && region.value !== input.region) {
        throw invalidArgument(
          `mount flag ${region.text}`,
          `the file system must be in the node's region ${input.region}: the relay connects there`,
        );
      }
      relay = {
        fileSystemId: handle.fileSystemId,
        accessPointId,
        mountTargetIp: context.mountTargetIp,
        az: az?.value,
        iam: flags.some((f) => f.key === "iam"),
      };
      base.push(parseOption(`port=${input.relayPort ?? 0}`, "required"));
      host = "127.0.0.1";
    } else {
      host = context.mountTargetIp
        ? isIP(context.mountTargetIp) === 6
          ? `[${context.mountTargetIp}]`
          : context.mountTargetIp
        : (handle.dnsName ?? fileSystemDnsName(handle.fileSystemId, input.region));
    }
  }
  if (readOnly) base.push(parseOption("ro", "required"));

  const options = [...base];
  const dropped: string[] = [];
  for (const flag of flags) {
    const field = `mount flag ${flag.text}`;
    const forbidden = FORBIDDEN[flag.key];
    if (forbidden) throw invalidArgument(field, forbidden);
    if (flag.key === "awscredsuri") {
      // As the official driver does: a credentials URI from a PV would reach the node's IAM role.
      dropped.push(`${flag.text}: not supported, ignored`);
      continue;
    }
    if (flag.key === "tls" && !tls) {
      throw invalidArgument(
        field,
        `conflicts with ${notls ? notls.text : "volumeAttributes encryptInTransit=false"}`,
      );
    }
    if (fsType === "nfs4" && EFS_UTILS_ONLY.has(flag.key)) {
      if (flag.key === "notls") continue;
      if (!relay) {
        throw invalidArgument(
          field,
          `needs amazon-efs-utils (mount -t efs), which is not installed on this node; the volume is mounted with plain NFS (encryptInTransit=false)`,
        );
      }
      if (!RELAY_OPTIONS.has(flag.key)) {
        throw invalidArgument(
          field,
          `needs amazon-efs-utils (mount -t efs), which is not installed on this node; its TLS relay takes only ${[...RELAY_OPTIONS].join(", ")}`,
        );
      }
      continue; // the relay's business (relay above), not the kernel's
    }
    if (flag.key === "nfsvers" && flag.value !== "4.1") {
      throw invalidArgument(field, "EFS volumes are mounted with NFS version 4.1 (nfsvers=4.1)");
    }
    if (flag.key === "rw" && readOnly) {
      throw invalidArgument(field, "conflicts with a read-only publish (readonly, a reader-only mode or ro)");
    }
    const slot = SLOT.get(flag.key) ?? flag.key;
    const i = options.findIndex((o) => (SLOT.get(o.key) ?? o.key) === slot);
    const existing = options[i];
    // A flag equal to a default takes it over, so that a later flag of the same slot conflicts with it.
    if (!existing) options.push(flag);
    else if (existing.key === flag.key && existing.value === flag.value) {
      if (existing.origin === "default") options[i] = flag;
    } else if (existing.origin === "default") options[i] = flag;
    else throw invalidArgument(field, `conflicts with ${existing.text}`);
  }

  const source = `${host}:${path}`;
  const texts = options.map((o) => o.text);
  const args = ["-t", fsType, ...(texts.length > 0 ? ["-o", texts.join(",")] : []), "--", source, target];
  return { fsType, source, path, options: texts, readOnly, dropped, relay, args };
}

/** The DNS name of a file system: what efs-utils resolves too (China regions end in amazonaws.com.cn). */
export function fileSystemDnsName(fileSystemId: string, region: string): string {
  if (!/^[a-z]{2}(-[a-z]+)+-\d+$/.test(region)) {
    throw failedPrecondition(
      `the node's region "${region}" is not an AWS region: cannot name ${fileSystemId}`,
    );
  }
  return `${fileSystemId}.efs.${region}.${region.startsWith("cn-") ? "amazonaws.com.cn" : "amazonaws.com"}`;
}

/**
 * Why the mount at a target is not what this command would mount, or undefined when it is (as far
 * as the mount table tells). A plain NFS mount shows `fs-x.efs…:/path`; an efs-utils TLS mount shows
 * `127.0.0.1:/path`, so only the path and read-only-ness can be compared for it.
 */
export function mountMismatch(
  entry: MountEntry,
  command: EfsMountCommand,
  fileSystemId: string,
): string | undefined {
  const mountedReadOnly = entry.mountOptions.includes("ro");
  if (mountedReadOnly !== command.readOnly) {
    return `it is mounted ${mountedReadOnly ? "read-only" : "read-write"}, not ${command.readOnly ? "read-only" : "read-write"}`;
  }
  const nfs = /^nfs4?$/.test(entry.fsType) ? /^(.*):(\/.*)$/.exec(entry.source) : null;
  if (nfs) {
    const mountedFs = /^(fs-[0-9a-f]+)\.efs\./.exec(nfs[1] ?? "")?.[1];
    if (mountedFs && mountedFs !== fileSystemId)
      return `${entry.source} is mounted there, not ${fileSystemId}`;
    if (posix.resolve("/", nfs[2] ?? "/") !== command.path) {
      return `${entry.source} is mounted there, not path ${command.path}`;
    }
  }
  return undefined;
}

export interface VolumeContext {
  /** Deprecated `path` key: the directory to mount when the handle names none. */
  path?: string;
  encryptInTransit?: boolean;
  mountTargetIp?: string;
  crossAccount?: boolean;
}

/** Keys kubelet adds (podInfoOnMount) or the provisioner records: not ours to judge. */
const PASSED_THROUGH = ["csi.storage.k8s.io/", "storage.kubernetes.io/"];

/** The volumeAttributes the official driver reads (keys case-insensitive); others are INVALID_ARGUMENT, as there. */
export function parseVolumeContext(context: Record<string, string>): VolumeContext {
  const out: VolumeContext = {};
  for (const [key, value] of Object.entries(context)) {
    const field = `volume_context ${key}`;
    const k = key.toLowerCase();
    if (PASSED_THROUGH.some((prefix) => k.startsWith(prefix))) continue;
    switch (k) {
      case "path":
        if (!value.startsWith("/") || hasControlCharacter(value)) {
          throw invalidArgument(field, "must be an absolute path");
        }
        out.path = posix.resolve(value);
        break;
      case "encryptintransit":
        out.encryptInTransit = parseGoBool(field, value);
        break;
      case "crossaccount":
        out.crossAccount = parseGoBool(field, value);
        break;
      case "mounttargetip":
        if (value.includes(",")) {
          throw invalidArgument(
            field,
            "a list of zone-id:ip pairs is not supported by this driver; give one mount target IP",
          );
        }
        if (isIP(value) === 0) throw invalidArgument(field, `"${value}" is not an IP address`);
        out.mountTargetIp = value;
        break;
      default:
        throw invalidArgument(
          field,
          "unknown key; known: path, encryptInTransit, mounttargetip, crossaccount",
        );
    }
  }
  return out;
}

/** One mount_flags entry may hold several options ("hard,timeo=600"); a quoted value (SELinux context="a,b") is one. */
export function splitFlags(flag: string): string[] {
  const out: string[] = [];
  let current = "";
  let quoted = false;
  for (const c of flag) {
    if (c === '"') quoted = !quoted;
    if (c === "," && !quoted) {
      out.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  out.push(current);
  return out.map((s) => s.trim()).filter((s) => s !== "");
}

function parseOption(text: string, origin: MountOption["origin"]): MountOption {
  const eq = text.indexOf("=");
  const rawKey = (eq < 0 ? text : text.slice(0, eq)).toLowerCase();
  const key = rawKey === "vers" ? "nfsvers" : rawKey;
  const value = eq < 0 ? undefined : text.slice(eq + 1);
  return { key, value, text: value === undefined ? rawKey : `${rawKey}=${value}`, origin };
}
