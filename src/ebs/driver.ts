import { type Driver, type DriverDeps, firstAnsweredEarly } from "../driver.ts";
import { exposeSelinuxfs } from "../host/selinux.ts";
import { locatePlugin } from "../metadata.ts";
import type { ServiceImpl } from "../server/rpc.ts";
import { describeInstanceTypeInChild, INSTANCE_TYPE_LOOKUP_MS } from "./attach-limits.ts";
import type { Ec2 } from "./cloud.ts";

/**
 * Builds the EBS driver for the configured mode. The EC2 client and the controller are loaded only
 * when a controller is served: a node-only plugin runs on every node and never calls EC2 itself
 * (its one question, the instance type's attachment limit, is asked by a short-lived process).
 */
export async function createEbsDriver({ options, log, metrics, location }: DriverDeps): Promise<Driver> {
  const serveNode = options.mode !== "controller";
  const { metadata, region } = await (location ?? locatePlugin(options, log));

  let ec2Client: { ec2: Ec2; prepare(): void; close(): void } | undefined;
  let controller: ServiceImpl | undefined;
  let groupController: ServiceImpl | undefined;
  if (options.mode !== "node") {
    const [{ createEc2 }, { EbsController }, { EbsGroupSnapshots }] = await Promise.all([
      import("./ec2-client.ts"),
      import("./controller.ts"),
      import("./group-snapshots.ts"),
    ]);
    const client = createEc2({
      region,
      endpoint: options.awsEndpoint,
      batching: options.batching,
      batchWindowMs: options.batchWindowMs,
      metrics,
      log,
    });
    ec2Client = client;
    groupController = new EbsGroupSnapshots(client.ec2, {
      extraTags: options.extraTags,
      clusterId: options.clusterId,
    });
    controller = new EbsController(client.ec2, log.child({ service: "controller" }), {
      extraTags: options.extraTags,
      clusterId: options.clusterId,
      unpublishReasons: metrics.unpublishReasons,
    });
  }
  let node: ServiceImpl | undefined;
  if (serveNode && metadata) {
    await exposeSelinuxfs(log);
    const { createEbsNode } = await import("./node.ts");
    const inProcess = ec2Client?.ec2;
    node = await createEbsNode({
      options,
      log: log.child({ service: "node" }),
      metadata,
      describeInstanceType: inProcess
        ? (type) => inProcess.getInstanceTypeEbsInfo(type)
        : (type) =>
            describeInstanceTypeInChild(type, {
              region,
              endpoint: options.awsEndpoint,
              timeoutMs: INSTANCE_TYPE_LOOKUP_MS,
            }),
    });
  }

  const probeEc2 = ec2Client?.ec2;
  return {
    controller,
    groupController,
    node,
    accessibilityConstraints: true,
    // A node-only plugin must not depend on EC2: node roles often may not call it, and a failed
    // Probe makes the livenessprobe restart a healthy plugin. Serving calls is its health.
    probe: probeEc2 ? firstAnsweredEarly(() => probeEc2.probe()) : async () => undefined,
    prepare: () => ec2Client?.prepare(),
    close: async () => ec2Client?.close(),
  };
}
