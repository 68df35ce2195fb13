// The driver's command line, loaded by src/main.ts once the V8 flags of the mode are set.
// First: sizes the thread pool before anything uses it.
import "./thread-pool.ts";
import { readFileSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { ConfigError, helpText, type Options, parseCommandLine } from "./config.ts";
import type { Driver, DriverDeps } from "./driver.ts";
import { createLogger } from "./log.ts";
import { locatePlugin } from "./metadata.ts";
import { createMetrics, serveMetrics } from "./metrics.ts";
import { applyV8FlagsAfterStartup, v8FlagsFor } from "./v8-flags.ts";

/** Set by scripts/build.ts in the bundle; read from package.json when the sources run as they are. */
declare const BUILD_VERSION: string | undefined;
const VERSION: string =
  typeof BUILD_VERSION === "string"
    ? BUILD_VERSION
    : JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")).version;

async function createDriver(deps: DriverDeps): Promise<Driver> {
  if (deps.options.driver === "ebs") {
    const { createEbsDriver } = await import("./ebs/driver.ts");
    return createEbsDriver(deps);
  }
  const { createEfsDriver } = await import("./efs/driver.ts");
  return createEfsDriver(deps);
}

/** A full garbage collection of the memory-reducing kind: a plain gc() keeps V8's pool of freed pages. */
const FULL_COLLECTION = { type: "major", execution: "sync", flavor: "last-resort" } as const;

/** Start-up is over by then: the first calls (kubelet's registration) have been answered. */
const STARTUP_GC_DELAY_MS = 500;

/**
 * One full garbage collection once the plugin serves. Start-up leaves garbage behind (module
 * sources, the descriptor, metadata answers) that V8 keeps until its heap grows, which an idle
 * node plugin's heap never does: about 2.5 MiB of resident memory on every node. The collector is
 * reached through vm because Node exposes it only with --expose-gc.
 */
function collectStartupGarbage(): void {
  const gc = (globalThis as { gc?: (o: object) => void }).gc ?? exposeGc();
  // The bytecode of functions that only start-up ran (module bodies, option checks, the first AWS
  // questions) goes too: old after this one collection instead of V8's six. A function that runs
  // again is compiled again from its source: the first CreateVolume against moto took about 25 ms
  // longer, and an idle controller kept about 1 MiB less.
  setFlagsFromString("--bytecode-old-age=1");
  gc(FULL_COLLECTION);
  setFlagsFromString(`--bytecode-old-age=${V8_BYTECODE_OLD_AGE}`);
}

/** V8's default (node --v8-options): collections a function's bytecode survives unused. */
const V8_BYTECODE_OLD_AGE = 6;

function exposeGc(): (o: object) => void {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as (o: object) => void;
}

async function serve(options: Options): Promise<void> {
  // node's own command-line flags (the image's ENTRYPOINT gives none), then the V8 flags this
  // mode sets itself.
  const v8Flags = [...process.execArgv, ...v8FlagsFor(options.mode)];
  const log = createLogger(options.logLevel);
  const metrics = createMetrics(`aws_${options.driver}_csi`, true);
  log.info(
    {
      version: VERSION,
      driver: options.driverName,
      mode: options.mode,
      ...(v8Flags.length ? { v8Flags } : {}),
    },
    "starting",
  );

  // Instance metadata is asked first, and the code that serves (HTTP/2, the CSI messages, the
  // driver) loads while it answers: a node plugin's start-up waits for the longer of the two.
  const location = locatePlugin(options, log);
  location.catch(() => undefined);
  const serving = Promise.all([
    import("./server/server.ts"),
    import("./server/inflight.ts"),
    import("./csi/identity.ts"),
    import("./csi/proto.ts"),
  ]);
  serving.then(
    ([, , , proto]) => setImmediate(proto.prepareCsiMessages),
    () => undefined,
  );
  const driver = await createDriver({ options, log, metrics, version: VERSION, location });
  const [{ serveCsi }, { InflightKeys }, { identityService }, proto] = await serving;
  const identity = identityService({
    name: options.driverName,
    version: VERSION,
    controller: driver.controller !== undefined,
    groupController: driver.groupController !== undefined,
    accessibilityConstraints: driver.accessibilityConstraints,
    probe: () => driver.probe(),
  });
  const rt = { log, metrics, inflight: new InflightKeys() };
  const server = await serveCsi(options.socketPath, { identity, ...driver }, rt);
  const http = options.httpEndpoint
    ? await serveMetrics(metrics, options.httpEndpoint.host, options.httpEndpoint.port)
    : undefined;
  if (http) {
    // The port bound, which port 0 leaves to the kernel.
    const address = http.address();
    const port = typeof address === "object" && address ? address.port : options.httpEndpoint?.port;
    log.info({ endpoint: { host: options.httpEndpoint?.host, port } }, "serving /metrics");
  }
  setTimeout(() => {
    // What the first calls of a controller's burst would each build and all wait for, built while
    // nothing waits: the collection below takes what building it left behind. Only a head start:
    // should it fail, the calls build what they need themselves.
    try {
      if (driver.controller) proto.prepareControllerMessages();
      driver.prepare?.();
    } catch (err) {
      log.warn({ err }, "could not prepare for the first calls; they will build what they need");
    }
    applyV8FlagsAfterStartup(options.mode);
    collectStartupGarbage();
  }, STARTUP_GC_DELAY_MS).unref();

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, timeoutMs: options.shutdownTimeoutMs }, "stopping: finishing in-flight calls");
    await server.shutdown(options.shutdownTimeoutMs);
    http?.close();
    await driver.close();
    log.info("stopped");
    process.exit(0);
  };
  const onSignal = (signal: string) =>
    stop(signal).catch((err: unknown) => {
      log.error({ err }, "shutdown failed");
      process.exit(1);
    });
  process.on("SIGTERM", () => void onSignal("SIGTERM"));
  // Memory tests compare RSS after a full collection: started with --expose-gc, SIGUSR2 runs one.
  const gc = (globalThis as { gc?: (o: object) => void }).gc;
  if (gc) process.on("SIGUSR2", () => gc(FULL_COLLECTION));
  process.on("SIGINT", () => void onSignal("SIGINT"));
}

async function main(argv: string[]): Promise<void> {
  const command = parseCommandLine(argv, process.env);
  if (command.kind === "help") {
    process.stdout.write(`${helpText(VERSION)}\n`);
    return;
  }
  if (command.kind === "version") {
    process.stdout.write(`aws-storage-csi ${VERSION}\n`);
    return;
  }
  await serve(command.options);
}

/** Runs the command line; a start-up failure is one clear line and exit code 2, no stack trace. */
export function run(argv: string[]): void {
  main(argv).catch((err: unknown) => {
    // Start-up failures are configuration or environment problems.
    const message = err instanceof ConfigError || err instanceof Error ? err.message : String(err);
    process.stderr.write(`aws-storage-csi: ${message}\n`);
    process.exit(2);
  });
}
