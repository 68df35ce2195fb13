/**
 * gRPC's unary calls over HTTP/2 (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md),
 * on Node's own HTTP/2 server: every CSI method is unary, and a library's server layers (streams,
 * interceptors, channelz, compression) cost each call more CPU than the driver's own work in a
 * NodeGetVolumeStats, and the plugin tens of milliseconds of start-up to load.
 *
 * What the protocol asks of a unary server, and what this one does:
 * - a request is a POST with content-type application/grpc[+proto] (else HTTP 415, or 405 for
 *   another method, as gRPC servers answer), its path /package.Service/Method (else UNIMPLEMENTED);
 * - its body is one length-prefixed message: a flag byte (compressed or not), 4 bytes of length,
 *   the bytes; a compressed message is refused (UNIMPLEMENTED: no encoding but identity is
 *   offered, and gRPC clients compress only when told to), as is a body that is not exactly one
 *   message (INTERNAL) or one longer than maxReceiveBytes (RESOURCE_EXHAUSTED, as soon as its
 *   length is read);
 * - grpc-timeout (digits and a unit, H M S m u n) gives the call's deadline; a malformed one is
 *   INTERNAL, as grpc-go answers it;
 * - the answer is headers, one message and trailers with grpc-status 0, or for a failure headers
 *   only, carrying grpc-status and grpc-message (percent-encoded UTF-8);
 * - a caller that cancels (RST_STREAM) or whose connection drops before the answer is told to the
 *   handler, which stops; its answer then goes nowhere;
 * - calls that arrive together start a few per turn of the event loop (#startInTurn);
 * - closing sends GOAWAY: calls in flight finish, new ones go to another connection; after the
 *   grace period what is left is closed.
 * Metadata the caller sends is not read: CSI passes everything in messages.
 */
import http2, { type Http2Server, type Http2Session, type ServerHttp2Stream } from "node:http2";
import type { Logger } from "../log.ts";

/** One unary call as its handler sees it. */
export interface UnaryCall {
  /** The request message's bytes. */
  readonly request: Buffer;
  /** The caller's deadline in Date.now() milliseconds; undefined when it set none. */
  readonly deadline: number | undefined;
  /** Set by the handler: called once if the caller goes away before the answer is sent. */
  oncancel: (() => void) | undefined;
  /** Sends the response message and status OK. Only the first answer of a call is sent. */
  reply(message: Uint8Array): void;
  /** Sends a failure status with its message. */
  fail(code: number, details: string): void;
}

export type UnaryHandler = (call: UnaryCall) => void;

export interface GrpcServerOptions {
  /** A request message longer than this is refused with RESOURCE_EXHAUSTED. */
  maxReceiveBytes: number;
  /**
   * Calls started per turn of the event loop when many wait: GrpcServer#startInTurn says why they
   * are grouped, src/server/server.ts how many per process, with the measurements.
   */
  callsPerTurn: number;
  /**
   * Whether the first call that waits starts in a turn of its own, and each turn after it twice as
   * many, up to callsPerTurn, until none waits (GrpcServer#startNext says why).
   */
  rampUp: boolean;
  log: Logger;
}

/** grpc-timeout's units, in milliseconds. */
const DEADLINE_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };
// Status codes the transport answers itself (the rest come from handlers).
const UNIMPLEMENTED = 12;
const INTERNAL = 13;
const RESOURCE_EXHAUSTED = 8;

/** A grpc-message longer than this is cut: the answer's headers must fit the caller's limits. */
const MAX_DETAILS_CHARS = 8192;

const OK_HEADERS = { ":status": 200, "content-type": "application/grpc" };
const OK_TRAILERS = { "grpc-status": "0" };

/** grpc-message's form: UTF-8, with every byte outside printable ASCII, and '%', as %XX. */
export function percentEncode(text: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(text)) return text;
  let out = "";
  for (const byte of Buffer.from(text.toWellFormed(), "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** grpc-timeout as milliseconds; undefined when absent, NaN when malformed. */
function parseTimeout(value: string | string[] | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = typeof value === "string" ? /^(\d{1,8})([HMSmun])$/.exec(value) : null;
  if (!match) return Number.NaN;
  return Number(match[1]) * (DEADLINE_UNITS[match[2] as string] as number);
}

/** Answers with headers only: a failure before or instead of any message. */
function sendStatus(stream: ServerHttp2Stream, code: number, details: string): void {
  if (stream.destroyed || stream.headersSent) return;
  const message = percentEncode(
    details.length > MAX_DETAILS_CHARS ? `${details.slice(0, MAX_DETAILS_CHARS)}...` : details,
  );
  stream.respond(
    { ...OK_HEADERS, "grpc-status": String(code), "grpc-message": message },
    { endStream: true },
  );
  // The caller may still be sending: what it sends is read and dropped.
  stream.resume();
}

function sendHttpError(stream: ServerHttp2Stream, httpStatus: number): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ":status": httpStatus }, { endStream: true });
  stream.resume();
}

