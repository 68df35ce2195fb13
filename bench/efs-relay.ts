/**
 * node bench/efs-relay.ts: throughput of the EFS TLS relay against the same relay carrying plain
 * TCP (startRelay with net.connect in place of tls.connect), 100 MiB over one connection per round,
 * 3 rounds alternating. The load generator and the sinks run in a worker thread, so that the main
 * thread does only what the node plugin would: relay. Target: TLS at least 0.8x plain TCP. Each
 * round also sends the bytes over TLS from the source straight to the sink, with no relay: the
 * ceiling Node's TLS sets on this machine, whatever the relay does.
 *
 *   BENCH_MIB=100 BENCH_ROUNDS=3 node bench/efs-relay.ts
 */
import { createCipheriv, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer as createTcpServer, connect as netConnect, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer, connect as tlsConnect } from "node:tls";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { efsClientCertificate, efsClientKey } from "../src/efs/tls/client-certificate.ts";
import { type Relay, type RelayLogger, startRelay, startTlsRelay } from "../src/efs/tls/relay.ts";
import { run } from "../src/host/exec.ts";

const NAME = "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com";
const MiB = 1024 * 1024;
const CHUNK = Buffer.alloc(MiB, 0xa5);

interface Pem {
  cert: string;
  key: string;
}

/** Worker → main: the sinks' ports, then one figure per round. */
type WorkerMessage = { tlsPort: number; tcpPort: number } | { ms: number };

async function main(): Promise<void> {
  const mib = Number(process.env.BENCH_MIB ?? 100);
  const rounds = Math.max(3, Number(process.env.BENCH_ROUNDS ?? 3));
  const dir = await mkdtemp(join(tmpdir(), "efs-relay-bench-"));
  try {
    const server = await selfSignedServerCertificate(dir);
    const worker = new Worker(new URL(import.meta.url), { workerData: server });
    const messages = messagesOf(worker);
    const sinks = (await messages.next()) as { tlsPort: number; tcpPort: number };
    const identity = clientCertificate();
    const tls = await startTlsRelay({
      target: { host: "127.0.0.1", port: sinks.tlsPort },
      serverName: NAME,
      ca: server.cert,
      identity: () => identity,
      log: quietLog,
    });
    const tcp = await startRelay({
      dial: () => ({ socket: netConnect({ host: "127.0.0.1", port: sinks.tcpPort }), ready: "connect" }),
      upstream: `127.0.0.1:${sinks.tcpPort}`,
      log: quietLog,
    });
    console.log(`EFS TLS relay: ${mib} MiB per round over one connection, ${rounds} rounds alternating.\n`);
    const figures = { tls: [] as number[], tcp: [] as number[], direct: [] as number[] };
    /** The relay thread's busy time per round: what relaying the bytes cost it. */
    const busyMs = { tls: [] as number[], tcp: [] as number[] };
    for (let round = 0; round < rounds; round++) {
      const order: ["tls" | "tcp", Relay][] =
        round % 2 === 0
          ? [
              ["tls", tls],
              ["tcp", tcp],
            ]
          : [
              ["tcp", tcp],
              ["tls", tls],
            ];
      // The ceiling: the same bytes over TLS with no relay, this thread encrypting (as the relay
      // does) straight to the sink, which decrypts in the worker as for the relay.
      const kinds: ["tls" | "tcp" | "direct", Relay | undefined][] = [...order, ["direct", undefined]];
      for (const [kind, relay] of kinds) {
        const busyBefore = performance.eventLoopUtilization();
        worker.postMessage({ port: relay?.port, bytes: mib * MiB, kind });
        let direct: import("node:tls").TLSSocket | undefined;
        if (kind === "direct") {
          direct = tlsConnect({
            host: "127.0.0.1",
            port: sinks.tlsPort,
            servername: NAME,
            ca: server.cert,
            ...identity,
          });
          await push(direct, mib * MiB);
        }
        const { ms } = (await messages.next()) as { ms: number };
        const busy = performance.eventLoopUtilization(busyBefore);
        direct?.destroy();
        if (kind !== "direct") busyMs[kind].push(busy.active);
        figures[kind].push(mib / (ms / 1000));
        console.log(
          `round ${round + 1} ${kind.padEnd(6)} ${(mib / (ms / 1000)).toFixed(0).padStart(6)} MiB/s`,
        );
      }
    }
    const tlsMedian = median(figures.tls);
    const tcpMedian = median(figures.tcp);
    const ratio = tlsMedian / tcpMedian;
    const directMedian = median(figures.direct);
    console.log(`\nmedian: TLS ${tlsMedian.toFixed(0)} MiB/s, plain TCP ${tcpMedian.toFixed(0)} MiB/s`);
    console.log(`ratio TLS/TCP ${ratio.toFixed(2)}x (target >= 0.80x): ${ratio >= 0.8 ? "met" : "NOT met"}`);
    const [tlsBusy, tcpBusy] = [median(busyMs.tls), median(busyMs.tcp)];
    console.log(
      `relay thread busy per ${mib} MiB: TLS ${tlsBusy.toFixed(0)} ms, plain TCP ${tcpBusy.toFixed(0)} ms ` +
        `(TLS can relay up to ${((mib / tlsBusy) * 1000).toFixed(0)} MiB/s on one core; plain TCP ` +
        `${((mib / tcpBusy) * 1000).toFixed(0)} MiB/s)`,
    );
    const aesMs = aes256GcmMs(mib);
    console.log(
      `AES-256-GCM alone (the relay's TLS 1.3 cipher here): ` +
        `${aesMs.toFixed(0)} ms per ${mib} MiB; so on one core the relay's TLS is at best ` +
        `${(tcpBusy / (tcpBusy + aesMs)).toFixed(2)}x of its plain TCP, with no TLS overhead but the cipher`,
    );
    console.log(
      `TLS with no relay at all (this thread's TLS straight to the sink): ${directMedian.toFixed(0)} MiB/s, ` +
        `${(directMedian / tcpMedian).toFixed(2)}x plain TCP; the relay's TLS runs at ` +
        `${(tlsMedian / directMedian).toFixed(2)}x of it`,
    );
    await Promise.all([tls.close(), tcp.close()]);
    await worker.terminate();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The worker: a TLS sink and a TCP sink, and a source that pushes `bytes` through a relay port. */
async function serveLoad(pem: Pem): Promise<void> {
  const port = parentPort!;
  let expected = 0;
  let done: (() => void) | undefined;
  const sink = (socket: NodeJS.ReadableStream) => {
    let received = 0;
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length;
      if (received >= expected) done?.();
    });
    socket.on("error", () => {});
  };
  const tlsSink = createTlsServer({ ...pem, requestCert: true, rejectUnauthorized: false }, sink);
  const tcpSink = createTcpServer(sink);
  port.postMessage({
    tlsPort: await listen(tlsSink),
    tcpPort: await listen(tcpSink),
  } satisfies WorkerMessage);
  port.on(
    "message",
    async ({ port: relayPort, bytes, kind }: { port?: number; bytes: number; kind: string }) => {
      expected = bytes;
      const started = performance.now();
      const arrived = new Promise<void>((resolve) => {
        done = resolve;
      });
      // "direct": the main thread is the source.
      const source = kind === "direct" ? undefined : netConnect({ host: "127.0.0.1", port: relayPort! });
      if (source) await push(source, bytes);
      await arrived;
      const ms = performance.now() - started;
      source?.destroy();
      port.postMessage({ ms } satisfies WorkerMessage);
    },
  );
}

