// The EFS TLS relay against local stand-ins for a mount target: a TLS server with a certificate from
// a test CA for the file system's name, and servers that must be refused. Certificates come from
// the openssl command; the tests are skipped without it.

import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer as createTcpServer, connect as netConnect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EFS_EXTENSION, efsClientCertificate, efsClientKey } from "../../src/efs/tls/client-certificate.ts";
import {
  EFS_TLS_PORT_RANGE,
  type RelayLogger,
  startTlsRelay,
  type TlsRelayOptions,
} from "../../src/efs/tls/relay.ts";
import { extensionText, hasOpenssl, makeCa, type Pem } from "../harness/test-ca.ts";

const FS = "fs-0123456789abcdef0";
const AP = "fsap-0123456789abcdef0";
const NAME = `${FS}.efs.us-east-1.amazonaws.com`;
const MiB = 1024 * 1024;

if (!hasOpenssl) console.log("efs-tls-relay tests skipped: they make certificates with the openssl command");

/** A logger that keeps its lines for the test to read. */
function captureLog(): RelayLogger & { lines: { level: string; fields: object; msg: string }[] } {
  const lines: { level: string; fields: object; msg: string }[] = [];
  return {
    lines,
    warn: (fields, msg) => lines.push({ level: "warn", fields, msg }),
    info: (fields, msg) => lines.push({ level: "info", fields, msg }),
  };
}

interface Seen {
  fileSystemId?: string | undefined;
  accessPointId?: string | undefined;
  /** Decrypted bytes received, per connection. */
  received: Buffer[][];
}

/** A mount target stand-in: TLS, asks for the client certificate, echoes what it receives. */
async function startMountTarget(pem: Pem): Promise<{ server: Server; port: number; seen: Seen }> {
  const seen: Seen = { received: [] };
  const server = createTlsServer({ ...pem, requestCert: true, rejectUnauthorized: false }, (socket) => {
    const peer = (socket as TLSSocket).getPeerX509Certificate();
    if (peer) {
      seen.fileSystemId = extensionText(peer.raw, EFS_EXTENSION.fileSystemId);
      seen.accessPointId = extensionText(peer.raw, EFS_EXTENSION.accessPoint);
    }
    const chunks: Buffer[] = [];
    seen.received.push(chunks);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => {});
    socket.pipe(socket);
  });
  return { server, port: await listenAnywhere(server), seen };
}

/** A server that accepts TCP and answers in plain text: not a TLS server. */
async function startPlainServer(): Promise<{ server: Server; port: number; received: Buffer[] }> {
  const received: Buffer[] = [];
  const server = createTcpServer((socket) => {
    socket.on("data", (chunk: Buffer) => received.push(chunk));
    socket.on("error", () => {});
    socket.write("* OK not TLS\r\n");
  });
  return { server, port: await listenAnywhere(server), received };
}

function listenAnywhere(server: Server): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
}

/** Sends data through the relay and collects what comes back until `expect` bytes or the socket closes. */
function exchange(port: number, data: Buffer, expected: number): Promise<{ reply: Buffer; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const socket: Socket = netConnect({ host: "127.0.0.1", port });
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= expected) {
        socket.end();
        resolve({ reply: Buffer.concat(chunks), closed: false });
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => resolve({ reply: Buffer.concat(chunks), closed: true }));
    socket.on("connect", () => socket.write(data));
    setTimeout(() => reject(new Error(`no reply through the relay on port ${port} within 30 s`)), 30_000);
  });
}

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

