/**
 * What every AWS SDK client of the driver shares (EC2 and EFS): one retry policy, one set of
 * timeouts, and metrics plus logs for each call and each attempt; the clients of one service, one
 * pool of connections (sharedConnections) and, when given one, one credential source.
 */
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import type {
  AwsCredentialIdentityProvider,
  DeserializeHandler,
  DeserializeHandlerArguments,
  FinalizeHandler,
  FinalizeHandlerArguments,
  HandlerExecutionContext,
  InitializeHandler,
  InitializeHandlerArguments,
  MetadataBearer,
  MiddlewareStack,
} from "@smithy/types";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { type BucketSize, LearningRateLimiter } from "./rate-limiter.ts";

export interface AwsClientOptions {
  region: string | undefined;
  /** A fake AWS (moto) instead of the real endpoints. */
  endpoint?: string | undefined;
  maxAttempts?: number | undefined;
  /** Connections shared with the service's other clients (sharedConnections); each client's own otherwise. */
  connections?: SharedConnections | undefined;
  /**
   * Where credentials come from: another client's, to share what it fetched (src/ebs/ec2-client.ts).
   * Unset, the client makes the SDK's default chain of its own (environment, web identity, EKS Pod
   * Identity, instance metadata), which fetches and caches credentials for it alone.
   */
  credentials?: AwsCredentialIdentityProvider | undefined;
}

/** Keep-alive connection pools to be shared by the clients of one service (sharedConnections). */
export interface SharedConnections {
  httpAgent: HttpAgent;
  httpsAgent: HttpsAgent;
}

/**
 * Connections open at most in a shared pool. The SDK gives each client 50, so that a burst of the
 * sidecars (the external-provisioner alone has 100 workers) waited for sockets; this is above what
 * all sidecars together send at once, and still a bound.
 */
const SHARED_MAX_SOCKETS = 200;

/**
 * One keep-alive pool for all clients of a service: the EC2 clients, one per action, talk to the
 * same endpoint. Each with its own pool, an action's first burst opened new connections, each a TLS
 * handshake with AWS, while those of the other actions sat idle: after 100 CreateVolume calls, the
 * last of 100 DeleteVolume requests left at 162 ms instead of 107 (npm run bench's delete phase,
 * six rounds). Any one client's destroy() closes the pool for all: ClientPerAction destroys them
 * together.
 */
export function sharedConnections(): SharedConnections {
  const options = { keepAlive: true, maxSockets: SHARED_MAX_SOCKETS };
  return { httpAgent: new HttpAgent(options), httpsAgent: new HttpsAgent(options) };
}

/**
 * Attempts per call, the first included. In this SDK a throttled attempt backs off for a random
 * time up to 1 s * 2^n (capped at 20 s): 5 attempts wait at most 15 s, 7.5 s on average, well
 * inside the sidecars' 60 s timeout; 8 would wait up to 71 s, after the sidecar gave up and sent
 * the call again. Sustained throttling is the adaptive rate limiter's job, and its waits before
 * sending do not count as attempts.
 */
export const DEFAULT_MAX_ATTEMPTS = 5;

/**
 * The SDK's default is no timeout at all, so one dead connection would hang a CSI call forever.
 * No separate connection timeout: the SDK starts it before the request waits for a free socket,
 * so under load (100 concurrent calls, 50 sockets) it fails calls that were merely queued. The
 * request timeout counts that wait too; 30 s of queue takes thousands of calls in flight.
 */
const REQUEST_TIMEOUT_MS = 30_000;

export function awsClientConfig(o: AwsClientOptions) {
  if (!o.region) {
    throw new Error("AWS region unknown: set --region or AWS_REGION (instance metadata did not provide one)");
  }
  const maxAttempts = o.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
    throw new Error(`AWS maxAttempts must be a positive integer, not ${maxAttempts}`);
  }
  return {
    region: o.region,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    // Adaptive = standard retries plus a client-side rate limiter that slows down after throttles.
    retryMode: "adaptive" as const,
    maxAttempts,
    requestHandler: {
      requestTimeout: REQUEST_TIMEOUT_MS,
      // A timeout becomes a retryable TimeoutError instead of a warning on the console.
      throwOnRequestTimeout: true,
      ...(o.connections ?? {}),
    },
  };
}

