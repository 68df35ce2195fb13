import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  answersFromMemory,
  blockDeviceSizeBytes,
  FormatRefusedError,
  isBlank,
  isCompatibleFs,
  mkfsArgsFromVolumeContext,
  parseBlkidExport,
} from "../../src/host/blockdev.ts";
import { loopDeviceSkipReason } from "../harness/host-support.ts";

describe("parseBlkidExport", () => {
  it("reads a filesystem", () => {
    const v = parseBlkidExport(
      "DEVNAME=/dev/loop0\nUUID=770b4438-7937-473e-9af0-b9d7d2aaf5db\nBLOCK_SIZE=512\nTYPE=xfs\nUSAGE=filesystem\n",
    );
    expect(v).toMatchObject({
      TYPE: "xfs",
      UUID: "770b4438-7937-473e-9af0-b9d7d2aaf5db",
      USAGE: "filesystem",
    });
  });

  it("reads a partition table", () => {
    expect(parseBlkidExport("DEVNAME=/dev/loop0\nPTUUID=12345678\nPTTYPE=dos\n")).toMatchObject({
      PTTYPE: "dos",
    });
  });

  it("unescapes values and keeps '=' inside them", () => {
    expect(parseBlkidExport("LABEL=my\\ data\\ vol\nX=a=b\n")).toEqual({ LABEL: "my data vol", X: "a=b" });
  });
});

describe("answersFromMemory: which filesystems NodeGetVolumeStats reads on the event loop", () => {
  it("ext2/3/4 without quotas: statfs and the root's lstat never wait for the disk", () => {
    expect(answersFromMemory("ext4", ["rw", "errors=remount-ro"])).toBe(true);
    expect(answersFromMemory("ext3", ["rw"])).toBe(true);
  });

  it("not with quotas (statfs may read one from disk), not xfs, never NFS or anything else", () => {
    expect(answersFromMemory("ext4", ["rw", "prjquota"])).toBe(false);
    expect(answersFromMemory("ext4", ["rw", "usrjquota=aquota.user", "jqfmt=vfsv0"])).toBe(false);
    expect(answersFromMemory("xfs", ["rw", "attr2"])).toBe(false);
    expect(answersFromMemory("nfs4", ["rw"])).toBe(false);
    expect(answersFromMemory("tmpfs", ["rw"])).toBe(false);
  });
});

describe("isBlank", () => {
  const probe = {
    fsType: undefined,
    ptType: undefined,
    uuid: undefined,
    label: undefined,
    ambivalent: false,
    values: {},
  };
  it("is true only when nothing was found", () => {
    expect(isBlank(probe)).toBe(true);
    expect(isBlank({ ...probe, fsType: "ext4" })).toBe(false);
    expect(isBlank({ ...probe, ptType: "gpt" })).toBe(false);
    expect(isBlank({ ...probe, ambivalent: true })).toBe(false);
  });
});

