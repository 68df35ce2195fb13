// EFS in-transit encryption without efs-utils, through the driver process: NodePublishVolume starts
// the driver's TLS relay and runs `mount -t nfs4 ... 127.0.0.1:/path` with the relay's port. This
// machine has no NFS client, so the edge is simulated: the test's mount.nfs4 (fake-mount-nfs4.ts)
// asks through the relay for the path, and TLS stand-ins for the mount targets, on the addresses
// DescribeMountTargets gives (put on the loopback interface), answer with the directory to bind.
// Needs root (mounts, /sbin/mount.nfs4, addresses on lo) and the openssl command.

import { readFile, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { CreateAccessPointCommand } from "@aws-sdk/client-efs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findMountsAt, listMounts } from "../../src/host/mounts.ts";
import type { Reply } from "../harness/csi-client.ts";
import { type EfsEnv, startEfsEnv } from "../harness/efs-mount-helper.ts";
import { hasOpenssl } from "../harness/test-ca.ts";

const isRoot = process.getuid?.() === 0;
const skip = !isRoot
  ? "they mount file systems and need root"
  : !hasOpenssl
    ? "they need the openssl command"
    : "";
if (skip) console.log(`efs-tls integration tests skipped: ${skip}`);

const capability = (mountFlags: string[] = []) => ({
  mount: { fs_type: "", mount_flags: mountFlags },
  access_mode: { mode: "MULTI_NODE_MULTI_WRITER" },
});
const NFS = ["nfsvers=4.1", "rsize=1048576", "wsize=1048576", "hard", "timeo=600", "retrans=2", "noresvport"];

/** Whether something listens on 127.0.0.1:port. */
const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });

const portOf = (options: string[]) => Number(options.find((o) => o.startsWith("port="))?.slice(5));

