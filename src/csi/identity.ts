import { failedPrecondition } from "./errors.ts";
import type { GetPluginCapabilitiesResponse, GetPluginInfoResponse, ProbeResponse } from "./types.ts";

export interface IdentityInfo {
  name: string;
  version: string;
  controller: boolean;
  /** GROUP_CONTROLLER_SERVICE: volume group snapshots. */
  groupController?: boolean;
  accessibilityConstraints: boolean;
  probe(): Promise<void>;
}

/** A backend that answered this recently is taken as still answering. */
const PROBE_CACHE_MS = 30_000;
/** livenessprobe gives Probe 1 s by default: the backend gets less, so the answer is ours. */
const PROBE_TIMEOUT_MS = 800;

/** The Identity service: who the plugin is, what it offers, and whether its backend answers. */
export function identityService(info: IdentityInfo) {
  let answeredAt = Number.NEGATIVE_INFINITY;
  return {
    async GetPluginInfo(): Promise<GetPluginInfoResponse> {
      return { name: info.name, vendor_version: info.version, manifest: {} };
    },

    async GetPluginCapabilities(): Promise<GetPluginCapabilitiesResponse> {
      const types: (
        | "CONTROLLER_SERVICE"
        | "VOLUME_ACCESSIBILITY_CONSTRAINTS"
        | "GROUP_CONTROLLER_SERVICE"
      )[] = [];
      if (info.controller) types.push("CONTROLLER_SERVICE");
      if (info.groupController) types.push("GROUP_CONTROLLER_SERVICE");
      if (info.accessibilityConstraints) types.push("VOLUME_ACCESSIBILITY_CONSTRAINTS");
      return {
        capabilities: [
          ...types.map((type) => ({ service: { type } })),
          // Both drivers grow a volume while it is published (EBS ModifyVolume, EFS a tag), as the
          // official drivers advertise; the spec asks a plugin that expands to say which kind.
          { volume_expansion: { type: "ONLINE" as const } },
        ],
      };
    },

    async Probe(): Promise<ProbeResponse> {
      if (Date.now() - answeredAt < PROBE_CACHE_MS) return { ready: { value: true } };
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${PROBE_TIMEOUT_MS} ms`)),
          PROBE_TIMEOUT_MS,
        );
      });
      try {
        await Promise.race([info.probe(), timeout]);
        answeredAt = Date.now();
      } catch (err) {
        throw failedPrecondition(`not ready: ${(err as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
      return { ready: { value: true } };
    },
  };
}
