// A test-only stand-in for nfs-utils' /sbin/mount.nfs4, for machines without a kernel NFS client,
// for the mounts this driver makes through its TLS relay: `mount -t nfs4 -o ...,port=P
// 127.0.0.1:/path TARGET`. util-linux runs it as `mount.nfs4 SOURCE TARGET [-sfnv] -o OPTIONS`;
// the installed wrapper (efs-mount-helper.ts) adds `--config FILE` first.
//
// It does what the NFS client's first requests do, over the relay: connects to 127.0.0.1:P and asks
// the mount target (efs-tls-target.ts, behind the relay) for the path; the target answers with the
// local directory that stands for it, and this bind-mounts it at TARGET (read-only for `ro`). A
// relay that does not get through (TLS refused) fails the mount as mount.nfs4 fails: exit 32.
// Only 127.0.0.1 sources are served: plain NFS to a mount target is not simulated.
import { appendFileSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { posix } from "node:path";
import { bindMount, MountFailure, parseHelperArgs, runMountHelper } from "./fake-efs-server.ts";

export interface FakeMountNfs4Config {
  /** Each successful call is appended here as a JSON line: { source, target, options }. */
  logFile: string;
}

/** How long the mount target may take to answer (mount.nfs4 itself retries for 2 minutes). */
const ANSWER_TIMEOUT_MS = 20_000;

async function mountNfs4(argv: string[]): Promise<void> {
  const { config: configPath, source, target, options } = parseHelperArgs(argv, "mount.nfs4");
  const config = JSON.parse(readFileSync(configPath, "utf8")) as FakeMountNfs4Config;
  const match = /^127\.0\.0\.1:(\/.*)$/.exec(source);
  if (!match) {
    throw new MountFailure(
      `mount.nfs4: the test's mount.nfs4 serves only 127.0.0.1 (a relay), not ${source}`,
    );
  }
  const path = posix.resolve("/", match[1]!);
  const port = Number(options.find((o) => o.startsWith("port="))?.slice("port=".length));
  if (!Number.isInteger(port) || port <= 0) {
    throw new MountFailure(
      `mount.nfs4: the test's mount.nfs4 needs port=<relay port>, got ${options.join(",")}`,
    );
  }
  const answer = await ask(port, `MOUNT ${path}\n`);
  if (answer.startsWith("ERR ")) throw new MountFailure(answer.slice(4));
  if (!answer.startsWith("OK "))
    throw new MountFailure(`mount.nfs4: unexpected answer from the server: ${answer}`);
  bindMount(answer.slice(3), target, options.includes("ro"));
  appendFileSync(config.logFile, `${JSON.stringify({ source, target, options })}\n`);
}

/** One request line to the server through the relay, and its answer line. */
function ask(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let buffered = "";
    const fail = (why: string) => {
      socket.destroy();
      reject(new MountFailure(`mount.nfs4: ${why} while mounting 127.0.0.1 (port ${port})`));
    };
    const timer = setTimeout(() => fail("Connection timed out"), ANSWER_TIMEOUT_MS);
    socket.on("connect", () => socket.write(request));
    socket.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const end = buffered.indexOf("\n");
      if (end < 0) return;
      clearTimeout(timer);
      socket.end();
      resolve(buffered.slice(0, end));
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      fail(err.code === "ECONNREFUSED" ? "Connection refused" : `Connection reset by peer (${err.code})`);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      fail("Connection reset by peer");
    });
  });
}

runMountHelper(() => mountNfs4(process.argv.slice(2)));
