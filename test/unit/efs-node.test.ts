// The EFS node's answers that need no mount: validation, NOT_FOUND, capabilities, node info.
// Mounting is covered by test/integration/efs-node.test.ts and csi-sanity (scripts/sanity-efs.ts).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { statusName } from "../../src/csi/status.ts";
import type { NodePublishVolumeRequest } from "../../src/csi/types.ts";
import { EfsNode, statFilesystem } from "../../src/efs/node.ts";
import { KubeletDirs } from "../../src/host/paths.ts";
import { createLogger } from "../../src/log.ts";
import type { RpcContext } from "../../src/server/rpc.ts";

const ctx: RpcContext = {
  requestId: "test",
  log: createLogger("silent"),
  signal: new AbortController().signal,
};
const FS = "fs-0123456789abcdef0";
const node = new EfsNode({
  instanceId: "i-0123456789abcdef0",
  zone: "us-east-1a",
  region: "us-east-1",
  // Every test path lies in a directory below tmpdir(): it stands in for /var/lib/kubelet.
  kubeletDirs: await KubeletDirs.open([tmpdir()]),
  log: ctx.log,
  efsHelperPath: "/nonexistent/mount.efs",
});

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "efs-node-unit-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function codeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "OK";
  } catch (err) {
    if (!(err instanceof CsiError)) throw err;
    return statusName(err.code);
  }
}

const publishRequest = (over: Partial<NodePublishVolumeRequest>): NodePublishVolumeRequest =>
  ({
    volume_id: FS,
    target_path: join(dir, "target"),
    staging_target_path: "",
    volume_capability: {
      mount: { fs_type: "", mount_flags: [] },
      access_mode: { mode: "MULTI_NODE_MULTI_WRITER" },
    },
    readonly: false,
    secrets: {},
    volume_context: {},
    publish_context: {},
    ...over,
  }) as NodePublishVolumeRequest;

describe("EfsNode", () => {
  it("reports the instance, its zone and no attachment limit", async () => {
    expect(await node.NodeGetInfo()).toEqual({
      node_id: "i-0123456789abcdef0",
      max_volumes_per_node: 0,
      accessible_topology: { segments: { "topology.kubernetes.io/zone": "us-east-1a" } },
    });
  });

  it("advertises volume stats and volume health, and no staging", async () => {
    const { capabilities } = await node.NodeGetCapabilities();
    expect(capabilities?.map((c) => c.rpc?.type)).toEqual(["GET_VOLUME_STATS", "GET_VOLUME_HEALTH"]);
  });

  it("refuses a publish without volume id, target path or capability, a bad handle or block access", async () => {
    expect(await codeOf(node.NodePublishVolume(publishRequest({ volume_id: "" }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    expect(await codeOf(node.NodePublishVolume(publishRequest({ target_path: "" }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    expect(await codeOf(node.NodePublishVolume(publishRequest({ target_path: "rel/path" }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    expect(await codeOf(node.NodePublishVolume(publishRequest({ volume_capability: null }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    expect(await codeOf(node.NodePublishVolume(publishRequest({ volume_id: "vol-123" }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    const block = { block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" } } as never;
    expect(await codeOf(node.NodePublishVolume(publishRequest({ volume_capability: block }), ctx))).toBe(
      "INVALID_ARGUMENT",
    );
  });

  it("refuses an access point without amazon-efs-utils before creating the target", async () => {
    const target = join(dir, "ap-target");
    const request = publishRequest({ volume_id: `${FS}::fsap-0123456789abcdef0`, target_path: target });
    expect(await codeOf(node.NodePublishVolume(request, ctx))).toBe("FAILED_PRECONDITION");
    await expect(import("node:fs/promises").then((fs) => fs.stat(target))).rejects.toMatchObject({
      code: "ENOENT",
    });
  });

  it("unpublishes idempotently: nothing mounted, no target, is OK", async () => {
    const request = { volume_id: FS, target_path: join(dir, "never-published") };
    expect(await codeOf(node.NodeUnpublishVolume(request, ctx))).toBe("OK");
    expect(await codeOf(node.NodeUnpublishVolume({ volume_id: FS, target_path: "" }, ctx))).toBe(
      "INVALID_ARGUMENT",
    );
    expect(await codeOf(node.NodeUnpublishVolume({ volume_id: "", target_path: dir }, ctx))).toBe(
      "INVALID_ARGUMENT",
    );
  });

  it("answers volume stats with NOT_FOUND for unknown volumes and paths, INVALID_ARGUMENT for missing fields", async () => {
    const stats = (volume_id: string, volume_path: string) =>
      codeOf(node.NodeGetVolumeStats({ volume_id, volume_path, staging_target_path: "" }));
    expect(await stats("", "some/path")).toBe("INVALID_ARGUMENT");
    expect(await stats(FS, "")).toBe("INVALID_ARGUMENT");
    expect(await stats("fake-volume-id", "some/path")).toBe("NOT_FOUND");
    expect(await stats(FS, "some/path")).toBe("NOT_FOUND");
    // A directory with nothing mounted on it is not a published volume.
    expect(await stats(FS, dir)).toBe("NOT_FOUND");
  });
});

describe("statFilesystem", () => {
  it("reads statfs through a child process", async () => {
    const result = await statFilesystem(dir, 10_000);
    expect("totalBytes" in result && result.totalBytes > 0 && result.usedBytes <= result.totalBytes).toBe(
      true,
    );
  });

  it("reports a path it cannot statfs as INACCESSIBLE", async () => {
    const result = await statFilesystem(join(dir, "missing"), 10_000);
    expect(result).toMatchObject({ status: "INACCESSIBLE", reason: "FilesystemUnusable" });
  });
});