describe.skipIf(skip)("EFS with TLS through the driver's relay (driver process, fake mount.nfs4)", () => {
  let env: EfsEnv;
  let targets = 0;
  const newTarget = () =>
    join(env.dir, "pods", `pod-${++targets}`, "volumes", "kubernetes.io~csi", "pv", "mount");
  const publish = (
    volumeId: string,
    target: string,
    flags: string[] = [],
    context: Record<string, string> = {},
  ) =>
    env.client.call("Node", "NodePublishVolume", {
      volume_id: volumeId,
      target_path: target,
      volume_capability: capability(flags),
      volume_context: context,
    });
  const unpublish = (volumeId: string, target: string) =>
    env.client.call("Node", "NodeUnpublishVolume", { volume_id: volumeId, target_path: target });
  const tls = () => env.tls!;

  beforeAll(async () => {
    env = await startEfsEnv({ tls: true, mode: "node", extraArgs: ["--http-endpoint=127.0.0.1:0"] });
  }, 900_000);

  /** A series of the driver's /metrics (the port it logged), or undefined when it has none. */
  const metric = async (series: string) => {
    const line = env.driver.stderr.split("\n").find((l) => l.includes('"serving /metrics"'));
    const port = (JSON.parse(line!) as { endpoint: { port: number } }).endpoint.port;
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const found = text.split("\n").find((l) => l.startsWith(`${series} `));
    return found === undefined ? undefined : Number(found.slice(series.length + 1));
  };
  afterAll(async () => {
    await env?.stop();
  });

  it("mounts 127.0.0.1 on the relay's port; the bytes reach the mount target over TLS, named for the file system", async () => {
    const target = newTarget();
    await publish(env.fileSystemId, target);
    const calls = await tls().mountNfs4.calls();
    const call = calls.at(-1)!;
    expect(call.source).toBe("127.0.0.1:/");
    expect(call.target).toBe(target);
    const port = portOf(call.options);
    // mount(8) adds rw.
    expect(call.options).toEqual(["rw", ...NFS, `port=${port}`]);
    // efs-utils' port range; even: no iam.
    expect(port).toBeGreaterThanOrEqual(20049);
    expect(port).toBeLessThan(21049);
    expect(port % 2).toBe(0);
    expect(await listening(port)).toBe(true);

    const seen = tls().targets.connections.filter((c) => c.path === "/");
    expect(seen.at(-1)).toMatchObject({
      fileSystemId: env.fileSystemId,
      accessPointId: undefined,
      iam: false,
      serverName: `${env.fileSystemId}.efs.${env.aws.region}.amazonaws.com`,
    });
    expect(tls().targets.addresses).toContain(seen.at(-1)!.address);

    // What a pod writes is in the file system the mount target serves.
    await writeFile(join(target, "hello"), "through TLS\n");
    expect(await readFile(join(tls().root, env.fileSystemId, "hello"), "utf8")).toBe("through TLS\n");

    // Idempotent: the same publish again mounts nothing more and keeps the relay.
    await publish(env.fileSystemId, target);
    expect(await tls().mountNfs4.calls()).toHaveLength(calls.length);
    expect(await findMountsAt(target)).toHaveLength(1);

    // The relay's figures: one mount; two connections (the mount helper's, and the look above at
    // whether the port listens); the bytes both ways.
    const fs = `file_system="${env.fileSystemId}"`;
    expect(await metric(`aws_efs_csi_tls_relay_mounts{${fs}}`)).toBe(1);
    expect(await metric(`aws_efs_csi_tls_relay_connections_total{${fs}}`)).toBe(2);
    expect(await metric(`aws_efs_csi_tls_relay_bytes_total{${fs},direction="to_server"}`)).toBe(
      "MOUNT /\n".length,
    );
    expect(await metric(`aws_efs_csi_tls_relay_bytes_total{${fs},direction="from_server"}`)).toBeGreaterThan(
      3,
    );
    expect(await metric(`aws_efs_csi_tls_relay_refused_total{${fs}}`)).toBe(0);

    await unpublish(env.fileSystemId, target);
    expect(await findMountsAt(target)).toEqual([]);
    expect(await listening(port)).toBe(false);
    // The relay is gone; what it carried stays counted.
    expect(await metric(`aws_efs_csi_tls_relay_mounts{${fs}}`)).toBe(0);
    expect(await metric(`aws_efs_csi_tls_relay_connections_total{${fs}}`)).toBe(2);
  });

  it("puts the access point in the certificate, and signs for iam (an odd port)", async () => {
    const ap = await env.aws.efs.send(
      new CreateAccessPointCommand({
        FileSystemId: env.fileSystemId,
        PosixUser: { Uid: 1000, Gid: 1000 },
        RootDirectory: {
          Path: "/tenant",
          CreationInfo: { OwnerUid: 1000, OwnerGid: 1000, Permissions: "750" },
        },
      }),
    );
    const volumeId = `${env.fileSystemId}::${ap.AccessPointId}`;
    const target = newTarget();
    await publish(volumeId, target, ["iam", "noac"]);
    const call = (await tls().mountNfs4.calls()).at(-1)!;
    const port = portOf(call.options);
    expect(port % 2).toBe(1);
    expect(call.options).toEqual(["rw", ...NFS, `port=${port}`, "noac"]);
    expect(tls().targets.connections.at(-1)).toMatchObject({
      fileSystemId: env.fileSystemId,
      accessPointId: ap.AccessPointId,
      iam: true,
    });
    await writeFile(join(target, "f"), "x");
    expect(await readFile(join(tls().root, env.fileSystemId, "tenant", "f"), "utf8")).toBe("x");
    await unpublish(volumeId, target);
    expect(await listening(port)).toBe(false);
  });

  it("refuses efs-utils' options the relay does not take, naming the flag; nothing is mounted or left listening", async () => {
    const target = newTarget();
    const before = (await tls().mountNfs4.calls()).length;
    const connections = tls().targets.connections.length;
    const err = await publish(env.fileSystemId, target, ["tlsport=20500"]).then(
      () => undefined,
      (e: { code: number; details: string }) => e,
    );
    expect(err?.code).toBe(status.INVALID_ARGUMENT);
    expect(err?.details).toContain("mount flag tlsport=20500");
    expect(await tls().mountNfs4.calls()).toHaveLength(before);
    expect(await findMountsAt(target)).toEqual([]);
    // Refused before any relay was started: the mount target heard nothing.
    expect(tls().targets.connections).toHaveLength(connections);
  });
});

describe.skipIf(skip)(
  "EFS with TLS: a mount target that fails the checks is refused, and the mount with it",
  () => {
    for (const [what, options, reason] of [
      [
        "a certificate for another name",
        { certificateName: "fs-ffffffffffffffff0.efs.us-east-1.amazonaws.com" },
        "not for the file system's name",
      ],
      ["a CA the driver does not trust", { trustTargets: false }, "does not chain to a trusted CA"],
      ["a mount target that does not speak TLS", { plainTargets: true }, "did not complete a TLS handshake"],
    ] as const) {
      it(what, async () => {
        const env = await startEfsEnv({ tls: true, mode: "node", ...options });
        try {
          const target = join(env.dir, "pods", "p", "volumes", "kubernetes.io~csi", "pv", "mount");
          const err = await env.client
            .call("Node", "NodePublishVolume", {
              volume_id: env.fileSystemId,
              target_path: target,
              volume_capability: capability(),
            })
            .then(
              (r: Reply) => r,
              (e: { code: number; details: string }) => e,
            );
          expect(err).toMatchObject({ code: status.UNAVAILABLE });
          expect((err as { details: string }).details).toContain(reason);
          expect(await env.tls!.mountNfs4.calls()).toEqual([]);
          expect((await listMounts()).filter((m) => m.mountPoint.startsWith(env.dir))).toEqual([]);
          const log = env.driver.stderr;
          expect(log).toContain(reason);
        } finally {
          await env.stop();
        }
      }, 300_000);
    }
  },
);