describe.skipIf(!hasOpenssl)("EFS TLS relay", () => {
  let dir = "";
  let ca: Awaited<ReturnType<typeof makeCa>>;
  let client: { cert: string; key: string };
  const servers: Server[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "efs-tls-relay-"));
    ca = await makeCa(dir, "amazon");
    const key = efsClientKey();
    const certificate = efsClientCertificate({
      key,
      fileSystemId: FS,
      accessPointId: AP,
      clientSource: "test",
      version: "0.1.0",
      now: new Date(),
      commonName: "relay-test",
    });
    client = { cert: certificate.pem, key: key.export({ type: "pkcs8", format: "pem" }).toString() };
  });
  afterAll(async () => {
    for (const server of servers) server.close();
    await rm(dir, { recursive: true, force: true });
  });

  const relayTo = (port: number, log: RelayLogger, more: Partial<TlsRelayOptions> = {}) =>
    startTlsRelay({
      target: { host: "127.0.0.1", port },
      serverName: NAME,
      ca: ca.cert,
      identity: () => client,
      log,
      handshakeTimeoutMs: 3_000,
      ...more,
    });

  it("relays bytes in order both ways over concurrent connections, with the client certificate seen", async () => {
    const target = await startMountTarget(await ca.sign(NAME));
    servers.push(target.server);
    const log = captureLog();
    const relay = await relayTo(target.port, log);
    expect(relay.port).toBeGreaterThanOrEqual(EFS_TLS_PORT_RANGE[0]);
    expect(relay.port).toBeLessThan(EFS_TLS_PORT_RANGE[1]);

    const payloads = Array.from({ length: 4 }, () => randomBytes(MiB));
    const replies = await Promise.all(payloads.map((data) => exchange(relay.port, data, data.length)));
    for (const [i, data] of payloads.entries()) {
      expect(replies[i]!.reply.length).toBe(data.length);
      expect(sha256(replies[i]!.reply)).toBe(sha256(data));
    }
    const receivedHashes = target.seen.received.map((chunks) => sha256(Buffer.concat(chunks))).sort();
    expect(receivedHashes).toEqual(payloads.map(sha256).sort());
    expect(target.seen.fileSystemId).toBe(FS);
    expect(target.seen.accessPointId).toBe(AP);

    const stats = relay.stats();
    expect(stats).toMatchObject({ connections: 4, failures: 0, bytesIn: 4 * MiB, bytesOut: 4 * MiB });
    expect(log.lines.filter((l) => l.level === "warn")).toEqual([]);
    await relay.close();
  });

  const refusals: [string, () => Promise<{ port: number; delivered: () => number }>, RegExp][] = [
    [
      "a certificate for another name",
      async () => {
        const t = await startMountTarget(await ca.sign("fs-0fedcba9876543210.efs.us-east-1.amazonaws.com"));
        servers.push(t.server);
        return { port: t.port, delivered: () => t.seen.received.flat().length };
      },
      /certificate is not for the file system's name/,
    ],
    [
      "a certificate from an unknown CA",
      async () => {
        const other = await makeCa(dir, "unknown");
        const t = await startMountTarget(await other.sign(NAME));
        servers.push(t.server);
        return { port: t.port, delivered: () => t.seen.received.flat().length };
      },
      /does not chain to a trusted CA/,
    ],
    [
      "a server that does not speak TLS",
      async () => {
        const t = await startPlainServer();
        servers.push(t.server);
        // The ClientHello reaches it; what must not is the client's payload.
        return { port: t.port, delivered: () => Buffer.concat(t.received).indexOf("PAYLOAD") + 1 };
      },
      /did not complete a TLS handshake|did not finish the TLS handshake/,
    ],
  ];

  for (const [what, startTarget, reason] of refusals) {
    it(`refuses ${what}: the client is disconnected, nothing delivered, one warning with the reason`, async () => {
      const target = await startTarget();
      const log = captureLog();
      const relay = await relayTo(target.port, log);
      const { reply, closed } = await exchange(relay.port, Buffer.from("PAYLOAD".repeat(100)), 1);
      expect(closed).toBe(true);
      expect(reply.length).toBe(0);
      expect(target.delivered()).toBe(0);
      const warnings = log.lines.filter((l) => l.level === "warn");
      expect(warnings).toHaveLength(1);
      expect(warnings[0]!.msg).toMatch(reason);
      expect(relay.stats()).toMatchObject({ connections: 1, failures: 1, bytesIn: 0, bytesOut: 0 });
      await relay.close();
    });
  }

  it("ends open connections and stops listening on close()", async () => {
    const target = await startMountTarget(await ca.sign(NAME));
    servers.push(target.server);
    const relay = await relayTo(target.port, captureLog());
    const open = netConnect({ host: "127.0.0.1", port: relay.port });
    open.on("error", () => {});
    const closed = new Promise((resolve) => open.on("close", resolve));
    await new Promise((resolve) => open.write("hello", resolve));
    await expect.poll(() => relay.stats().active).toBe(1);
    await relay.close();
    await closed;
    expect(relay.stats().active).toBe(0);
    const refused = await new Promise<string | undefined>((resolve) => {
      const probe = netConnect({ host: "127.0.0.1", port: relay.port });
      probe.on("connect", () => {
        probe.destroy();
        resolve(undefined);
      });
      probe.on("error", (err: NodeJS.ErrnoException) => resolve(err.code));
    });
    expect(refused).toBe("ECONNREFUSED");
  });

  it("skips ports in use and names the port it cannot take", async () => {
    const log = captureLog();
    const first = await relayTo(1, log);
    // A two-port range whose first port is taken: the relay takes the second, unless that is in use too.
    const range: [number, number] = [first.port, first.port + 1 < 65_536 ? first.port + 2 : first.port + 1];
    const second = await relayTo(1, log, { portRange: range }).catch((err: Error) => err);
    if (second instanceof Error) expect(second.message).toMatch(/no free port .* are taken/);
    else {
      expect(second.port).toBe(first.port + 1);
      await second.close();
    }
    await expect(relayTo(1, log, { port: first.port })).rejects.toThrow(
      new RegExp(`cannot listen on 127\\.0\\.0\\.1:${first.port} .*EADDRINUSE`),
    );
    await first.close();
  });
});