describe("mkfsArgsFromVolumeContext", () => {
  it("maps every key for ext4, in table order, whatever the key's case", () => {
    expect(
      mkfsArgsFromVolumeContext("ext4", {
        ext4clustersize: "16384",
        BlockSize: "4096",
        inodesize: "512",
        bytesPerInode: "8192",
        numberofinodes: "200192",
        ext4BigAlloc: "true",
        "csi.storage.k8s.io/pvc/name": "ignored",
        partition: "1",
      }),
    ).toEqual({
      ok: true,
      args: ["-b", "4096", "-I", "512", "-i", "8192", "-N", "200192", "-O", "bigalloc", "-C", "16384"],
    });
  });

  it("uses xfs's suboption syntax for block and inode size", () => {
    expect(mkfsArgsFromVolumeContext("xfs", { blocksize: "1024", inodesize: "512" })).toEqual({
      ok: true,
      args: ["-b", "size=1024", "-i", "size=512"],
    });
  });

  it("gives no arguments for an empty context or ext4BigAlloc=false", () => {
    expect(mkfsArgsFromVolumeContext("ext4", {})).toEqual({ ok: true, args: [] });
    expect(mkfsArgsFromVolumeContext("ext4", { ext4bigalloc: "false" })).toEqual({ ok: true, args: [] });
  });

  it.each([
    ["xfs", "bytesperinode"],
    ["xfs", "numberofinodes"],
    ["xfs", "ext4bigalloc"],
    ["ext3", "ext4clustersize"],
    ["ext2", "ext4bigalloc"],
  ] as const)("rejects %s with %s, naming the key", (fsType, key) => {
    const r = mkfsArgsFromVolumeContext(fsType, { [key]: key === "ext4bigalloc" ? "true" : "4096" });
    expect(r).toEqual({ ok: false, key, reason: `not supported with filesystem type ${fsType}` });
  });

  it("rejects values that are not alphanumeric, so nothing can pass as a flag", () => {
    expect(mkfsArgsFromVolumeContext("ext4", { blockSize: "-F" })).toMatchObject({
      ok: false,
      key: "blockSize",
    });
    expect(mkfsArgsFromVolumeContext("ext4", { inodeSize: "256 -q" })).toMatchObject({
      ok: false,
      key: "inodeSize",
    });
    expect(mkfsArgsFromVolumeContext("ext4", { numberOfInodes: "" })).toMatchObject({ ok: false });
    expect(mkfsArgsFromVolumeContext("ext4", { ext4BigAlloc: "yes" })).toMatchObject({
      ok: false,
      key: "ext4BigAlloc",
    });
  });

  it("rejects a cluster size without bigalloc", () => {
    expect(mkfsArgsFromVolumeContext("ext4", { ext4ClusterSize: "16384" })).toMatchObject({
      ok: false,
      key: "ext4ClusterSize",
      reason: expect.stringMatching(/ext4BigAlloc=true/),
    });
  });
});

describe("isCompatibleFs", () => {
  it("accepts the same type, and ext2/ext3 under ext4 (the ext4 driver mounts them)", () => {
    expect(isCompatibleFs("xfs", "xfs")).toBe(true);
    expect(isCompatibleFs("ext4", "ext3")).toBe(true);
    expect(isCompatibleFs("ext4", "ext2")).toBe(true);
    expect(isCompatibleFs("ext3", "ext4")).toBe(false);
    expect(isCompatibleFs("xfs", "ext4")).toBe(false);
    expect(isCompatibleFs("ext4", "xfs")).toBe(false);
    expect(isCompatibleFs("ext4", "crypto_LUKS")).toBe(false);
  });
});

describe("FormatRefusedError", () => {
  it("names the device and both types", () => {
    const e = new FormatRefusedError("/dev/nvme1n1", "xfs", "other-filesystem", "ext4");
    expect(e.message).toBe(
      "refusing to format /dev/nvme1n1 as xfs: it already holds a filesystem of type ext4, not xfs; its data was left untouched",
    );
    expect(new FormatRefusedError("/dev/x", "ext4", "partition-table", "gpt").message).toMatch(
      /partition table \(gpt\)/,
    );
  });
});

/**
 * A loop device over a 48 MiB sparse file, as a real block device of known size (needs root);
 * removed after the test, also when it fails.
 */
const loopSkip = loopDeviceSkipReason(["blockdev", "truncate"]);
if (loopSkip) console.log(`blockDeviceSizeBytes: skipped, ${loopSkip}`);

describe.skipIf(loopSkip !== undefined)("blockDeviceSizeBytes", () => {
  const SIZE = 48 * 1024 * 1024;
  let dir: string;
  let node: string | undefined;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "blockdev-size-"));
    const file = join(dir, "disk");
    spawnSync("truncate", ["-s", String(SIZE), file]);
    const out = spawnSync("losetup", ["--find", "--show", file], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(`losetup failed: ${out.stderr}`);
    node = out.stdout.trim();
  });
  afterAll(() => {
    if (node) spawnSync("losetup", ["-d", node]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("reads the size sysfs gives, as blockdev --getsize64 does", async () => {
    const rdev = statSync(node!).rdev;
    const blockdev = Number(
      spawnSync("blockdev", ["--getsize64", node!], { encoding: "utf8" }).stdout.trim(),
    );
    expect(blockdev).toBe(SIZE);
    expect(await blockDeviceSizeBytes(rdev, node!)).toBe(SIZE);
    // A device number sysfs does not know: blockdev is asked about the path instead.
    expect(await blockDeviceSizeBytes(0, node!)).toBe(SIZE);
  });
});
