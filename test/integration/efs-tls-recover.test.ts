// The TLS relays after a restart of the node plugin: TlsMounts.recover finds the mounts a previous
// run made and relays again on their ports, for the file system and access point kubelet's
// vol_data.json names. This machine's kernel has no NFS client, so no real NFS mount can be in its
// mount table: the mount table lines are written here as the kernel writes them for such a mount
// (nfs4, 127.0.0.1:/path, port= among the options); everything after (vol_data.json, the relay,
// TLS to the stand-in mount target) is real. Needs root (addresses on lo) and the openssl command.

import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { CreateAccessPointCommand } from "@aws-sdk/client-efs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TlsMounts } from "../../src/efs/tls/tls-mounts.ts";
import type { MountEntry } from "../../src/host/mounts.ts";
import { createLogger } from "../../src/log.ts";
import { type EfsTlsTargets, startEfsTlsTargets } from "../harness/efs-tls-target.ts";
import { type FakeAws, startFakeAws } from "../harness/fake-aws.ts";
import { hasOpenssl } from "../harness/test-ca.ts";

const isRoot = process.getuid?.() === 0;
const skip = !isRoot
  ? "they put mount target addresses on lo and need root"
  : !hasOpenssl
    ? "they need the openssl command"
    : "";
if (skip) console.log(`efs-tls-recover tests skipped: ${skip}`);

const DRIVER = "efs.csi.aws.com";

/** A mountinfo line of an NFS mount through a relay, as the kernel shows one. */
function nfsMount(mountPoint: string, port: number, path = "/"): MountEntry {
  return {
    id: 900 + port,
    parentId: 1,
    major: 0,
    minor: 60,
    root: "/",
    mountPoint,
    mountOptions: ["rw", "relatime"],
    optionalFields: [],
    fsType: "nfs4",
    source: `127.0.0.1:${path}`,
    superOptions: [
      "rw",
      "vers=4.1",
      "rsize=1048576",
      "wsize=1048576",
      "namlen=255",
      "hard",
      "noresvport",
      "proto=tcp",
      `port=${port}`,
      "timeo=600",
      "retrans=2",
      "sec=sys",
      "clientaddr=127.0.0.1",
      "local_lock=none",
      "addr=127.0.0.1",
    ],
  };
}

/** What the NFS client does when its connection is gone: connect again, and speak. */
function reconnect(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("connect", () => socket.write(`MOUNT ${path}\n`));
    socket.on("data", (chunk: Buffer) => {
      socket.end();
      resolve(chunk.toString().trim());
    });
    socket.on("error", reject);
  });
}

