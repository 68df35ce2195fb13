/**
 * The TLS relay that encrypts EFS traffic in transit, in place of efs-utils' stunnel/efs-proxy: a
 * listener on 127.0.0.1 that the kernel mounts as `127.0.0.1:/path` with `port=<p>`, and for each
 * connection it accepts, one TLS 1.2+ connection to the mount target's port 2049. Bytes are relayed
 * 1:1, as stunnel does (efs-proxy's partition binding is an optimisation EFS does not require).
 *
 * The upstream side is a `dial` function, so that the same relay code carries plain TCP in tests
 * and benchmarks; startTlsRelay gives it the TLS dial with EFS's checks.
 */
import { createServer, type Server, type Socket } from "node:net";
import {
  checkServerIdentity,
  createSecureContext,
  type SecureContext,
  connect as tlsConnect,
} from "node:tls";

/** efs-utils' local port range, upper bound excluded: 20049..21048 (efs-utils.conf). */
export const EFS_TLS_PORT_RANGE: readonly [number, number] = [20049, 21049];
/** The NFS port of every EFS mount target. */
export const EFS_NFS_PORT = 2049;
/** How long a mount target may take to finish the TLS handshake (stunnel's TIMEOUTconnect is 10 s). */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** The logger calls the relay makes: a subset of src/log.ts Logger. */
export interface RelayLogger {
  warn(fields: object, msg: string): void;
  info(fields: object, msg: string): void;
}

/** Opens the upstream side of one relayed connection; `ready` is the event after which bytes may flow. */
export type Dial = () => { socket: Socket; ready: "connect" | "secureConnect" };

export interface RelayOptions {
  /** Listen on this port only; 0 lets the kernel choose. Else a free port of portRange. */
  port?: number | undefined;
  /** [lowest, highest excluded]; default EFS_TLS_PORT_RANGE. */
  portRange?: readonly [number, number] | undefined;
  /** Which ports of the range may be taken (default: any). */
  acceptPort?: ((port: number) => boolean) | undefined;
  dial: Dial;
  /** Where the relay goes, for log lines: `host:port`. */
  upstream: string;
  log: RelayLogger;
  handshakeTimeoutMs?: number | undefined;
}

export interface TlsRelayOptions extends Omit<RelayOptions, "dial" | "upstream"> {
  /** The mount target: its IP address (or DNS name) and port, default 2049. */
  target: { host: string; port?: number | undefined };
  /** The file system's DNS name without an AZ prefix, `fs-<id>.efs.<region>.amazonaws.com`: SNI and the name checked. */
  serverName: string;
  /** The CA certificates (PEM) that the mount target's certificate must chain to: Amazon's roots. */
  ca: string | Buffer | (string | Buffer)[];
  /**
   * The client certificate (efsClientCertificate) and its private key, PEM, read at each new
   * connection: a certificate renewed meanwhile is the one the next handshake presents.
   */
  identity: () => { cert: string | Buffer; key: string | Buffer };
}

export interface RelayStats {
  /** Connections accepted since start. */
  connections: number;
  /** Connections open now. */
  active: number;
  /** Bytes from local clients (the kernel) relayed to the mount target. */
  bytesIn: number;
  /** Bytes from the mount target relayed to local clients. */
  bytesOut: number;
  /** Connections that never reached the mount target (refused, timed out, TLS handshake failed). */
  failures: number;
}

export interface Relay {
  /** The local port the kernel mounts through. */
  readonly port: number;
  stats(): RelayStats;
  /**
   * One connection to the mount target, closed once it is ready (TLS: the handshake and the
   * certificate checks passed). Rejects with the reason it was refused (refusalReason).
   */
  probe(): Promise<void>;
  /** Stops listening and ends every open connection. */
  close(): Promise<void>;
}

