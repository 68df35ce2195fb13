import path from "node:path";
import { parseArgs } from "node:util";

export type DriverKind = "ebs" | "efs";
export type Mode = "controller" | "node" | "all";

/** Every setting of the process, validated. Built once in main and handed down. */
export interface Options {
  driver: DriverKind;
  mode: Mode;
  /** Unix socket path (without the unix:// scheme). */
  socketPath: string;
  driverName: string;
  /** host:port for /metrics, or undefined when off. */
  httpEndpoint: { host: string; port: number } | undefined;
  logLevel: "trace" | "debug" | "info" | "warn" | "error" | "silent";
  region: string | undefined;
  awsEndpoint: string | undefined;
  extraTags: Record<string, string>;
  clusterId: string | undefined;
  batching: boolean;
  batchWindowMs: number;
  volumeAttachLimit: number | undefined;
  reservedVolumeAttachments: number | undefined;
  nodeId: string | undefined;
  zone: string | undefined;
  instanceType: string | undefined;
  kubeNodeName: string | undefined;
  deviceDir: string;
  /** The kubelet's root directories (realpath not yet taken): the node touches nothing outside them. */
  kubeletDirs: string[];
  shutdownTimeoutMs: number;
  deleteAccessPointRootDir: boolean;
  efsUsageRefreshMs: number;
  efsCapacityCacheMs: number;
  /** PEM of a CA trusted besides Amazon's roots for EFS mount targets (tests). */
  efsTlsCaFile: string | undefined;
  /** amazon-efs-utils' mount helper, used when it exists; undefined: never (the driver's own relay). */
  efsMountHelper: string | undefined;
}

interface FlagSpec {
  type: "string" | "boolean";
  env?: string;
  default?: string;
  help: string;
}