class Call implements UnaryCall {
  readonly request: Buffer;
  readonly deadline: number | undefined;
  oncancel: (() => void) | undefined;
  readonly #stream: ServerHttp2Stream;
  #answered = false;

  constructor(stream: ServerHttp2Stream, request: Buffer, deadline: number | undefined) {
    this.#stream = stream;
    this.request = request;
    this.deadline = deadline;
    stream.once("close", () => {
      if (this.#answered) return;
      this.#answered = true;
      this.oncancel?.();
    });
  }

  /** Answered, or its caller gone: nothing more can be sent. */
  get answered(): boolean {
    return this.#answered;
  }

  reply(message: Uint8Array): void {
    if (this.#answered) return;
    this.#answered = true;
    const stream = this.#stream;
    if (stream.destroyed) return;
    const frame = Buffer.allocUnsafe(5 + message.length);
    frame[0] = 0;
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, 5);
    stream.respond(OK_HEADERS, { waitForTrailers: true });
    stream.once("wantTrailers", () => stream.sendTrailers(OK_TRAILERS));
    stream.end(frame);
  }

  fail(code: number, details: string): void {
    if (this.#answered) return;
    this.#answered = true;
    sendStatus(this.#stream, code, details);
  }
}

export class GrpcServer {
  readonly #routes: ReadonlyMap<string, UnaryHandler>;
  readonly #maxReceive: number;
  readonly #callsPerTurn: number;
  /** Calls a burst's first turn starts: one with rampUp, else callsPerTurn (#startNext). */
  readonly #firstGroupSize: number;
  /** Calls the next turn starts (#startNext). */
  #groupSize: number;
  readonly #log: Logger;
  readonly #server: Http2Server;
  readonly #sessions = new Set<Http2Session>();
  /** Calls read in full, waiting for their turn of the event loop to start (#startInTurn). */
  readonly #waiting: (() => void)[] = [];

  constructor(routes: ReadonlyMap<string, UnaryHandler>, options: GrpcServerOptions) {
    this.#routes = routes;
    this.#maxReceive = options.maxReceiveBytes;
    if (!Number.isInteger(options.callsPerTurn) || options.callsPerTurn < 1) {
      throw new Error(`callsPerTurn must be a positive integer, not ${options.callsPerTurn}`);
    }
    this.#callsPerTurn = options.callsPerTurn;
    this.#firstGroupSize = options.rampUp ? 1 : options.callsPerTurn;
    this.#groupSize = this.#firstGroupSize;
    this.#log = options.log;
    this.#server = http2.createServer();
    this.#server.on("session", (session) => {
      this.#sessions.add(session);
      session.on("close", () => this.#sessions.delete(session));
      // A connection that breaks (or is not HTTP/2) is the caller's problem: noted, then gone.
      session.on("error", (err) => this.#log.debug({ err }, "gRPC connection failed"));
    });
    this.#server.on("stream", (stream, headers) => this.#onStream(stream, headers));
  }

  /** Serves on a unix socket at `path` (which must not exist). */
  listen(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(path, () => {
        this.#server.off("error", reject);
        this.#server.on("error", (err) => this.#log.error({ err }, "gRPC server error"));
        resolve();
      });
    });
  }

  /**
   * Stops accepting connections and tells each connection to go (GOAWAY): calls in flight go on.
   * Resolves true once all connections closed, false when timeoutMs passed first and the rest were
   * closed by force.
   */
  async close(timeoutMs: number): Promise<boolean> {
    const stopped = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const session of this.#sessions) session.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const graceful = (await Promise.race([stopped, timeout])) !== "timeout";
    clearTimeout(timer);
    if (!graceful) {
      for (const session of this.#sessions) session.destroy();
      await stopped;
    }
    return graceful;
  }

  #onStream(stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    this.#guard(() => this.#accept(stream, headers));
  }

  #accept(stream: ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    // A stream the caller resets reports it as an error: the call's close handles it.
    stream.on("error", () => undefined);
    if (headers[":method"] !== "POST") {
      sendHttpError(stream, 405);
      return;
    }
    const contentType = headers["content-type"];
    if (typeof contentType !== "string" || !contentType.startsWith("application/grpc")) {
      sendHttpError(stream, 415);
      return;
    }
    const path = headers[":path"] ?? "";
    const handler = this.#routes.get(path);
    if (!handler) {
      sendStatus(stream, UNIMPLEMENTED, `unknown method ${path}`);
      return;
    }
    const timeoutMs = parseTimeout(headers["grpc-timeout"]);
    if (Number.isNaN(timeoutMs)) {
      sendStatus(stream, INTERNAL, `malformed grpc-timeout: ${String(headers["grpc-timeout"])}`);
      return;
    }
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const encoding = headers["grpc-encoding"];

    const chunks: Buffer[] = [];
    let length = 0;
    let refused = false;
    let declared: number | undefined;
    stream.on("data", (chunk: Buffer) => {
      if (refused) return;
      chunks.push(chunk);
      length += chunk.length;
      // The declared length is known from the fifth byte on: a message too long is refused then,
      // and so is a body that goes on past the longest message allowed.
      if (declared === undefined && length >= 5) declared = Buffer.concat(chunks).readUInt32BE(1);
      if (declared === undefined) return;
      if (declared > this.#maxReceive || length > 5 + this.#maxReceive) {
        refused = true;
        chunks.length = 0;
        this.#guard(() =>
          sendStatus(
            stream,
            RESOURCE_EXHAUSTED,
            `request message of ${declared} bytes is larger than the limit of ${this.#maxReceive}`,
          ),
        );
      }
    });
    stream.once("end", () => {
      if (!refused) this.#guard(() => this.#dispatch(stream, chunks, length, encoding, handler, deadline));
    });
  }

  /** A failure to answer (the caller gone meanwhile) must not end the process: it is logged. */
  #guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.debug({ err }, "could not answer a gRPC call");
    }
  }

  #dispatch(
    stream: ServerHttp2Stream,
    chunks: Buffer[],
    length: number,
    encoding: string | string[] | undefined,
    handler: UnaryHandler,
    deadline: number | undefined,
  ): void {
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length);
    if (body.length < 5) {
      sendStatus(stream, INTERNAL, "the call carries no request message");
      return;
    }
    const declared = body.readUInt32BE(1);
    if (body.length !== 5 + declared) {
      sendStatus(
        stream,
        INTERNAL,
        body.length < 5 + declared
          ? "the request message is cut short"
          : "a unary call carries more than one request message",
      );
      return;
    }
    if (body[0] !== 0) {
      if (encoding === undefined || encoding === "identity") {
        sendStatus(stream, INTERNAL, "a compressed request message without grpc-encoding");
      } else {
        sendStatus(
          stream,
          UNIMPLEMENTED,
          `grpc-encoding ${String(encoding)} is not supported: send messages uncompressed`,
        );
      }
      return;
    }
    const call = new Call(stream, body.subarray(5), deadline);
    // A caller gone while its call waited has nobody to answer: the call is not started.
    this.#startInTurn(() => call.answered || handler(call));
  }

  /**
   * Starts calls a few per turn of the event loop (callsPerTurn), in the order they came. The
   * sidecars send up to 100 calls at once, and they are read in one turn. Started there, every one
   * of them would run its CPU part (decoding, validation, the AWS SDK building and signing its
   * request) before any reached the network: Node's HTTP client is handed its socket on
   * process.nextTick, which runs only once every pending promise continuation has. The first of
   * 100 deletes left for EC2 90 ms after the calls came (npm run bench, 2 vCPUs), and EC2's answers
   * waited the same way. A few per turn let the event loop send and receive between them: a
   * setImmediate callback queued while immediates run waits for the next turn, after the poll for
   * I/O. Each turn has a cost of its own (the poll, the immediate, the continuations it wakes),
   * paid per call when calls start one per turn.
   */
  #startInTurn(start: () => void): void {
    this.#waiting.push(start);
    if (this.#waiting.length === 1) setImmediate(this.#startNext);
  }

  /**
   * Starts the next group. With rampUp, a burst's first call starts alone: its request leaves for
   * AWS as soon as that one call is prepared, where a full group sends its first request only once
   * every call of the group has run its part (see #startInTurn). The groups then double, to keep
   * the CPU per call of large groups for the rest (src/server/server.ts has the measurement).
   */
  readonly #startNext = (): void => {
    const group = this.#waiting.splice(0, this.#groupSize);
    if (this.#waiting.length > 0) {
      this.#groupSize = Math.min(this.#groupSize * 2, this.#callsPerTurn);
      setImmediate(this.#startNext);
    } else {
      this.#groupSize = this.#firstGroupSize;
    }
    for (const start of group) this.#guard(start);
  };
}