/** A relay to an EFS mount target over TLS, checked as efs-utils checks it: see the module comment. */
export function startTlsRelay(options: TlsRelayOptions): Promise<Relay> {
  const { target, serverName, ca, identity } = options;
  const port = target.port ?? EFS_NFS_PORT;
  // One TLS context per client certificate, not one per connection: the CA set is parsed and the
  // key loaded once, and a renewed certificate (a new identity object) makes the next one.
  let context: { for: object; secureContext: SecureContext } | undefined;
  const secureContext = (): SecureContext => {
    const current = identity();
    if (context?.for !== current) {
      context = {
        for: current,
        secureContext: createSecureContext({ minVersion: "TLSv1.2", ca, ...current }),
      };
    }
    return context.secureContext;
  };
  const dial: Dial = () => ({
    socket: tlsConnect({
      host: target.host,
      port,
      servername: serverName,
      secureContext: secureContext(),
      rejectUnauthorized: true,
      // The target is often an IP address: the name to check is the file system's, as efs-utils' checkHost.
      checkServerIdentity: (_host, peer) => checkServerIdentity(serverName, peer),
    }),
    ready: "secureConnect",
  });
  return startRelay({ ...options, dial, upstream: `${target.host}:${port}` });
}

/** A relay from 127.0.0.1 to whatever `dial` opens, one upstream connection per accepted connection. */
export async function startRelay(options: RelayOptions): Promise<Relay> {
  const stats: RelayStats = { connections: 0, active: 0, bytesIn: 0, bytesOut: 0, failures: 0 };
  const open = new Set<Socket>();
  const context: ConnectionContext = {
    dial: options.dial,
    upstream: options.upstream,
    log: options.log,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    stats,
    open,
  };
  // pauseOnConnect: nothing is read from the kernel before the mount target is ready to take it.
  const server = createServer({ pauseOnConnect: true, noDelay: true }, (client) => relay(client, context));
  const port = await listenInRange(
    server,
    options.port,
    options.portRange ?? EFS_TLS_PORT_RANGE,
    options.acceptPort ?? (() => true),
  );
  options.log.info({ port, upstream: options.upstream }, "relay listening");
  return {
    port,
    stats: () => ({ ...stats }),
    probe: () => probe(context),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      }),
  };
}

interface ConnectionContext {
  dial: Dial;
  upstream: string;
  log: RelayLogger;
  handshakeTimeoutMs: number;
  stats: RelayStats;
  /** Every socket of every open connection, both sides, for close(). */
  open: Set<Socket>;
}

/**
 * One accepted connection: dial upstream, then pipe both ways (pipe pauses the faster side while
 * the other's buffer is full). Whichever side closes or fails first takes the other down with it:
 * NFS has no use for a half-open connection.
 */
function relay(client: Socket, context: ConnectionContext): void {
  const { stats, open, log } = context;
  stats.connections++;
  stats.active++;
  const { socket: upstream, ready } = context.dial();
  upstream.setNoDelay(true);
  open.add(client).add(upstream);
  let established = false;

  const timer = setTimeout(() => {
    upstream.destroy(new RelayTimeout(context.handshakeTimeoutMs));
  }, context.handshakeTimeoutMs);
  upstream.once(ready, () => {
    clearTimeout(timer);
    established = true;
    client.on("data", (chunk: Buffer) => {
      stats.bytesIn += chunk.length;
    });
    upstream.on("data", (chunk: Buffer) => {
      stats.bytesOut += chunk.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
  });

  upstream.on("error", (err: NodeJS.ErrnoException) => {
    const fields = { upstream: context.upstream, code: err.code, err: err.message };
    if (established) log.info(fields, "relay: the connection to the mount target failed");
    else {
      stats.failures++;
      log.warn(
        { ...fields, reason: refusalReason(err) },
        `relay refused a connection: ${refusalReason(err)}`,
      );
    }
  });
  // The kernel resets connections it is done with; nothing to report.
  client.on("error", () => {});
  upstream.once("close", () => {
    clearTimeout(timer);
    client.destroy();
  });
  client.once("close", () => {
    upstream.destroy();
    stats.active--;
    open.delete(client);
    open.delete(upstream);
  });
}

function probe(context: ConnectionContext): Promise<void> {
  return new Promise((resolve, reject) => {
    const { socket, ready } = context.dial();
    const timer = setTimeout(
      () => socket.destroy(new RelayTimeout(context.handshakeTimeoutMs)),
      context.handshakeTimeoutMs,
    );
    socket.once(ready, () => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    });
    socket.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(`${context.upstream}: ${refusalReason(err)}`));
    });
  });
}

