/**
 * The EC2 side of the EBS driver: the AWS SDK's EC2 client (one per API action) behind the Ec2
 * interface. Its own module so that a node-only plugin, which never calls EC2 itself, does not
 * load the SDK: the client is the largest piece of code the driver has.
 */
import { EC2Client } from "@aws-sdk/client-ec2";
import { LearningRateLimiter, type LimiterState } from "../aws/rate-limiter.ts";
import {
  awsClientConfig,
  ClientPerAction,
  instrumentClient,
  isThrottlingError,
  paceThrottledCalls,
} from "../aws/sdk.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { SdkEc2 } from "./ec2.ts";

export interface Ec2ClientOptions {
  region: string;
  endpoint?: string | undefined;
  batching: boolean;
  batchWindowMs: number;
  metrics: Metrics;
  log: Logger;
}

/**
 * The mutating actions the driver sends one per CSI call, paced by a limiter once EC2 throttles
 * them. Describe* calls are not: batching already keeps them few, and the SDK's adaptive mode
 * handles their rare throttles.
 */
const PACED_ACTIONS = new Set([
  "CreateVolume",
  "CopyVolumes",
  "DeleteVolume",
  "AttachVolume",
  "DetachVolume",
  "ModifyVolume",
  "CreateTags",
  "CreateSnapshot",
  "CreateSnapshots",
  "DeleteSnapshot",
  "EnableFastSnapshotRestores",
  "LockSnapshot",
]);

/** EC2's documented refill for mutating actions (bucket of 200, 5 per second), the rate assumed at the first throttle. */
const MUTATING_REFILL_PER_SECOND = 5;

export function createEc2(o: Ec2ClientOptions): {
  ec2: SdkEc2;
  /** What each limiter of a paced action is doing, for logs and metrics. */
  pacing(): LimiterState[];
  close(): void;
} {
  const limiters = new Map<string, LearningRateLimiter>();
  const clients = new ClientPerAction((action) => {
    // CreateSnapshot has no ClientToken: an SDK retry after a lost answer would make a second
    // snapshot. The controller retries throttled creates itself and looks the name up after others;
    // the limiter sends it again only after a throttle answer, which says EC2 did not make it.
    const maxAttempts = action === "CreateSnapshot" || action === "CreateSnapshots" ? 1 : undefined;
    const client = new EC2Client(
      awsClientConfig({ region: o.region, endpoint: o.endpoint, ...(maxAttempts ? { maxAttempts } : {}) }),
    );
    instrumentClient(client, o.metrics, o.log);
    if (PACED_ACTIONS.has(action)) {
      const limiter = new LearningRateLimiter({
        action,
        priorPerSecond: MUTATING_REFILL_PER_SECOND,
        isThrottle: isThrottlingError,
        log: o.log,
      });
      limiters.set(action, limiter);
      paceThrottledCalls(client, { limiterFor: (name) => (name === action ? limiter : undefined) });
    }
    return client;
  });
  const ec2 = new SdkEc2({
    client: (action) => clients.for(action),
    batching: o.batching,
    batchWindowMs: o.batchWindowMs,
    log: o.log,
  });
  return {
    ec2,
    pacing: () => [...limiters.values()].map((l) => l.state()),
    close: () => clients.destroy(),
  };
}
