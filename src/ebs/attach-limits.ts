import { entryBeside, run } from "../host/exec.ts";
import type { InstanceTypeEbsInfo } from "./cloud.ts";

/**
 * How long the node waits for DescribeInstanceTypes before using the built-in table; a lookup in a
 * process of its own is killed then too.
 */
export const INSTANCE_TYPE_LOOKUP_MS = 5000;

/**
 * EBS attachment limits by instance family, for when DescribeInstanceTypes cannot be asked (the
 * node role often has no EC2 permissions). Source: the EC2 user guide's "Amazon EBS volume limits
 * for Amazon EC2 instances": Xen families take up to 39 EBS volumes besides the root, Nitro types
 * share 28 attachments between EBS volumes, network interfaces and NVMe instance store. Newer types
 * with larger, dedicated limits are left to DescribeInstanceTypes: a fallback that under-reports is
 * safe (the scheduler places fewer volumes), one that over-reports makes attaches fail.
 */
const XEN_FAMILIES = new Set([
  "c1",
  "c3",
  "c4",
  "d2",
  "g2",
  "g3",
  "h1",
  "i2",
  "i3",
  "m1",
  "m2",
  "m3",
  "m4",
  "p2",
  "p3",
  "r3",
  "r4",
  "t1",
  "t2",
  "x1",
  "x1e",
]);
export const NITRO_SHARED_LIMIT = 28;
export const XEN_LIMIT = 39;

export function attachLimitFromTable(instanceType: string): InstanceTypeEbsInfo {
  const family = instanceType.split(".")[0] ?? "";
  if (XEN_FAMILIES.has(family)) return { maxAttachments: XEN_LIMIT, limitType: "dedicated" };
  return { maxAttachments: NITRO_SHARED_LIMIT, limitType: "shared" };
}

/**
 * Volumes this driver may attach: the type's limit, less the attachments it cannot use (network
 * interfaces when the limit is shared, and the root and other launch volumes), never below 1.
 */
export function volumesPerNode(
  info: InstanceTypeEbsInfo,
  used: { networkInterfaces: number; reservedVolumes: number },
): number {
  const interfaces = info.limitType === "dedicated" ? 0 : used.networkInterfaces;
  return Math.max(1, info.maxAttachments - interfaces - used.reservedVolumes);
}

/**
 * Asks EC2 for an instance type's limit from a short-lived process of its own
 * (describe-instance-type.ts beside this module, compiled or not), killed after `timeoutMs`.
 * Resolves undefined when EC2 does not know the type; rejects with EC2's or the process's reason
 * (a CommandError with the child's stderr).
 */
export async function describeInstanceTypeInChild(
  instanceType: string,
  o: { region: string; endpoint?: string | undefined; timeoutMs: number },
): Promise<InstanceTypeEbsInfo | undefined> {
  const script = entryBeside(import.meta.url, "describe-instance-type");
  const { stdout } = await run(process.execPath, [script, instanceType, o.region, o.endpoint ?? ""], {
    timeoutMs: o.timeoutMs,
  });
  let info: Partial<InstanceTypeEbsInfo>;
  try {
    info = JSON.parse(stdout) as Partial<InstanceTypeEbsInfo>;
  } catch {
    throw new Error(`unexpected answer: ${stdout.slice(0, 200)}`);
  }
  return info.maxAttachments === undefined ? undefined : (info as InstanceTypeEbsInfo);
}
