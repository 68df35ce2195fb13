import { describe, expect, it } from "vitest";
import { invalidPathReason, MAX_NAME_BYTES, MAX_PATH_BYTES } from "../../src/host/paths.ts";

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
    expect(invalidPathReason(long)).toMatch(/at most 4096 bytes/);
    expect(invalidPathReason(`/a/${"y".repeat(MAX_NAME_BYTES)}`)).toBeUndefined();
    expect(invalidPathReason(`/a/${"y".repeat(MAX_NAME_BYTES + 1)}`)).toMatch(/component longer/);
    // Bytes, not characters: 128 two-byte characters are 256 bytes.
    expect(invalidPathReason(`/a/${"é".repeat(128)}`)).toMatch(/component longer/);
  });
});
