import { EC2Client } from "@aws-sdk/client-ec2";
import { awsClientConfig, ClientPerAction, instrumentClient } from "../aws/sdk.ts";
import type { Driver, DriverDeps } from "../driver.ts";
import { exposeSelinuxfs } from "../host/selinux.ts";
import { locatePlugin } from "../metadata.ts";
import type { ServiceImpl } from "../server/rpc.ts";
import { EbsController } from "./controller.ts";
import { SdkEc2 } from "./ec2.ts";
import { EbsGroupSnapshots } from "./group-snapshots.ts";

/** Builds the EBS driver for the configured mode: EC2 client, controller and/or node service. */
export async function createEbsDriver({ options, log, metrics }: DriverDeps): Promise<Driver> {
  const serveNode = options.mode !== "controller";
  const { metadata, region } = await locatePlugin(options, log);

  const clients = new ClientPerAction((action) => {
    // CreateSnapshot has no ClientToken: an SDK retry after a lost answer would make a second
    // snapshot. The controller retries throttled creates itself and looks the name up after others.
    const maxAttempts = action === "CreateSnapshot" || action === "CreateSnapshots" ? 1 : undefined;
    const client = new EC2Client(
      awsClientConfig({ region, endpoint: options.awsEndpoint, ...(maxAttempts ? { maxAttempts } : {}) }),
    );
    instrumentClient(client, metrics, log);
    return client;
  });
  const ec2 = new SdkEc2({
    client: (action) => clients.for(action),
    batching: options.batching,
    batchWindowMs: options.batchWindowMs,
    log,
  });

  let controller: ServiceImpl | undefined;
  let groupController: ServiceImpl | undefined;
  if (options.mode !== "node") {
    groupController = new EbsGroupSnapshots(ec2, {
      extraTags: options.extraTags,
      clusterId: options.clusterId,
    });
    controller = new EbsController(ec2, log.child({ service: "controller" }), {
      extraTags: options.extraTags,
      clusterId: options.clusterId,
      unpublishReasons: metrics.unpublishReasons,
    });
  }
  let node: ServiceImpl | undefined;
  if (serveNode && metadata) {
    await exposeSelinuxfs(log);
    const { createEbsNode } = await import("./node.ts");
    node = await createEbsNode({ options, log: log.child({ service: "node" }), metadata, ec2 });
  }

  return {
    controller,
    groupController,
    node,
    accessibilityConstraints: true,
    // A node-only plugin must not depend on EC2: node roles often may not call it, and a failed
    // Probe makes the livenessprobe restart a healthy plugin. Serving calls is its health.
    probe: controller ? () => ec2.probe() : async () => undefined,
    close: async () => clients.destroy(),
  };
}
