import { failedPrecondition } from "./errors.ts";
import type { GetPluginCapabilitiesResponse, GetPluginInfoResponse, ProbeResponse } from "./types.ts";

export interface IdentityInfo {
  name: string;
  version: string;
  controller: boolean;
  accessibilityConstraints: boolean;
  probe(): Promise<void>;
}

/** The Identity service: who the plugin is, what it offers, and whether its backend answers. */
export function identityService(info: IdentityInfo) {
  return {
    async GetPluginInfo(): Promise<GetPluginInfoResponse> {
      return { name: info.name, vendor_version: info.version, manifest: {} };
    },

    async GetPluginCapabilities(): Promise<GetPluginCapabilitiesResponse> {
      const types: ("CONTROLLER_SERVICE" | "VOLUME_ACCESSIBILITY_CONSTRAINTS")[] = [];
      if (info.controller) types.push("CONTROLLER_SERVICE");
      if (info.accessibilityConstraints) types.push("VOLUME_ACCESSIBILITY_CONSTRAINTS");
      return { capabilities: types.map((type) => ({ service: { type } })) };
    },

    async Probe(): Promise<ProbeResponse> {
      try {
        await info.probe();
      } catch (err) {
        throw failedPrecondition(`not ready: ${(err as Error).message}`);
      }
      return { ready: { value: true } };
    },
  };
}
