import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { ConfigError } from "../config.ts";
import { type Driver, type DriverDeps, firstAnsweredEarly } from "../driver.ts";
import { KubeletDirs } from "../host/paths.ts";
import { exposeSelinuxfs } from "../host/selinux.ts";
import { locatePlugin } from "../metadata.ts";
import { Collected, type Metrics } from "../metrics.ts";
import type { ServiceImpl } from "../server/rpc.ts";
import type { EfsNode } from "./node.ts";
import type { SdkEfs, SdkEfsOptions } from "./sdk.ts";
import type { TlsFileSystemTotals, TlsMounts } from "./tls/tls-mounts.ts";

/**
 * Builds the EFS driver for the configured mode: EFS client and controller service, node service.
 * Only what the mode serves is loaded; a node-only plugin loads the EFS client at its first use.
 */
export async function createEfsDriver({
  options,
  log,
  metrics,
  location,
  version,
}: DriverDeps): Promise<Driver> {
  const serveController = options.mode !== "node";
  const serveNode = options.mode !== "controller";
  const { metadata, region } = await (location ?? locatePlugin(options, log));

  // The node's EFS client reads access points' capacity tags for volume stats and finds mount
  // targets for TLS, both only when needed: it is loaded on first use, and a node plugin has no AWS
  // probe (AWS being unreachable must not make it unready).
  const efs: SdkEfs | undefined = serveController
    ? (await import("./sdk.ts")).createSdkEfs({ region, endpoint: options.awsEndpoint, metrics, log })
    : undefined;
  const nodeEfs =
    serveNode && metadata
      ? (efs ?? loadedOnFirstUse({ region, endpoint: options.awsEndpoint, metrics, log }))
      : undefined;
  const client = efs ?? nodeEfs;
  // Mounts without amazon-efs-utils go through the relays (the node's, and the controller's
  // temporary mount that deletes an access point's root directory).
  const needsRelays = nodeEfs !== undefined || (client !== undefined && options.deleteAccessPointRootDir);
  let tlsMounts: TlsMounts | undefined;
  if (needsRelays && client) {
    const { TlsMounts } = await import("./tls/tls-mounts.ts");
    tlsMounts = new TlsMounts({
      region,
      zone: metadata?.zone,
      log: log.child({ service: "tls-relay" }),
      efs: client,
      credentials: () => client.credentials(),
      extraCa: options.efsTlsCaFile ? await readCaFile(options.efsTlsCaFile) : undefined,
      version: version ?? "unknown",
    });
    registerRelayMetrics(metrics, tlsMounts);
  }

  let controller: ServiceImpl | undefined;
  if (efs) {
    const [{ createEfsController }, { createRootDirectoryDeletion }] = await Promise.all([
      import("./controller.ts"),
      import("./root-directory.ts"),
    ]);
    const controllerLog = log.child({ service: "controller" });
    controller = createEfsController({
      efs,
      log: controllerLog,
      extraTags: options.extraTags,
      deleteAccessPointRootDir: options.deleteAccessPointRootDir,
      ...(options.deleteAccessPointRootDir
        ? {
            deleteRootDirectory: createRootDirectoryDeletion({
              region,
              log: controllerLog,
              efsHelperPath: options.efsMountHelper,
              tlsMounts,
            }),
          }
        : {}),
    });
  }
  let node: EfsNode | undefined;
  if (nodeEfs && metadata) {
    await exposeSelinuxfs(log);
    const { EfsNode } = await import("./node.ts");
    node = new EfsNode({
      instanceId: metadata.instanceId,
      zone: metadata.zone,
      region,
      kubeletDirs: await KubeletDirs.open(options.kubeletDirs),
      log: log.child({ service: "node" }),
      efs: nodeEfs,
      capacityTtlMs: options.efsCapacityCacheMs,
      usageRefreshMs: options.efsUsageRefreshMs,
      tlsMounts,
      efsHelperPath: options.efsMountHelper,
    });
    const recovered = await node.recoverTlsMounts(options.driverName);
    if (recovered > 0) log.info({ recovered }, "TLS relays serve the mounts of the previous run again");
  }

  return {
    controller,
    node,
    accessibilityConstraints: false,
    probe: efs ? firstAnsweredEarly(() => efs.probe()) : async () => undefined,
    close: async () => {
      await node?.close();
      await tlsMounts?.closeAll();
      efs?.close();
      if (nodeEfs !== efs) nodeEfs?.close();
    },
  };
}

/**
 * An EFS client whose SDK code is loaded by its first call. The node asks EFS only for access
 * points' capacity tags, for volume stats: a node that serves no EFS volume never loads it.
 */
function loadedOnFirstUse(o: SdkEfsOptions): SdkEfs {
  let client: Promise<SdkEfs> | undefined;
  const load = () => {
    client ??= import("./sdk.ts").then(({ createSdkEfs }) => createSdkEfs(o));
    return client;
  };
  return {
    describeFileSystem: async (id) => (await load()).describeFileSystem(id),
    describeMountTargets: async (id) => (await load()).describeMountTargets(id),
    listAccessPoints: async (id) => (await load()).listAccessPoints(id),
    describeAccessPoint: async (id) => (await load()).describeAccessPoint(id),
    credentials: async () => (await load()).credentials(),
    createAccessPoint: async (input) => (await load()).createAccessPoint(input),
    deleteAccessPoint: async (id) => (await load()).deleteAccessPoint(id),
    tagResource: async (id, tags) => (await load()).tagResource(id, tags),
    probe: async () => (await load()).probe(),
    close: () => void client?.then((c) => c.close()),
  };
}

/** The test-only extra CA: a readable PEM certificate, or the plugin does not start. */
async function readCaFile(path: string): Promise<string> {
  const pem = await readFile(path, "utf8").catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError(`--efs-tls-ca-file ${path}: ${err.code ?? err.message}`);
  });
  try {
    new X509Certificate(pem);
  } catch {
    throw new ConfigError(`--efs-tls-ca-file ${path}: not a PEM certificate`);
  }
  return pem;
}

/** The relays' figures per file system, read from the relays at each scrape. */
function registerRelayMetrics(metrics: Metrics, tlsMounts: TlsMounts): void {
  const register = (
    name: string,
    help: string,
    type: "counter" | "gauge",
    series: (t: TlsFileSystemTotals) => { labels?: Record<string, string>; value: number }[],
  ) =>
    metrics.registry.register(
      new Collected<string>({
        name: `aws_efs_csi_tls_relay_${name}`,
        help,
        type,
        labelNames: ["file_system", "direction"],
        collect: () =>
          tlsMounts.totals().flatMap((t) =>
            series(t).map((s) => ({
              labels: { file_system: t.fileSystemId, ...s.labels },
              value: s.value,
            })),
          ),
      }),
    );
  register("mounts", "TLS mounts served by a relay of this node plugin", "gauge", (t) => [
    { value: t.relays },
  ]);
  register(
    "connections_total",
    "Connections of the NFS client through the relays: one per mount, then one per reconnect",
    "counter",
    (t) => [{ value: t.connections }],
  );
  register(
    "bytes_total",
    "Bytes relayed, to the mount target (to_server) and back (from_server)",
    "counter",
    (t) => [
      { labels: { direction: "to_server" }, value: t.bytesIn },
      { labels: { direction: "from_server" }, value: t.bytesOut },
    ],
  );
  register(
    "refused_total",
    "Connections that never reached the mount target (unreachable, TLS refused, certificate checks failed)",
    "counter",
    (t) => [{ value: t.failures }],
  );
}