/** The flags, their environment variables and defaults: `--help` prints this table. */
export const FLAGS: Record<string, FlagSpec> = {
  driver: { type: "string", help: "which driver to serve: ebs or efs (required)" },
  mode: { type: "string", default: "all", help: "services to serve: controller, node or all" },
  endpoint: {
    type: "string",
    env: "CSI_ENDPOINT",
    default: "unix:///csi/csi.sock",
    help: "CSI endpoint, a unix socket",
  },
  "driver-name": { type: "string", help: "plugin name (default ebs.csi.aws.com or efs.csi.aws.com)" },
  "http-endpoint": { type: "string", help: "host:port for Prometheus /metrics (default off)" },
  "log-level": { type: "string", default: "info", help: "trace, debug, info, warn, error or silent" },
  region: { type: "string", env: "AWS_REGION", help: "AWS region (default: from instance metadata)" },
  "aws-endpoint": { type: "string", env: "AWS_ENDPOINT_URL", help: "AWS API endpoint, for a fake AWS" },
  "extra-tags": {
    type: "string",
    default: "",
    help: "tags for every created resource: key=value,key2=value2",
  },
  "k8s-tag-cluster-id": { type: "string", help: "cluster id: adds kubernetes.io/cluster/<id>=owned" },
  batching: { type: "string", default: "true", help: "merge concurrent Describe* calls into one request" },
  "batch-window-ms": {
    type: "string",
    default: "20",
    help: "how long a batch collects ids before it is sent",
  },
  "volume-attach-limit": {
    type: "string",
    default: "-1",
    help: "EBS volumes per node (-1: from instance type)",
  },
  "reserved-volume-attachments": {
    type: "string",
    default: "-1",
    help: "attachments held by non-CSI volumes (-1: counted from metadata)",
  },
  "node-id": { type: "string", help: "instance id, used when metadata and Kubernetes give none" },
  zone: { type: "string", help: "availability zone, used when metadata and Kubernetes give none" },
  "instance-type": { type: "string", help: "instance type, used when metadata and Kubernetes give none" },
  "kube-node-name": { type: "string", env: "CSI_NODE_NAME", help: "Kubernetes Node to read metadata from" },
  "device-dir": { type: "string", default: "/dev/disk/by-id", help: "where EBS device links appear" },
  "kubelet-dir": {
    type: "string",
    default: "/var/lib/kubelet",
    help: "the kubelet's root directory; the node plugin mounts and deletes nothing outside it (a comma-separated list for several)",
  },
  "shutdown-timeout": { type: "string", default: "30", help: "seconds in-flight calls get after SIGTERM" },
  "delete-access-point-root-dir": {
    type: "boolean",
    help: "EFS: delete an access point's root directory with the volume",
  },
  "efs-usage-refresh-seconds": {
    type: "string",
    default: "300",
    help: "EFS: how often the node walks a volume to measure its used bytes and inodes",
  },
  "efs-capacity-cache-seconds": {
    type: "string",
    default: "300",
    help: "EFS: how long the node keeps an access point's capacity (the stats total)",
  },
  "efs-mount-helper": {
    type: "string",
    default: "/sbin/mount.efs",
    help: "EFS: amazon-efs-utils' mount helper; where it exists volumes are mounted with mount -t efs, else through this driver's own TLS relay (none: always the relay)",
  },
  "efs-tls-ca-file": {
    type: "string",
    help: "EFS: a PEM file of a CA trusted besides Amazon's roots for mount targets' TLS (for a test's mount target; never needed on AWS)",
  },
  version: { type: "boolean", help: "print the version and exit" },
  help: { type: "boolean", help: "print this help and exit" },
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export function helpText(version: string): string {
  const rows = Object.entries(FLAGS).map(([name, f]) => {
    const value = f.type === "string" ? " VALUE" : "";
    const extras = [f.default ? `default ${f.default}` : "", f.env ? `env ${f.env}` : ""].filter(Boolean);
    return `  --${name}${value}`.padEnd(38) + f.help + (extras.length ? ` [${extras.join("; ")}]` : "");
  });
  return [
    `aws-storage-csi ${version}: CSI driver for Amazon EBS (ebs.csi.aws.com) and EFS (efs.csi.aws.com)`,
    "",
    "usage: aws-storage-csi --driver ebs|efs [--mode controller|node|all] [--endpoint unix:///csi/csi.sock]",
    "",
    ...rows,
    "",
    "AWS credentials come from the AWS SDK's default chain: IRSA or EKS Pod Identity, static keys",
    "[env AWS_ACCESS_KEY_ID; env AWS_SECRET_ACCESS_KEY; env AWS_SESSION_TOKEN], then instance",
    "metadata [env AWS_EC2_METADATA_SERVICE_ENDPOINT; env AWS_EC2_METADATA_DISABLED].",
  ].join("\n");
}

export type ParsedCommand = { kind: "help" } | { kind: "version" } | { kind: "serve"; options: Options };

export function parseCommandLine(argv: string[], env: NodeJS.ProcessEnv): ParsedCommand {
  let values: Record<string, string | boolean | undefined>;
  try {
    const parsed = parseArgs({
      args: argv,
      options: Object.fromEntries(Object.entries(FLAGS).map(([k, f]) => [k, { type: f.type }])),
      strict: true,
      allowPositionals: false,
    });
    values = parsed.values;
  } catch (err) {
    throw new ConfigError((err as Error).message.split("\n")[0] ?? String(err));
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };

  const str = (name: string): string | undefined => {
    const v = values[name];
    if (typeof v === "string") return v;
    const spec = FLAGS[name]!;
    const fromEnv = spec.env ? env[spec.env] : undefined;
    return fromEnv !== undefined && fromEnv !== "" ? fromEnv : spec.default;
  };

  const driver = str("driver");
  if (driver === undefined) throw new ConfigError("--driver is required: ebs or efs");
  if (driver !== "ebs" && driver !== "efs")
    throw new ConfigError(`--driver must be ebs or efs, not "${driver}"`);
  const mode = str("mode");
  if (mode !== "controller" && mode !== "node" && mode !== "all") {
    throw new ConfigError(`--mode must be controller, node or all, not "${mode}"`);
  }
  const logLevel = str("log-level");
  if (!["trace", "debug", "info", "warn", "error", "silent"].includes(logLevel ?? "")) {
    throw new ConfigError(`--log-level must be trace, debug, info, warn, error or silent, not "${logLevel}"`);
  }

  return {
    kind: "serve",
    options: {
      driver,
      mode,
      socketPath: parseEndpoint(str("endpoint")!),
      driverName: parseDriverName(str("driver-name") ?? `${driver}.csi.aws.com`),
      httpEndpoint: parseHostPort("--http-endpoint", str("http-endpoint")),
      logLevel: logLevel as Options["logLevel"],
      region: str("region") || env.AWS_DEFAULT_REGION || undefined,
      awsEndpoint: str("aws-endpoint") || undefined,
      extraTags: parseTags("--extra-tags", str("extra-tags") ?? ""),
      clusterId: str("k8s-tag-cluster-id") || undefined,
      batching: parseBool("--batching", str("batching")!),
      batchWindowMs: parseInteger("--batch-window-ms", str("batch-window-ms")!, 0, 5000),
      volumeAttachLimit: optionalCount("--volume-attach-limit", str("volume-attach-limit")!),
      reservedVolumeAttachments: optionalCount(
        "--reserved-volume-attachments",
        str("reserved-volume-attachments")!,
      ),
      nodeId: str("node-id") || undefined,
      zone: str("zone") || undefined,
      instanceType: str("instance-type") || undefined,
      kubeNodeName: str("kube-node-name") || undefined,
      deviceDir: str("device-dir")!,
      kubeletDirs: parseKubeletDirs(str("kubelet-dir")!),
      shutdownTimeoutMs: parseInteger("--shutdown-timeout", str("shutdown-timeout")!, 0, 3600) * 1000,
      deleteAccessPointRootDir: values["delete-access-point-root-dir"] === true,
      efsUsageRefreshMs:
        parseInteger("--efs-usage-refresh-seconds", str("efs-usage-refresh-seconds")!, 1, 86_400) * 1000,
      efsCapacityCacheMs:
        parseInteger("--efs-capacity-cache-seconds", str("efs-capacity-cache-seconds")!, 0, 86_400) * 1000,
      efsTlsCaFile: str("efs-tls-ca-file") || undefined,
      efsMountHelper: parseMountHelper(str("efs-mount-helper")!),
    },
  };
}

function parseMountHelper(value: string): string | undefined {
  if (value === "none") return undefined;
  if (!value.startsWith("/"))
    throw new ConfigError(`--efs-mount-helper must be an absolute path or none, not "${value}"`);
  return value;
}

export function parseEndpoint(endpoint: string): string {
  // unix:///abs/path or unix:/abs/path; unix://name/... would make "name" a host, which a socket has not.
  const match = /^unix:\/\/(\/[^/].*)$/.exec(endpoint) ?? /^unix:(\/[^/].*)$/.exec(endpoint);
  if (!match) throw new ConfigError(`--endpoint must be unix:///absolute/path.sock, not "${endpoint}"`);
  return match[1]!;
}

function parseDriverName(name: string): string {
  if (name.length > 63 || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name)) {
    throw new ConfigError(`--driver-name must be a domain name of at most 63 characters, not "${name}"`);
  }
  return name;
}