/** Error codes AWS services use for "slow down" (EC2: RequestLimitExceeded; EFS: ThrottlingException). */
const THROTTLING_CODES = new Set([
  "RequestLimitExceeded",
  "Throttling",
  "ThrottlingException",
  "ThrottledException",
  "TooManyRequestsException",
  "RequestThrottled",
  "RequestThrottledException",
  "EC2ThrottledException",
  "SlowDown",
  "PriorRequestNotComplete",
  "BandwidthLimitExceeded",
]);

interface AwsErrorFields {
  name?: unknown;
  code?: unknown;
  Code?: unknown;
  $metadata?: { httpStatusCode?: number; requestId?: string; attempts?: number };
}

const fields = (err: unknown): AwsErrorFields =>
  err !== null && typeof err === "object" ? (err as AwsErrorFields) : {};

/**
 * The AWS error code (`InvalidVolume.NotFound`), or the Node.js network code (`ECONNREFUSED`)
 * when the request never got an answer.
 */
export function awsErrorCode(err: unknown): string {
  const e = fields(err);
  for (const candidate of [e.Code, e.name, e.code]) {
    if (typeof candidate === "string" && candidate !== "" && candidate !== "Error") return candidate;
  }
  return "Unknown";
}

export const awsRequestId = (err: unknown): string | undefined => fields(err).$metadata?.requestId;

export const awsHttpStatus = (err: unknown): number | undefined => fields(err).$metadata?.httpStatusCode;

/** Node.js codes and SDK timeouts of a request that never got an answer. */
const TRANSIENT_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "TimeoutError",
  "RequestTimeout",
]);

/** A failure that says nothing about the request: no answer, or a 5xx. A later try may succeed. */
export function isTransientError(err: unknown): boolean {
  return TRANSIENT_CODES.has(awsErrorCode(err)) || (awsHttpStatus(err) ?? 0) >= 500;
}

export function isThrottlingError(err: unknown): boolean {
  return awsHttpStatus(err) === 429 || THROTTLING_CODES.has(awsErrorCode(err));
}

/** "DescribeVolumesCommand" -> "DescribeVolumes", the label the official driver's metrics use. */
const requestName = (context: HandlerExecutionContext): string =>
  (context.commandName ?? "Unknown").replace(/Command$/, "");

// The stack's type parameters differ per client; the middleware below only passes values through.
// biome-ignore lint/suspicious/noExplicitAny: any client's stack
type AnyStack = MiddlewareStack<any, MetadataBearer>;

/**
 * The SDK's own call logging. With no logger configured it still builds a record of every call,
 * passing the input and output through the operation's sensitive-field filter, for a logger that
 * drops it: 5-8% of the CPU of an SDK CreateVolume or DeleteVolume call (the controller's V8
 * flags, 100 at a time against a local server). The driver logs its calls itself (below).
 */
const SDK_LOGGER_MIDDLEWARE = "loggerMiddleware";

/**
 * Adds metrics and logs to an SDK client, in place of the SDK's own logging (removed). Two
 * middlewares: one outside the retry loop (duration of the whole call, final errors) and one inside
 * it, after the response is parsed (every attempt, throttles). Only names, codes and request ids
 * are logged, never request or response bodies.
 */
