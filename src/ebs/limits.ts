/**
 * What EC2 allows for each EBS volume type: the one table that parameter validation (params.ts)
 * and the README follow. Sources, checked 2026:
 * - sizes, IOPS ranges, gp3 throughput range: EC2 API reference for CreateVolume / ModifyVolume
 *   (AWS SDK for JavaScript @aws-sdk/client-ec2 3.1169.0 model docs), which carry the 2025 gp3 limits
 *   (64 TiB, 80,000 IOPS, 2,000 MiB/s);
 * - IOPS per GiB: Amazon EBS User Guide, "Provisioned IOPS SSD volumes" (io2 1,000:1, io1 50:1) and
 *   "General Purpose SSD volumes" (gp3 500:1, 0.25 MiB/s of throughput per provisioned IOPS);
 * - default size 100 GiB: the official EBS CSI driver's DefaultVolumeSize (raised to the type minimum).
 */
import type { VolumeType } from "./cloud.ts";

export { GiB } from "../csi/validate.ts";

export const DEFAULT_VOLUME_TYPE: VolumeType = "gp3";

export interface IopsLimits {
  readonly min: number;
  readonly max: number;
  readonly maxPerGiB: number;
  /** What EC2 provisions when the request names no IOPS; undefined when the request must name them. */
  readonly default: number | undefined;
}

export interface ThroughputLimits {
  /** MiB/s. */
  readonly min: number;
  readonly max: number;
  readonly default: number;
  /** Provisioned throughput may be at most this many MiB/s per provisioned IOPS. */
  readonly maxPerIops: number;
}

export interface VolumeTypeLimits {
  readonly type: VolumeType;
  readonly label: string;
  readonly minSizeGiB: number;
  readonly maxSizeGiB: number;
  /** Size used when the request names none. */
  readonly defaultSizeGiB: number;
  /** Present when IOPS may be provisioned for the type. */
  readonly iops: IopsLimits | undefined;
  /** Present when throughput may be provisioned for the type. */
  readonly throughput: ThroughputLimits | undefined;
  /** Whether EC2 Multi-Attach can be enabled on the type. */
  readonly multiAttach: boolean;
}

/** Volume types in the order documentation lists them. */
export const VOLUME_TYPES: readonly VolumeType[] = ["gp3", "gp2", "io2", "io1", "st1", "sc1", "standard"];

export const VOLUME_LIMITS: Readonly<Record<VolumeType, VolumeTypeLimits>> = {
  gp3: {
    type: "gp3",
    label: "General Purpose SSD",
    minSizeGiB: 1,
    maxSizeGiB: 65_536,
    defaultSizeGiB: 100,
    iops: { min: 3_000, max: 80_000, maxPerGiB: 500, default: 3_000 },
    throughput: { min: 125, max: 2_000, default: 125, maxPerIops: 0.25 },
    multiAttach: false,
  },
  gp2: {
    type: "gp2",
    label: "General Purpose SSD (previous generation)",
    minSizeGiB: 1,
    maxSizeGiB: 16_384,
    defaultSizeGiB: 100,
    iops: undefined,
    throughput: undefined,
    multiAttach: false,
  },
  io2: {
    type: "io2",
    label: "Provisioned IOPS SSD (Block Express)",
    minSizeGiB: 4,
    maxSizeGiB: 65_536,
    defaultSizeGiB: 100,
    iops: { min: 100, max: 256_000, maxPerGiB: 1_000, default: undefined },
    throughput: undefined,
    multiAttach: true,
  },
  io1: {
    type: "io1",
    label: "Provisioned IOPS SSD (previous generation)",
    minSizeGiB: 4,
    maxSizeGiB: 16_384,
    defaultSizeGiB: 100,
    iops: { min: 100, max: 64_000, maxPerGiB: 50, default: undefined },
    throughput: undefined,
    multiAttach: true,
  },
  st1: {
    type: "st1",
    label: "Throughput Optimized HDD",
    minSizeGiB: 125,
    maxSizeGiB: 16_384,
    defaultSizeGiB: 125,
    iops: undefined,
    throughput: undefined,
    multiAttach: false,
  },
  sc1: {
    type: "sc1",
    label: "Cold HDD",
    minSizeGiB: 125,
    maxSizeGiB: 16_384,
    defaultSizeGiB: 125,
    iops: undefined,
    throughput: undefined,
    multiAttach: false,
  },
  standard: {
    type: "standard",
    label: "Magnetic (previous generation)",
    minSizeGiB: 1,
    maxSizeGiB: 1_024,
    defaultSizeGiB: 100,
    iops: undefined,
    throughput: undefined,
    multiAttach: false,
  },
};

export const isVolumeType = (value: string): value is VolumeType => Object.hasOwn(VOLUME_LIMITS, value);

/** 65536 -> "65,536", the same in every locale. */
export const formatNumber = (n: number): string => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");

const range = (min: number, max: number): string => `${formatNumber(min)} – ${formatNumber(max)}`;

function iopsCell(iops: IopsLimits | undefined): string {
  if (!iops) return "not settable";
  const rule = iops.default === undefined ? "required" : `default ${formatNumber(iops.default)}`;
  return `${range(iops.min, iops.max)} (${rule})`;
}

function throughputCell(throughput: ThroughputLimits | undefined): string {
  if (!throughput) return "not settable";
  return (
    `${range(throughput.min, throughput.max)} (default ${formatNumber(throughput.default)}, ` +
    `at most ${throughput.maxPerIops} per provisioned IOPS)`
  );
}

/** The table as Markdown, for the README. */
export function renderLimitsMarkdown(): string {
  const header = [
    "| Type | Size (GiB) | Default size (GiB) | IOPS | Max IOPS per GiB | Throughput (MiB/s) | Multi-Attach |",
    "|---|---|---|---|---|---|---|",
  ];
  const rows = VOLUME_TYPES.map((type) => {
    const l = VOLUME_LIMITS[type];
    return (
      `| \`${type}\` ${l.label} | ${range(l.minSizeGiB, l.maxSizeGiB)} | ${formatNumber(l.defaultSizeGiB)} | ` +
      `${iopsCell(l.iops)} | ${l.iops ? formatNumber(l.iops.maxPerGiB) : "–"} | ${throughputCell(l.throughput)} | ` +
      `${l.multiAttach ? "yes" : "no"} |`
    );
  });
  return `${[...header, ...rows].join("\n")}\n`;
}