/** The handshake did not finish in time: a mount target that accepts TCP but does not speak TLS, or a stall. */
class RelayTimeout extends Error {
  readonly code = "ERR_RELAY_HANDSHAKE_TIMEOUT";
  constructor(ms: number) {
    super(`the mount target did not finish the TLS handshake within ${ms} ms`);
    this.name = "RelayTimeout";
  }
}

/** Why a connection to the mount target was not made, in words an operator can act on. */
export function refusalReason(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "ERR_TLS_CERT_ALTNAME_INVALID":
      return `the mount target's certificate is not for the file system's name (${err.message})`;
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "CERT_UNTRUSTED":
    case "CERT_SIGNATURE_FAILURE":
      return `the mount target's certificate does not chain to a trusted CA (${err.code})`;
    case "CERT_HAS_EXPIRED":
    case "CERT_NOT_YET_VALID":
      return `the mount target's certificate is outside its validity period (${err.code})`;
    case "ERR_SSL_WRONG_VERSION_NUMBER":
    case "ERR_SSL_PACKET_LENGTH_TOO_LONG":
    case "ERR_SSL_RECORD_LAYER_FAILURE":
      return `the mount target did not complete a TLS handshake: it may not speak TLS (${err.code})`;
    case "ECONNRESET":
    case "EPIPE":
      return `the mount target did not complete a TLS handshake: it closed the connection (${err.code})`;
    case "ERR_RELAY_HANDSHAKE_TIMEOUT":
      return err.message;
    case "ECONNREFUSED":
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return `the mount target cannot be reached (${err.code})`;
    default:
      // OpenSSL's messages run over several lines; its code says enough.
      if (err.code?.startsWith("ERR_SSL_"))
        return `the TLS handshake with the mount target failed (${err.code})`;
      return `the connection to the mount target failed (${err.code ?? "no code"}: ${err.message})`;
  }
}

/**
 * Listens on 127.0.0.1: on `port` if given, else on the first free port of a shuffled range, as
 * efs-utils picks its tlsport (so that relays of many mounts rarely race for the same port).
 */
async function listenInRange(
  server: Server,
  port: number | undefined,
  range: readonly [number, number],
  accept: (port: number) => boolean,
): Promise<number> {
  if (port !== undefined) {
    await listen(server, port).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`cannot listen on 127.0.0.1:${port} for the EFS TLS relay: ${err.code ?? err.message}`);
    });
    return boundPort(server);
  }
  const [lowest, end] = range;
  if (!(Number.isInteger(lowest) && Number.isInteger(end) && lowest > 0 && lowest < end && end <= 65_536)) {
    throw new Error(`the relay port range ${lowest}..${end} is not a range of TCP ports (lowest < end)`);
  }
  const candidates = shuffled(lowest, end).filter(accept);
  for (const candidate of candidates) {
    try {
      await listen(server, candidate);
      return boundPort(server);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EADDRINUSE" && code !== "EACCES") {
        throw new Error(`cannot listen on 127.0.0.1:${candidate} for the EFS TLS relay: ${code}`);
      }
    }
  }
  throw new Error(
    `no free port for the EFS TLS relay on 127.0.0.1: all ${candidates.length} usable ports of ${lowest}..${end - 1} are taken`,
  );
}

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onListening = () => {
      server.off("error", onError);
      resolve();
    };
    const onError = (err: Error) => {
      server.off("listening", onListening);
      reject(err);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ host: "127.0.0.1", port, exclusive: true });
  });
}

function boundPort(server: Server): number {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the relay listener has no TCP port");
  return address.port;
}

/** lowest..end-1 in random order (Fisher-Yates). */
function shuffled(lowest: number, end: number): number[] {
  const ports = Array.from({ length: end - lowest }, (_, i) => lowest + i);
  for (let i = ports.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [ports[i], ports[j]] = [ports[j]!, ports[i]!];
  }
  return ports;
}
