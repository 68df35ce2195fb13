import type { Driver, DriverDeps } from "../driver.ts";
import { KubeletDirs } from "../host/paths.ts";
import { exposeSelinuxfs } from "../host/selinux.ts";
import { locatePlugin } from "../metadata.ts";
import type { ServiceImpl } from "../server/rpc.ts";
import { createEfsController } from "./controller.ts";
import { EfsNode } from "./node.ts";
import { createRootDirectoryDeletion } from "./root-directory.ts";
import { createSdkEfs, type SdkEfs } from "./sdk.ts";

/** Builds the EFS driver for the configured mode: EFS client and controller service, node service. */
export async function createEfsDriver({ options, log, metrics }: DriverDeps): Promise<Driver> {
  const serveController = options.mode !== "node";
  const serveNode = options.mode !== "controller";
  const { metadata, region } = await locatePlugin(options, log);

  let efs: SdkEfs | undefined;
  let controller: ServiceImpl | undefined;
  if (serveController) {
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
    nodeEfs = efs ?? createSdkEfs({ region, endpoint: options.awsEndpoint, metrics, log });
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
    probe: async () => efs?.probe(),
    close: async () => {
      await node?.close();
      efs?.close();
      if (nodeEfs !== efs) nodeEfs?.close();
    },
  };
}