/** Writes `bytes` in 1 MiB chunks, waiting for drain: the source keeps the relay busy, no more. */
async function push(socket: import("node:stream").Writable, bytes: number): Promise<void> {
  for (let sent = 0; sent < bytes; sent += CHUNK.length) {
    if (!socket.write(CHUNK)) await new Promise((resolve) => socket.once("drain", resolve));
  }
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
}

/** Milliseconds this thread takes to encrypt `mib` MiB with AES-256-GCM: the cipher alone. */
function aes256GcmMs(mib: number): number {
  const cipher = createCipheriv("aes-256-gcm", randomBytes(32), randomBytes(12));
  const started = performance.now();
  for (let i = 0; i < mib; i++) cipher.update(CHUNK);
  cipher.final();
  return performance.now() - started;
}

/** A self-signed server certificate for the file system's name, trusted as its own CA by the relay. */
async function selfSignedServerCertificate(dir: string): Promise<Pem> {
  const key = join(dir, "server.key");
  const cert = join(dir, "server.pem");
  await run("openssl", [
    ...["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
    ...[
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      `/CN=${NAME}`,
      "-addext",
      `subjectAltName=DNS:${NAME}`,
    ],
  ]);
  return { cert: await readFile(cert, "utf8"), key: await readFile(key, "utf8") };
}

function clientCertificate(): Pem {
  const key = efsClientKey();
  const { pem } = efsClientCertificate({
    key,
    fileSystemId: "fs-0123456789abcdef0",
    clientSource: "bench",
    version: "0.1.0",
    now: new Date(),
    commonName: "bench",
  });
  return { cert: pem, key: key.export({ type: "pkcs8", format: "pem" }).toString() };
}

/** The worker's messages in order, one at a time. */
function messagesOf(worker: Worker): { next(): Promise<WorkerMessage> } {
  const queue: WorkerMessage[] = [];
  const waiting: ((m: WorkerMessage) => void)[] = [];
  worker.on("message", (m: WorkerMessage) => {
    const waiter = waiting.shift();
    if (waiter) waiter(m);
    else queue.push(m);
  });
  worker.on("error", (err) => {
    console.error(`the load worker failed: ${err.message}`);
    process.exit(1);
  });
  return {
    next: () => {
      const m = queue.shift();
      return m ? Promise.resolve(m) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const quietLog: RelayLogger = { warn: (fields, msg) => console.warn(msg, fields), info: () => {} };

if (isMainThread) await main();
else await serveLoad(workerData as Pem);
