// TlsMounts' choice of mount target and its refusals, before any connection is made; and which
// mount table lines are relayed mounts. The relaying itself is tested in
// test/integration/efs-tls*.test.ts against TLS stand-ins for the mount targets.
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { EfsError, type MountTarget } from "../../src/efs/cloud.ts";
import { relayedPort, TlsMounts } from "../../src/efs/tls/tls-mounts.ts";
import type { MountEntry } from "../../src/host/mounts.ts";
import { createLogger } from "../../src/log.ts";

const FS = "fs-0123456789abcdef0";

function relays(targets: MountTarget[] | Error, resolved?: string) {
  const asked: string[] = [];
  const mounts = new TlsMounts({
    region: "us-east-1",
    zone: "us-east-1a",
    log: createLogger("silent"),
    efs: {
      describeMountTargets: async (id) => {
        asked.push(id);
        if (targets instanceof Error) throw targets;
        return targets;
      },
    },
    resolve: async (name) => {
      asked.push(name);
      return resolved;
    },
    version: "test",
  });
  return { mounts, asked };
}

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error("expected a refusal");
    },
    (err: { code: number; message: string }) => err,
  );

describe("TlsMounts: where the relay would connect", () => {
  it("asks DNS for the file system's name (with az, the zone's name) before the API", async () => {
    const { mounts, asked } = relays([]);
    await refusal(mounts.open({ fileSystemId: FS, iam: false, az: "us-east-1b" }, "/t"));
    expect(asked[0]).toBe(`us-east-1b.${FS}.efs.us-east-1.amazonaws.com`);
    expect(asked[1]).toBe(FS);
  });

  it("without DNS and without a mount target in the node's zone: FAILED_PRECONDITION naming the zones that have one", async () => {
    const { mounts } = relays([
      { id: "fsmt-1", zone: "us-east-1b", lifeCycleState: "available", ipAddress: "10.0.2.4" },
      { id: "fsmt-2", zone: "us-east-1a", lifeCycleState: "creating", ipAddress: "10.0.1.4" },
    ]);
    const err = await refusal(mounts.open({ fileSystemId: FS, iam: false }, "/t"));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.message).toContain("no available mount target in us-east-1a");
    expect(err.message).toContain("it has in: us-east-1b");
  });

  it("a file system EFS does not know: NOT_FOUND", async () => {
    const { mounts } = relays(
      new EfsError("FileSystemNotFound", "FileSystemNotFound", "no such file system"),
    );
    const err = await refusal(mounts.open({ fileSystemId: FS, iam: false }, "/t"));
    expect(err.code).toBe(status.NOT_FOUND);
  });

  it("iam without credentials: FAILED_PRECONDITION, before anything listens", async () => {
    const { mounts } = relays([], "127.0.0.9");
    const err = await refusal(mounts.open({ fileSystemId: FS, iam: true }, "/t"));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.message).toContain("iam");
    expect(mounts.stats()).toEqual([]);
  });
});

describe("relayedPort", () => {
  const entry = (over: Partial<MountEntry>): MountEntry => ({
    id: 1,
    parentId: 0,
    major: 0,
    minor: 60,
    root: "/",
    mountPoint: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount",
    mountOptions: ["rw"],
    optionalFields: [],
    fsType: "nfs4",
    source: "127.0.0.1:/",
    superOptions: ["rw", "vers=4.1", "port=20123", "addr=127.0.0.1"],
    ...over,
  });
  it("is the port of an NFS mount of 127.0.0.1", () => {
    expect(relayedPort(entry({}))).toBe(20123);
  });
  it("is undefined for plain NFS, other file systems and a mount without a port", () => {
    expect(relayedPort(entry({ source: `${FS}.efs.us-east-1.amazonaws.com:/` }))).toBeUndefined();
    expect(relayedPort(entry({ fsType: "ext4" }))).toBeUndefined();
    expect(relayedPort(entry({ superOptions: ["rw", "vers=4.1"] }))).toBeUndefined();
  });
});