function parseHostPort(flag: string, value: string | undefined): Options["httpEndpoint"] {
  if (!value) return undefined;
  const match = /^(.*):(\d+)$/.exec(value);
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port > 65535) throw new ConfigError(`${flag} must be host:port or :port, not "${value}"`);
  return { host: match[1] || "0.0.0.0", port };
}

export function parseTags(flag: string, value: string): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const item of value.split(",").map((s) => s.trim())) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    const key = eq < 0 ? "" : item.slice(0, eq).trim();
    if (key === "") throw new ConfigError(`${flag} takes key=value pairs separated by commas, not "${item}"`);
    tags[key] = item.slice(eq + 1).trim();
  }
  return tags;
}

function parseKubeletDirs(value: string): string[] {
  const dirs = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (dirs.length === 0) throw new ConfigError("--kubelet-dir must name at least one directory");
  for (const dir of dirs) {
    if (!dir.startsWith("/") || dir === "/" || path.posix.normalize(dir).replace(/\/$/, "") !== dir) {
      throw new ConfigError(`--kubelet-dir: "${dir}" must be an absolute, normalized path other than "/"`);
    }
  }
  return dirs;
}

function parseBool(flag: string, value: string): boolean {
  if (value === "true" || value === "1") return true;
  if (value === "false" || value === "0") return false;
  throw new ConfigError(`${flag} must be true or false, not "${value}"`);
}

function parseInteger(flag: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(`${flag} must be a whole number from ${min} to ${max}, not "${value}"`);
  }
  return n;
}

function optionalCount(flag: string, value: string): number | undefined {
  if (value === "-1") return undefined;
  return parseInteger(flag, value, 0, 1000);
}
