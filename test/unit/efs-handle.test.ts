import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { formatVolumeHandle, parseVolumeHandle } from "../../src/efs/handle.ts";

const FS = "fs-0123456789abcdef0";
const AP = "fsap-0123456789abcdef0";

describe("parseVolumeHandle", () => {
  it.each([
    [FS, { fileSystemId: FS, path: "/" }],
    ["fs-abcd1234", { fileSystemId: "fs-abcd1234", path: "/" }],
    [`${FS}:`, { fileSystemId: FS, path: "/" }],
    [`${FS}::`, { fileSystemId: FS, path: "/" }],
    [`${FS}:/data/shared`, { fileSystemId: FS, path: "/data/shared" }],
    [`${FS}::${AP}`, { fileSystemId: FS, path: "/", accessPointId: AP }],
    [`${FS}:/sub:${AP}`, { fileSystemId: FS, path: "/sub", accessPointId: AP }],
    // moto's access point ids have 8 hex digits; the EFS API and the official driver allow 8 to 40.
    [`${FS}::fsap-abcd1234`, { fileSystemId: FS, path: "/", accessPointId: "fsap-abcd1234" }],
    [`efs:${FS}::${AP}`, { fileSystemId: FS, path: "/", accessPointId: AP }],
    [`efs:${FS}`, { fileSystemId: FS, path: "/" }],
    [`efs:${FS}:/a:${AP}`, { fileSystemId: FS, path: "/a", accessPointId: AP }],
  ])("accepts %s", (handle, expected) => {
    expect(parseVolumeHandle(handle)).toEqual(expected);
  });

  it.each([
    // The official driver cleans the path and accepts relative ones: they name the same directories.
    [`${FS}:/a/b/`, "/a/b"],
    [`${FS}:a/b/:`, "/a/b"],
    [`${FS}:/a/./b//c`, "/a/b/c"],
    [`${FS}:/../../etc`, "/etc"],
    [`${FS}:/a/../b`, "/b"],
  ])("normalizes the path of %s to %s", (handle, path) => {
    expect(parseVolumeHandle(handle).path).toBe(path);
  });

  it("accepts a mount-target DNS name in place of the file system id", () => {
    const dns = "fs-abcd1234.efs.us-west-2.amazonaws.com";
    expect(parseVolumeHandle(`${dns}::${AP}`)).toEqual({
      fileSystemId: "fs-abcd1234",
      dnsName: dns,
      path: "/",
      accessPointId: AP,
    });
  });

  it.each([
    ["", "expected a file system id"],
    ["fake-vol-id", "expected a file system id"],
    ["fs-", "expected a file system id"],
    ["fs-xyz12345", "expected a file system id"],
    ["fs-ABCD1234", "expected a file system id"],
    [`fs-${"a".repeat(41)}`, "expected a file system id"],
    ["efs:invalid-id", "expected a file system id"],
    [`${FS}::invalid-id`, 'access point id "invalid-id"'],
    [`${FS}::fsap-123`, 'access point id "fsap-123"'],
    [`${FS}:/a/b/::four`, "at most three fields"],
    [`nfs:${FS}::${AP}`, "at most three fields"],
    [`s3files:${FS}::${AP}`, "S3 Files"],
    [`${FS}:/a\nb`, "control character"],
  ])("refuses %j with INVALID_ARGUMENT naming the handle", (handle, rule) => {
    let error: unknown;
    try {
      parseVolumeHandle(handle);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(CsiError);
    expect((error as CsiError).code).toBe(status.INVALID_ARGUMENT);
    expect((error as CsiError).message).toContain(`"${handle}"`);
    expect((error as CsiError).message).toContain(rule);
  });
});

describe("formatVolumeHandle", () => {
  it("formats a dynamically provisioned volume as fs::fsap", () => {
    expect(formatVolumeHandle({ fileSystemId: FS, accessPointId: AP })).toBe(`${FS}::${AP}`);
  });

  it("formats the other forms, and parsing gives them back", () => {
    for (const h of [
      { fileSystemId: FS, path: "/" },
      { fileSystemId: FS, path: "/data" },
      { fileSystemId: FS, path: "/data", accessPointId: AP },
      { fileSystemId: FS, path: "/", accessPointId: AP },
    ]) {
      const parsed = parseVolumeHandle(formatVolumeHandle(h));
      expect(parsed).toEqual(h.accessPointId ? h : { fileSystemId: FS, path: h.path });
    }
    expect(formatVolumeHandle({ fileSystemId: FS })).toBe(FS);
    expect(formatVolumeHandle({ fileSystemId: FS, path: "/data" })).toBe(`${FS}:/data`);
  });
});
