/**
 * Run by a node-only EBS plugin as a short-lived process of its own: asks EC2 for one instance
 * type's EBS attachment limit and prints it as JSON on stdout ({} when EC2 does not know the type).
 * The node plugin needs this once, at start-up; a separate process keeps the EC2 client's code and
 * memory out of the long-running plugin.
 *
 *   describe-instance-type <instance-type> <region> [endpoint]
 */
import { createLogger } from "../log.ts";
import { createMetrics } from "../metrics.ts";
import { createEc2 } from "./ec2-client.ts";

const [instanceType, region, endpoint] = process.argv.slice(2);
if (!instanceType || !region) {
  process.stderr.write("usage: describe-instance-type <instance-type> <region> [endpoint]\n");
  process.exit(2);
}
const { ec2, close } = createEc2({
  region,
  endpoint: endpoint || undefined,
  batching: false,
  batchWindowMs: 0,
  metrics: createMetrics("aws_ebs_csi"),
  log: createLogger("silent"),
});
try {
  const info = await ec2.getInstanceTypeEbsInfo(instanceType);
  process.stdout.write(`${JSON.stringify(info ?? {})}\n`);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exitCode = 1;
} finally {
  close();
}
