/**
 * The EC2 side of the EBS driver: the AWS SDK's EC2 client (one per API action) behind the Ec2
 * interface. Its own module so that a node-only plugin, which never calls EC2 itself, does not
 * load the SDK: the client is the largest piece of code the driver has.
 */
import { EC2Client } from "@aws-sdk/client-ec2";
import { BucketSize } from "../aws/rate-limiter.ts";
import {
  type AwsClientOptions,
  awsClientConfig,
  ClientPerAction,
  instrumentClient,
  mutationLimiter,
  paceThrottledCalls,
  sharedConnections,
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

/**
 * The actions of every volume's life. A client is made at its action's first call, and the first
 * call of a burst (a provisioner's 100 workers at once) waits for it: made in the controller's first
 * idle moment instead (prepare), each adds about 40 KiB to its heap.
 */
const VOLUME_ACTIONS = ["CreateVolume", "DescribeVolumes", "AttachVolume", "DetachVolume", "DeleteVolume"];

export function createEc2(o: Ec2ClientOptions): { ec2: SdkEc2; prepare(): void; close(): void } {
  // EC2 meters each of these actions with its own bucket, all of the size documented for mutating
  // actions: what one of them shows of the size, the others use (src/aws/rate-limiter.ts).
  const bucketSize = new BucketSize();
  const connections = sharedConnections();
  // One credential source for all the clients, as the official driver has one for its one config:
  // the first client's default chain, whose credentials the SDK caches and renews. Each client with
  // a chain of its own fetched credentials itself before its first call and at every renewal: with
  // IRSA, one STS AssumeRoleWithWebIdentity per API action; with EKS Pod Identity, one request to
  // its agent per action.
  let credentials: AwsClientOptions["credentials"];
  const clients = new ClientPerAction((action) => {
    // CreateSnapshot has no ClientToken: an SDK retry after a lost answer would make a second
    // snapshot. The controller retries throttled creates itself and looks the name up after others;
    // the limiter sends it again only after a throttle answer, which says EC2 did not make it.
    const maxAttempts = action === "CreateSnapshot" || action === "CreateSnapshots" ? 1 : undefined;
    const client = new EC2Client(
      awsClientConfig({
        region: o.region,
        endpoint: o.endpoint,
        connections,
        credentials,
        ...(maxAttempts ? { maxAttempts } : {}),
      }),
    );
    credentials ??= client.config.credentials;
    instrumentClient(client, o.metrics, o.log);
    if (PACED_ACTIONS.has(action)) {
      const limiter = mutationLimiter(action, o.log, bucketSize);
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
    prepare: () => clients.prepare(VOLUME_ACTIONS),
    close: () => clients.destroy(),
  };
}
