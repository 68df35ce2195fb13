import { lstat, mkdir, mkdtemp, readdir, realpath, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  invalidPathReason,
  KubeletDirs,
  MAX_NAME_BYTES,
  MAX_PATH_BYTES,
  makeDirectories,
  makeFile,
} from "../../src/host/paths.ts";

describe("invalidPathReason", () => {
  it("accepts the paths kubelet sends", () => {
    expect(
      invalidPathReason("/var/lib/kubelet/plugins/kubernetes.io/csi/ebs.csi.aws.com/0a1b2c/globalmount"),
    ).toBeUndefined();
    expect(
      invalidPathReason("/var/lib/kubelet/pods/8d6a-11/volumes/kubernetes.io~csi/pvc-1234/mount"),
    ).toBeUndefined();
    expect(invalidPathReason("/tmp/csi-mount/target")).toBeUndefined();
    expect(invalidPathReason("/a b/ünïcode")).toBeUndefined();
  });

  it.each([
    ["", /empty/],
    ["relative/path", /absolute/],
    ["./x", /absolute/],
    ["/", /root/],
    ["/var/lib/kubelet/", /end with/],
    ["/var/lib/../etc", /"\.\."/],
    ["/..", /"\.\."/],
    ["/var//lib", /normalized/],
    ["/var/./lib", /normalized/],
    ["/var/lib/.", /normalized/],
    ["/var/\0/x", /NUL/],
  ])("rejects %j", (p, reason) => {
    expect(invalidPathReason(p)).toMatch(reason);
  });

  it("allows dots inside names", () => {
    expect(invalidPathReason("/a/..b/c../.hidden")).toBeUndefined();
  });

  it("limits the whole path to PATH_MAX bytes and each component to NAME_MAX bytes", () => {
    const segment = "x".repeat(200);
    const long = `/${Array(30).fill(segment).join("/")}`;
    expect(Buffer.byteLength(long)).toBeGreaterThan(MAX_PATH_BYTES);
    expect(invalidPathReason(long)).toMatch(/at most 4095 bytes/);
    expect(invalidPathReason(`/a/${"y".repeat(MAX_NAME_BYTES)}`)).toBeUndefined();
    expect(invalidPathReason(`/a/${"y".repeat(MAX_NAME_BYTES + 1)}`)).toMatch(/component longer/);
    // Bytes, not characters: 128 two-byte characters are 256 bytes.
    expect(invalidPathReason(`/a/${"é".repeat(128)}`)).toMatch(/component longer/);
  });
});

describe("KubeletDirs", () => {
  let root: string;
  let outside: string;
  let dirs: KubeletDirs;
  beforeAll(async () => {
    root = await realpath(await mkdtemp(join(tmpdir(), "kubelet-")));
    outside = await realpath(await mkdtemp(join(tmpdir(), "outside-")));
    await mkdir(join(root, "pods", "p1"), { recursive: true });
    await symlink(outside, join(root, "pods", "p1", "escape"));
    await symlink(join(root, "pods"), join(root, "pods-link"));
    dirs = await KubeletDirs.open([root, "/var/lib/k0s/kubelet"]);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });

  it("refuses from the string alone what lies outside every kubelet directory", () => {
    expect(dirs.lexicalReason(join(root, "pods/p1/mount"))).toBeUndefined();
    expect(dirs.lexicalReason("/var/lib/k0s/kubelet/pods/x")).toBeUndefined();
    expect(dirs.lexicalReason(`${root}-other/x`)).toMatch(/kubelet directory/);
    expect(dirs.lexicalReason("/proc/x")).toMatch(/must lie under the kubelet directory/);
    expect(dirs.lexicalReason(root)).toBeUndefined();
  });

  it("resolves the existing parents and accepts missing components", async () => {
    expect(await dirs.confine(join(root, "pods/p1/new/mount"))).toEqual({
      ok: true,
      path: join(root, "pods/p1/new/mount"),
    });
    // A link inside the directory that stays inside it is followed to its real path.
    expect(await dirs.confine(join(root, "pods-link/p1/mount"))).toEqual({
      ok: true,
      path: join(root, "pods/p1/mount"),
    });
  });

  it("refuses a symlink leading out of the directory, and a last component that is a symlink", async () => {
    expect(await dirs.confine(join(root, "pods/p1/escape/mount"))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/leads out of the kubelet directory through a symbolic link/),
    });
    expect(await dirs.confine(join(root, "pods/p1/escape"))).toMatchObject({
      ok: false,
      reason: "must not be a symbolic link",
    });
  });

  it("makeDirectories and makeFile create what is missing and refuse to go through a link", async () => {
    await makeDirectories(join(root, "pods/p2/volumes/mount"));
    expect((await lstat(join(root, "pods/p2/volumes/mount"))).isDirectory()).toBe(true);
    await makeFile(join(root, "pods/p2/block/dev"));
    expect((await lstat(join(root, "pods/p2/block/dev"))).isFile()).toBe(true);
    await makeFile(join(root, "pods/p2/block/dev")); // again: idempotent
    await symlink(join(outside, "f"), join(root, "pods/p2/link-file"));
    await expect(makeFile(join(root, "pods/p2/link-file"))).rejects.toThrow(/symbolic link/);
    await expect(makeDirectories(join(root, "pods/p1/escape"))).rejects.toThrow(/not a directory/);
    expect(await readdir(outside)).toEqual([]);
  });
});
