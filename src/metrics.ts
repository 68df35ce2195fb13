import { createServer, type Server } from "node:http";
import { memoryUsage } from "node:process";

/**
 * Prometheus metrics, in the text exposition format (0.0.4), without a client library: the
 * driver needs counters and histograms with labels, and a library would cost the node plugin,
 * which runs on every node, more memory than everything else it serves /metrics with.
 */

type Labels<L extends string> = Partial<Record<L, string>>;

/** A series as tests and callers read it: its labels and value (histograms: one per sample line). */
export interface Sample {
  metricName: string;
  labels: Record<string, string | number | undefined>;
  value: number;
}

/**
 * Series per metric beyond which new label combinations are counted under one series whose labels
 * all read "_other_": label values come from requests and AWS answers, and a process that runs for
 * months must not grow with them.
 */
export const MAX_SERIES = 500;
const OTHER = "_other_";

abstract class Metric<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  protected readonly series = new Map<string, { labels: Labels<L> }>();

  constructor(o: { name: string; help: string; labelNames: readonly L[] }) {
    this.name = o.name;
    this.help = o.help;
    this.labelNames = o.labelNames;
  }

  abstract readonly type: "counter" | "gauge" | "histogram";
  abstract get(): Promise<{ values: Sample[] }>;
  abstract text(): string;

  /** The series' key, or the overflow series' when the metric is full. */
  protected key(labels: Labels<L>): { key: string; labels: Labels<L> } {
    const key = this.labelNames.map((n) => labels[n] ?? "").join("\u0000");
    if (this.series.has(key) || this.series.size < MAX_SERIES - 1) return { key, labels };
    const other = Object.fromEntries(this.labelNames.map((n) => [n, OTHER])) as Labels<L>;
    return { key: this.labelNames.map(() => OTHER).join("\u0000"), labels: other };
  }

  protected header(): string {
    return `# HELP ${this.name} ${escapeHelp(this.help)}\n# TYPE ${this.name} ${this.type}\n`;
  }
}

export class Counter<L extends string> extends Metric<L> {
  readonly type = "counter";
  protected override readonly series = new Map<string, { labels: Labels<L>; value: number }>();

  inc(labels: Labels<L> = {}, by = 1): void {
    const { key, labels: l } = this.key(labels);
    const s = this.series.get(key);
    if (s) s.value += by;
    else this.series.set(key, { labels: l, value: by });
  }

  async get(): Promise<{ values: Sample[] }> {
    return {
      values: [...this.series.values()].map((s) => ({
        metricName: this.name,
        labels: { ...s.labels },
        value: s.value,
      })),
    };
  }

  text(): string {
    let out = this.header();
    for (const s of this.series.values()) out += `${this.name}${formatLabels(s.labels)} ${s.value}\n`;
    return out;
  }
}

export class Histogram<L extends string> extends Metric<L> {
  readonly type = "histogram";
  readonly buckets: readonly number[];
  protected override readonly series = new Map<
    string,
    { labels: Labels<L>; counts: number[]; sum: number; count: number }
  >();

  constructor(o: { name: string; help: string; labelNames: readonly L[]; buckets: readonly number[] }) {
    super(o);
    this.buckets = [...o.buckets].sort((a, b) => a - b);
  }

  observe(labels: Labels<L>, value: number): void {
    const { key, labels: l } = this.key(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels: l, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    // Non-cumulative counts here; the text output adds them up.
    const i = this.buckets.findIndex((b) => value <= b);
    if (i >= 0) s.counts[i]! += 1;
    s.sum += value;
    s.count += 1;
  }

  /** Starts a clock; the returned function observes the seconds since, and returns them. */
  startTimer(labels: Labels<L>): (more?: Labels<L>) => number {
    const started = performance.now();
    return (more) => {
      const seconds = (performance.now() - started) / 1000;
      this.observe({ ...labels, ...more }, seconds);
      return seconds;
    };
  }

  async get(): Promise<{ values: Sample[] }> {
    const values: Sample[] = [];
    for (const s of this.series.values()) {
      for (const [le, n] of this.cumulative(s.counts, s.count))
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le }, value: n });
      values.push({ metricName: `${this.name}_sum`, labels: { ...s.labels }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...s.labels }, value: s.count });
    }
    return { values };
  }

  text(): string {
    let out = this.header();
    for (const s of this.series.values()) {
      for (const [le, n] of this.cumulative(s.counts, s.count))
        out += `${this.name}_bucket${formatLabels({ ...s.labels, le })} ${n}\n`;
      const labels = formatLabels(s.labels);
      out += `${this.name}_sum${labels} ${s.sum}\n${this.name}_count${labels} ${s.count}\n`;
    }
    return out;
  }

  private cumulative(counts: number[], total: number): [string, number][] {
    let running = 0;
    const out: [string, number][] = this.buckets.map((b, i) => {
      running += counts[i]!;
      return [String(b), running];
    });
    out.push(["+Inf", total]);
    return out;
  }
}

