import type { Options } from "./config.ts";
import type { Logger } from "./log.ts";
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
  /** Releases timers and connections at shutdown. */
  close(): Promise<void>;
}

export interface DriverDeps {
  options: Options;
  log: Logger;
  metrics: Metrics;
}
