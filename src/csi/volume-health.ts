/** What NodeGetVolumeHealth of both drivers shares: the reply's shape and the paths a request names. */
import type { HealthIssue } from "../host/health.ts";
import { findMountsAt, type MountEntry } from "../host/mounts.ts";
import { type KubeletDirs, MAX_PATH_BYTES } from "../host/paths.ts";
import { notFound } from "./errors.ts";
import { requireString } from "./validate.ts";

export const volumeHealthReply = (volumeId: string, issues: HealthIssue[]) => ({
  volume_health: { volume_id: volumeId, health_statuses: issues },
});

/**
 * The paths a NodeGetVolumeHealth request names (publish path first, then staging), one at a time,
 * each with what is mounted there now (innermost last). Empty fields are skipped; a path outside
 * the kubelet directory is NOT_FOUND (nothing of ours is mounted there, and nothing there is looked
 * at). Lazy: a caller that finds its answer at the first path never looks at the second.
 */
export async function* requestedMounts(
  req: { volume_publish_path?: string; staging_target_path?: string },
  dirs: KubeletDirs,
  volumeId: string,
): AsyncGenerator<{ field: string; given: string; mounts: MountEntry[] }> {
  for (const [field, value] of [
    ["volume_publish_path", req.volume_publish_path ?? ""],
    ["staging_target_path", req.staging_target_path ?? ""],
  ] as const) {
    if (value === "") continue;
    const given = requireString(value, field, MAX_PATH_BYTES);
    const confined = await dirs.confine(given);
    if (!confined.ok) throw notFound(`${field} ${given}: volume ${volumeId} is not mounted there`);
    yield { field, given, mounts: await findMountsAt(confined.path) };
  }
}