export function instrumentClient(client: { middlewareStack: AnyStack }, metrics: Metrics, log: Logger): void {
  client.middlewareStack.remove(SDK_LOGGER_MIDDLEWARE);
  client.middlewareStack.add(
    (next: InitializeHandler<object, MetadataBearer>, context: HandlerExecutionContext) =>
      async (args: InitializeHandlerArguments<object>) => {
        const request = requestName(context);
        const stopTimer = metrics.awsDuration.startTimer({ request });
        try {
          return await next(args);
        } catch (err) {
          const error = awsErrorCode(err);
          metrics.awsErrors.inc({ request, error });
          log.warn(
            { request, error, requestId: awsRequestId(err), attempts: fields(err).$metadata?.attempts },
            `AWS ${request} failed: ${error}`,
          );
          throw err;
        } finally {
          stopTimer();
        }
      },
    { step: "initialize", priority: "high", name: "csiCallMetrics", override: true },
  );

  // The deserialize step runs once per attempt, inside the retry middleware (finalizeRequest step);
  // high priority puts it outside the deserializer, so a failed attempt arrives as a typed AWS error.
  client.middlewareStack.add(
    (next: DeserializeHandler<object, MetadataBearer>, context: HandlerExecutionContext) =>
      async (args: DeserializeHandlerArguments<object>) => {
        const request = requestName(context);
        metrics.awsAttempts.inc({ request });
        try {
          return await next(args);
        } catch (err) {
          const throttled = isThrottlingError(err);
          if (throttled) metrics.awsThrottles.inc({ request });
          log.debug(
            { request, error: awsErrorCode(err), requestId: awsRequestId(err), throttled },
            `AWS ${request} attempt failed`,
          );
          throw err;
        }
      },
    { step: "deserialize", priority: "high", name: "csiAttemptMetrics", override: true },
  );
}

/**
 * EC2's documented refill for mutating actions (a bucket of 200, 5 per second): the rate a limiter
 * assumes at an action's first throttle. EFS documents none and starts from the same; both learn.
 */
export const MUTATING_REFILL_PER_SECOND = 5;

/** The pacing limiter of one mutating action (src/aws/rate-limiter.ts), for paceThrottledCalls. */
export function mutationLimiter(action: string, log: Logger, bucketSize?: BucketSize): LearningRateLimiter {
  return new LearningRateLimiter({
    action,
    priorPerSecond: MUTATING_REFILL_PER_SECOND,
    isThrottle: isThrottlingError,
    log,
    bucketSize,
  });
}

export interface PacingOptions {
  /** The limiter of an action ("CreateVolume"), or undefined for actions sent as they come. */
  limiterFor: (action: string) => LearningRateLimiter | undefined;
  /** The caller's signal when the command was sent without one: a waiting call leaves the line when it aborts. */
  signal?: () => AbortSignal | undefined;
}

/**
 * Puts each attempt of the client's limited actions through their limiter (src/aws/rate-limiter.ts).
 * Inside the SDK's retry loop, right after it: a throttled attempt is sent again by the limiter and
 * never reaches the retry strategy, so it spends none of its retry quota and attempts; everything
 * else (5xx, lost answers, throttles of actions without a limiter) is still the SDK's to retry.
 */
export function paceThrottledCalls(client: { middlewareStack: AnyStack }, o: PacingOptions): void {
  client.middlewareStack.addRelativeTo(
    (next: FinalizeHandler<object, MetadataBearer>, context: HandlerExecutionContext) =>
      async (args: FinalizeHandlerArguments<object>) => {
        const limiter = o.limiterFor(requestName(context));
        if (!limiter) return next(args);
        // Where the SDK keeps send()'s options (SMITHY_CONTEXT_KEY of @smithy/types, a type-only dependency here).
        const signal = context.__smithy_context?.["abortSignal"] as AbortSignal | undefined;
        return limiter.run(() => next(args), signal ?? o.signal?.());
      },
    { relation: "after", toMiddleware: "retryMiddleware", name: "csiPacing", override: true },
  );
}

/**
 * One SDK client per API action, made on first use. Each has its own adaptive rate limiter (and
 * the paced actions their own pacing limiter, see paceThrottledCalls), as the official driver
 * keeps one retryer per API: throttled DescribeVolumes calls must not slow down AttachVolume.
 */
export class ClientPerAction<C extends { destroy(): void }> {
  readonly #make: (action: string) => C;
  readonly #clients = new Map<string, C>();

  constructor(make: (action: string) => C) {
    this.#make = make;
  }

  for(action: string): C {
    let client = this.#clients.get(action);
    if (!client) {
      client = this.#make(action);
      this.#clients.set(action, client);
    }
    return client;
  }

  /** Makes the clients of these actions now, those not made yet: their first calls then find them. */
  prepare(actions: readonly string[]): void {
    for (const action of actions) this.for(action);
  }

  destroy(): void {
    for (const client of this.#clients.values()) client.destroy();
    this.#clients.clear();
  }
}