/**
 * A counter or gauge whose series are read from their owner at each scrape, for figures another
 * part of the driver keeps anyway (the EFS TLS relays' connections and bytes).
 */
export class Collected<L extends string> extends Metric<L> {
  readonly type: "counter" | "gauge";
  readonly #collect: () => { labels: Labels<L>; value: number }[];

  constructor(o: {
    name: string;
    help: string;
    type: "counter" | "gauge";
    labelNames: readonly L[];
    collect: () => { labels: Labels<L>; value: number }[];
  }) {
    super(o);
    this.type = o.type;
    this.#collect = o.collect;
  }

  async get(): Promise<{ values: Sample[] }> {
    return {
      values: this.#collect().map((s) => ({
        metricName: this.name,
        labels: { ...s.labels },
        value: s.value,
      })),
    };
  }

  text(): string {
    let out = this.header();
    for (const s of this.#collect().slice(0, MAX_SERIES))
      out += `${this.name}${formatLabels(s.labels)} ${s.value}\n`;
    return out;
  }
}

export class Registry {
  readonly contentType = "text/plain; version=0.0.4; charset=utf-8";
  readonly #metrics = new Map<string, Metric<string>>();
  #processMetrics = false;

  register<M extends Metric<string>>(metric: M): M {
    if (this.#metrics.has(metric.name)) throw new Error(`metric ${metric.name} is registered twice`);
    this.#metrics.set(metric.name, metric);
    return metric;
  }

  /** Adds the process's CPU, memory and start time, and V8's heap, read at each scrape. */
  collectProcessMetrics(): void {
    this.#processMetrics = true;
  }

  async metrics(): Promise<string> {
    let out = "";
    for (const m of this.#metrics.values()) out += m.text();
    if (this.#processMetrics) out += processMetricsText();
    return out;
  }

  async getSingleMetricAsString(name: string): Promise<string> {
    return this.#metrics.get(name)?.text() ?? "";
  }
}

const START_TIME_SECONDS = Math.round(Date.now() / 1000 - process.uptime());

/** The process_* and nodejs_* figures Prometheus clients conventionally export. */
function processMetricsText(): string {
  const cpu = process.cpuUsage();
  const mem = memoryUsage();
  const gauge = (name: string, help: string, value: number, type = "gauge") =>
    `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${value}\n`;
  return (
    gauge("process_cpu_user_seconds_total", "User CPU time spent in seconds.", cpu.user / 1e6, "counter") +
    gauge(
      "process_cpu_system_seconds_total",
      "System CPU time spent in seconds.",
      cpu.system / 1e6,
      "counter",
    ) +
    gauge(
      "process_cpu_seconds_total",
      "User and system CPU time spent in seconds.",
      (cpu.user + cpu.system) / 1e6,
      "counter",
    ) +
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.", mem.rss) +
    gauge(
      "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.",
      START_TIME_SECONDS,
    ) +
    gauge("nodejs_heap_size_total_bytes", "Process heap size from Node.js in bytes.", mem.heapTotal) +
    gauge("nodejs_heap_size_used_bytes", "Process heap size used from Node.js in bytes.", mem.heapUsed) +
    gauge("nodejs_external_memory_bytes", "Node.js external memory size in bytes.", mem.external)
  );
}

function formatLabels(labels: Record<string, string | number | undefined>): string {
  const parts = Object.entries(labels)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}="${escapeLabel(String(v))}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const escapeHelp = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");

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
  if (withProcessMetrics) registry.collectProcessMetrics();
  return {
    registry,
    rpcDuration: registry.register(
      new Histogram({
        name: "csi_rpc_duration_seconds",
        help: "CSI calls served, by method and gRPC status code",
        labelNames: ["method", "code"],
        buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 15, 60, 120],
      }),
    ),
    awsDuration: registry.register(
      new Histogram({
        name: `${prefix}_api_request_duration_seconds`,
        help: "AWS API calls, including their retries",
        labelNames: ["request"],
        buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      }),
    ),
    awsErrors: registry.register(
      new Counter({
        name: `${prefix}_api_request_errors_total`,
        help: "AWS API calls that failed after their retries, by error code",
        labelNames: ["request", "error"],
      }),
    ),
    awsThrottles: registry.register(
      new Counter({
        name: `${prefix}_api_request_throttles_total`,
        help: "AWS API attempts answered with a throttling error",
        labelNames: ["request"],
      }),
    ),
    awsAttempts: registry.register(
      new Counter({
        name: `${prefix}_api_request_attempts_total`,
        help: "HTTP requests sent to AWS, retries included",
        labelNames: ["request"],
      }),
    ),
    unpublishReasons: registry.register(
      new Counter({
        name: "csi_controller_unpublish_reason_total",
        help: "ControllerUnpublishVolume calls, by the reason the CO gave",
        labelNames: ["reason"],
      }),
    ),
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