describe.skipIf(skip)("EFS TLS relays recovered from the mount table after a restart", () => {
  let dir = "";
  let aws: FakeAws;
  let fileSystemId = "";
  let targets: EfsTlsTargets;
  let relays: TlsMounts | undefined;
  const kubelet = () => join(dir, "kubelet");
  const volumeDir = (pod: string, pv: string) =>
    join(kubelet(), "pods", pod, "volumes", "kubernetes.io~csi", pv, "mount");
  const newRelays = () =>
    new TlsMounts({
      region: aws.region,
      zone: `${aws.region}a`,
      log: createLogger("silent"),
      efs: {
        describeMountTargets: async () => {
          throw new Error("not asked: the test resolves names");
        },
      },
      resolve: async () => targets.addresses[0],
      extraCa: targets.ca.cert,
      version: "test",
      credentials: async () => ({ accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret" }),
    });
  const volumeData = async (mountPoint: string, volumeHandle: string, driverName = DRIVER) => {
    await mkdir(mountPoint, { recursive: true });
    await writeFile(
      join(dirname(mountPoint), "vol_data.json"),
      JSON.stringify({
        specVolID: "pv",
        volumeHandle,
        driverName,
        nodeName: "n",
        volumeLifecycleMode: "Persistent",
      }),
    );
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "efs-tls-recover-"));
    aws = await startFakeAws();
    fileSystemId = await aws.createFileSystem();
    targets = await startEfsTlsTargets({ aws, fileSystemId, root: join(dir, "file-systems"), dir });
    await mkdir(join(dir, "file-systems", fileSystemId), { recursive: true });
  }, 120_000);
  afterAll(async () => {
    await relays?.closeAll();
    await targets?.stop();
    await aws?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("relays again on each mount's port, for its file system and access point, with iam by the port's parity", async () => {
    const ap = await aws.efs.send(
      new CreateAccessPointCommand({
        FileSystemId: fileSystemId,
        RootDirectory: { Path: "/ap", CreationInfo: { OwnerUid: 0, OwnerGid: 0, Permissions: "755" } },
      }),
    );
    const whole = volumeDir("pod-a", "pv-whole");
    const shared = volumeDir("pod-b", "pv-ap");
    const foreign = volumeDir("pod-c", "pv-other-driver");
    const outside = join(dir, "elsewhere", "mount");
    await volumeData(whole, fileSystemId);
    await volumeData(shared, `${fileSystemId}::${ap.AccessPointId}`);
    await volumeData(foreign, fileSystemId, "other.csi.example.com");
    await volumeData(outside, fileSystemId);
    const table = [
      nfsMount(whole, 20100),
      nfsMount(shared, 20101),
      nfsMount(foreign, 20102),
      nfsMount(outside, 20104),
      // Not through a relay: plain NFS to a mount target.
      {
        ...nfsMount(volumeDir("pod-d", "pv-plain"), 20106),
        source: `${fileSystemId}.efs.us-east-1.amazonaws.com:/`,
      },
    ];

    relays = newRelays();
    const recovered = await relays.recover(table, (p) => p.startsWith(`${kubelet()}/`), DRIVER);
    expect(recovered).toBe(2);
    expect(
      relays
        .stats()
        .map(({ port, targetPath, fileSystemId: fs, accessPointId }) => ({
          port,
          targetPath,
          fs,
          accessPointId,
        }))
        .sort((a, b) => a.port - b.port),
    ).toEqual([
      { port: 20100, targetPath: whole, fs: fileSystemId, accessPointId: undefined },
      { port: 20101, targetPath: shared, fs: fileSystemId, accessPointId: ap.AccessPointId },
    ]);

    // The NFS clients reconnect to the same ports and get through, as the same clients.
    expect(await reconnect(20100, "/")).toMatch(/^OK /);
    expect(targets.connections.at(-1)).toMatchObject({ fileSystemId, accessPointId: undefined, iam: false });
    expect(await reconnect(20101, "/")).toMatch(/^OK .*\/ap\/?$/);
    expect(targets.connections.at(-1)).toMatchObject({
      fileSystemId,
      accessPointId: ap.AccessPointId,
      iam: true,
    });
    expect(relays.totals()).toEqual([
      expect.objectContaining({ fileSystemId, relays: 2, connections: 2, failures: 0 }),
    ]);

    // Unpublished: the relay goes, its figures stay in the totals.
    await relays.close(whole);
    await expect(reconnect(20100, "/")).rejects.toThrow(/ECONNREFUSED/);
    expect(relays.totals()).toEqual([expect.objectContaining({ fileSystemId, relays: 1, connections: 2 })]);
  });

  it("presents a new client certificate to connections after each renewal", async () => {
    await relays?.closeAll();
    relays = new TlsMounts({
      region: aws.region,
      zone: `${aws.region}a`,
      log: createLogger("silent"),
      resolve: async () => targets.addresses[0],
      extraCa: targets.ca.cert,
      version: "test",
      renewEveryMs: 300,
    });
    const target = volumeDir("pod-r", "pv-renewed");
    const port = await relays.open({ fileSystemId, iam: false }, target);
    expect(await reconnect(port, "/")).toMatch(/^OK /);
    const first = targets.connections.at(-1)!.certificateSerial;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(await reconnect(port, "/")).toMatch(/^OK /);
    const second = targets.connections.at(-1)!.certificateSerial;
    expect(first).toBeDefined();
    expect(second).toBeDefined();
    expect(second).not.toBe(first);
    await relays.close(target);
  });

  it("leaves a mount it cannot serve again to its NFS client, and serves the others", async () => {
    await relays?.closeAll();
    const gone = volumeDir("pod-e", "pv-gone");
    const ok = volumeDir("pod-f", "pv-ok");
    await volumeData(gone, "fs-0000000000000000f");
    await volumeData(ok, fileSystemId);
    relays = new TlsMounts({
      region: aws.region,
      zone: `${aws.region}a`,
      log: createLogger("silent"),
      // The file system's name resolves for the one that exists only.
      resolve: async (name) => (name.startsWith(fileSystemId) ? targets.addresses[0] : undefined),
      extraCa: targets.ca.cert,
      version: "test",
    });
    const recovered = await relays.recover([nfsMount(gone, 20200), nfsMount(ok, 20202)], () => true, DRIVER);
    expect(recovered).toBe(1);
    expect(relays.stats().map((s) => s.port)).toEqual([20202]);
  });
});
