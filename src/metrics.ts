import { createServer, type Server } from "node:http";
import { Counter, collectDefaultMetrics, Histogram, Registry } from "prom-client";

/** The process's metrics, in a registry of its own (no global state, so tests can make many). */
export interface Metrics {
  registry: Registry;
  rpcDuration: Histogram<"method" | "code">;
  awsDuration: Histogram<"request">;
  awsErrors: Counter<"request" | "error">;
  awsThrottles: Counter<"request">;
  awsAttempts: Counter<"request">;
  /** ControllerUnpublishVolume calls by the CO's reason (CSI 1.14; UNKNOWN when none given). */
  unpublishReasons: Counter<"reason">;
}

/** prefix: `aws_ebs_csi` or `aws_efs_csi`; the AWS metric names are the official EBS driver's. */
export function createMetrics(prefix: string, withProcessMetrics = false): Metrics {
  const registry = new Registry();
  if (withProcessMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    rpcDuration: new Histogram({
      name: "csi_rpc_duration_seconds",
      help: "CSI calls served, by method and gRPC status code",
      labelNames: ["method", "code"],
      buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 15, 60, 120],
      registers,
    }),
    awsDuration: new Histogram({
      name: `${prefix}_api_request_duration_seconds`,
      help: "AWS API calls, including their retries",
      labelNames: ["request"],
      buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    awsErrors: new Counter({
      name: `${prefix}_api_request_errors_total`,
      help: "AWS API calls that failed after their retries, by error code",
      labelNames: ["request", "error"],
      registers,
    }),
    awsThrottles: new Counter({
      name: `${prefix}_api_request_throttles_total`,
      help: "AWS API attempts answered with a throttling error",
      labelNames: ["request"],
      registers,
    }),
    awsAttempts: new Counter({
      name: `${prefix}_api_request_attempts_total`,
      help: "HTTP requests sent to AWS, retries included",
      labelNames: ["request"],
      registers,
    }),
    unpublishReasons: new Counter({
      name: "csi_controller_unpublish_reason_total",
      help: "ControllerUnpublishVolume calls, by the reason the CO gave",
      labelNames: ["reason"],
      registers,
    }),
  };
}

export async function serveMetrics(metrics: Metrics, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end("not found: try /metrics\n");
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  return server;
}
