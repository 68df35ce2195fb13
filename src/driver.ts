import type { Options } from "./config.ts";
import type { Logger } from "./log.ts";
import type { PluginLocation } from "./metadata.ts";
import type { Metrics } from "./metrics.ts";
import type { ServiceImpl } from "./server/rpc.ts";

/** What main needs from a driver (EBS or EFS) to serve it. */
export interface Driver {
  controller?: ServiceImpl;
  /** The GroupController service (volume group snapshots), where the driver has one. */
  groupController?: ServiceImpl;
  node?: ServiceImpl;
  /** Plugin capabilities beyond CONTROLLER_SERVICE (added when a controller is served). */
  accessibilityConstraints: boolean;
  /** Resolves when the backend answers; throws a short, human-readable Error when it does not. */
  probe(): Promise<void>;
  /** Builds, while the plugin is idle, what the first calls of a burst would otherwise wait for. */
  prepare?(): void;
  /** Releases timers and connections at shutdown. */
  close(): Promise<void>;
}

export interface DriverDeps {
  options: Options;
  log: Logger;
  metrics: Metrics;
  /** This driver's version (the plugin info's). */
  version?: string;
  /** Where the plugin runs, already being looked up (main starts it before loading the driver's code). */
  location?: Promise<PluginLocation>;
}

/** How long the answer asked for at start-up may stand in for a Probe. */
const EARLY_ANSWER_MS = 5000;

/**
 * A probe whose first answer is asked for now, while the plugin is still starting: the AWS
 * client's first call (credentials, endpoint, connection) then overlaps the start-up, and a
 * Probe in the next EARLY_ANSWER_MS gets that answer (the livenessprobe starts with the plugin).
 * Every other Probe asks anew.
 */
export function firstAnsweredEarly(probe: () => Promise<void>): () => Promise<void> {
  const askedAt = performance.now();
  let early: Promise<void> | undefined = probe();
  early.catch(() => undefined);
  return () => {
    const answer = early && performance.now() - askedAt < EARLY_ANSWER_MS ? early : probe();
    early = undefined;
    return answer;
  };
}
