import { type Driver, type DriverDeps, firstAnsweredEarly } from "../driver.ts";
import { KubeletDirs } from "../host/paths.ts";
import { exposeSelinuxfs } from "../host/selinux.ts";
import { locatePlugin } from "../metadata.ts";
import type { ServiceImpl } from "../server/rpc.ts";
import type { EfsNode } from "./node.ts";
import type { SdkEfs, SdkEfsOptions } from "./sdk.ts";

/**
 * Builds the EFS driver for the configured mode: EFS client and controller service, node service.
 * Only what the mode serves is loaded; a node-only plugin loads the EFS client at its first use.
 */
export async function createEfsDriver({ options, log, metrics, location }: DriverDeps): Promise<Driver> {
  const serveController = options.mode !== "node";
  const serveNode = options.mode !== "controller";
  const { metadata, region } = await (location ?? locatePlugin(options, log));

  let efs: SdkEfs | undefined;
  let controller: ServiceImpl | undefined;
  if (serveController) {
    const [{ createSdkEfs }, { createEfsController }, { createRootDirectoryDeletion }] = await Promise.all([
      import("./sdk.ts"),
      import("./controller.ts"),
      import("./root-directory.ts"),
    ]);
    efs = createSdkEfs({ region, endpoint: options.awsEndpoint, metrics, log });
    const controllerLog = log.child({ service: "controller" });
    controller = createEfsController({
      efs,
      log: controllerLog,
      extraTags: options.extraTags,
      deleteAccessPointRootDir: options.deleteAccessPointRootDir,
      ...(options.deleteAccessPointRootDir
        ? { deleteRootDirectory: createRootDirectoryDeletion({ region, log: controllerLog }) }
        : {}),
    });
  }
  let node: EfsNode | undefined;
  let nodeEfs: SdkEfs | undefined;
  if (serveNode && metadata) {
    // The node reads access points' capacity tags for volume stats (DescribeAccessPoints only). It
    // works without: stats then report statfs's total. So it has no AWS probe: AWS being
    // unreachable must not make a node plugin unready.
    await exposeSelinuxfs(log);
    nodeEfs = efs ?? loadedOnFirstUse({ region, endpoint: options.awsEndpoint, metrics, log });
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
    });
  }

  return {
    controller,
    node,
    accessibilityConstraints: false,
    probe: efs ? firstAnsweredEarly(() => efs.probe()) : async () => undefined,
    close: async () => {
      await node?.close();
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
    createAccessPoint: async (input) => (await load()).createAccessPoint(input),
    deleteAccessPoint: async (id) => (await load()).deleteAccessPoint(id),
    tagResource: async (id, tags) => (await load()).tagResource(id, tags),
    probe: async () => (await load()).probe(),
    close: () => void client?.then((c) => c.close()),
  };
}
