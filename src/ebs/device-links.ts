/**
 * The udev links EC2's NVMe EBS volumes get in /dev/disk/by-id, and what they say about the node
 * as a whole (NodeGetStorageHealth): links that lead nowhere, one device claimed by two volumes,
 * no attachment slot left.
 */
import { readdir, readFile, realpath, stat } from "node:fs/promises";
import { basename, join } from "node:path";

export const NVME_LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_";

/** The by-id link name of a volume's disk (its partitions add "-partN"). */
export const linkName = (volumeId: string) => `${NVME_LINK_PREFIX}${volumeId.replace("-", "")}`;

export interface DeviceLink {
  volumeId: string;
  /** The link's name in the device directory. */
  name: string;
  /** The block device it resolves to; undefined when it leads nowhere or to an empty device. */
  device: string | undefined;
}

/** Every EBS volume link in deviceDir (disks and partitions), resolved. */
export async function listDeviceLinks(deviceDir: string): Promise<DeviceLink[]> {
  const entries = await readdir(deviceDir).catch(() => [] as string[]);
  const links: DeviceLink[] = [];
  for (const name of entries) {
    if (!name.startsWith(`${NVME_LINK_PREFIX}vol`)) continue;
    const volumeId = `vol-${name.slice(NVME_LINK_PREFIX.length + 3).split("-")[0]}`;
    const target = await realpath(join(deviceDir, name)).catch(() => undefined);
    links.push({ volumeId, name, device: target && (await isDisk(target)) ? target : undefined });
  }
  return links;
}

/** A block device with sectors behind it (a detached loop device or a dead namespace shows size 0). */
async function isDisk(device: string): Promise<boolean> {
  if (!(await stat(device).catch(() => undefined))?.isBlockDevice()) return false;
  const sectors = await readFile(`/sys/class/block/${basename(device)}/size`, "utf8").catch(() => undefined);
  return sectors === undefined || Number(sectors.trim()) > 0;
}

/** One node-wide condition, as CSI's StorageBackendHealth states it (no volume_capability: all are affected). */
export interface StorageIssue {
  status: "STORAGE_DEGRADED" | "STORAGE_UNREACHABLE";
  reason: string;
  message: string;
}

/**
 * What the links say about the node's EBS attachments. Each finding is STORAGE_DEGRADED: volumes
 * still work, but a stale link or a doubly claimed device makes NodeStage refuse (or, without the
 * driver's checks, risk) the wrong disk, and a full node can take no further volume.
 */
export function attachmentIssues(links: DeviceLink[], maxVolumesPerNode: number): StorageIssue[] {
  const issues: StorageIssue[] = [];
  const dangling = links.filter((l) => l.device === undefined).map((l) => l.name);
  if (dangling.length > 0) {
    issues.push({
      status: "STORAGE_DEGRADED",
      reason: "DanglingDeviceLink",
      message: `${dangling.length} EBS by-id link(s) lead to no disk (a detach udev has not caught up with?): ${dangling.sort().join(", ")}`,
    });
  }
  const owners = new Map<string, Set<string>>();
  for (const { device, volumeId } of links) {
    if (device) owners.set(device, (owners.get(device) ?? new Set()).add(volumeId));
  }
  const shared = [...owners].filter(([, volumes]) => volumes.size > 1);
  if (shared.length > 0) {
    issues.push({
      status: "STORAGE_DEGRADED",
      reason: "ConflictingDeviceLinks",
      message: `block devices claimed by more than one volume's link: ${shared
        .map(([device, volumes]) => `${device} (${[...volumes].sort().join(", ")})`)
        .join("; ")}`,
    });
  }
  // Disks, not links: a partition has its own link, a device two links claim is one attachment.
  const attached = new Set(
    links
      .filter((l) => !/-part\d+$/.test(l.name))
      .map((l) => l.device)
      .filter(Boolean),
  ).size;
  if (maxVolumesPerNode > 0 && attached >= maxVolumesPerNode) {
    issues.push({
      status: "STORAGE_DEGRADED",
      reason: "AttachmentSlotsExhausted",
      message: `${attached} EBS volumes are attached and this node takes ${maxVolumesPerNode}: no further volume can be attached`,
    });
  }
  return issues;
}
