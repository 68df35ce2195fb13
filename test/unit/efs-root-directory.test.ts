import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { findDeletableDirectory } from "../../src/efs/root-directory.ts";

let root: string;
let outside: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "efs-root-unit-"));
  outside = await mkdtemp(join(tmpdir(), "efs-outside-unit-"));
  await mkdir(join(outside, "pvc-1"));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

describe("findDeletableDirectory", () => {
  it("finds the directory below the mount", async () => {
    await mkdir(join(root, "dynamic", "pvc-1"), { recursive: true });
    expect(await findDeletableDirectory(root, "dynamic/pvc-1")).toBe(join(root, "dynamic", "pvc-1"));
  });

  it("answers undefined when it or a parent does not exist", async () => {
    expect(await findDeletableDirectory(root, "dynamic/pvc-1")).toBeUndefined();
    await writeFile(join(root, "dynamic"), "a file where a directory would be");
    expect(await findDeletableDirectory(root, "dynamic/pvc-1")).toBeUndefined();
  });

  it("refuses to follow a symbolic link out of the mount, on the way or at the end", async () => {
    await symlink(outside, join(root, "dynamic"));
    await expect(findDeletableDirectory(root, "dynamic/pvc-1")).rejects.toMatchObject({
      code: status.FAILED_PRECONDITION,
      message: expect.stringContaining("/dynamic is a symbolic link"),
    });
    await rm(join(root, "dynamic"));
    await mkdir(join(root, "dynamic"));
    await symlink(join(outside, "pvc-1"), join(root, "dynamic", "pvc-1"));
    await expect(findDeletableDirectory(root, "dynamic/pvc-1")).rejects.toMatchObject({
      code: status.FAILED_PRECONDITION,
    });
  });

  it("refuses the root itself, dot segments and files", async () => {
    await expect(findDeletableDirectory(root, "")).rejects.toMatchObject({
      code: status.FAILED_PRECONDITION,
    });
    await expect(findDeletableDirectory(root, "a/../..")).rejects.toMatchObject({
      code: status.FAILED_PRECONDITION,
    });
    await writeFile(join(root, "file"), "x");
    await expect(findDeletableDirectory(root, "file")).rejects.toMatchObject({
      code: status.FAILED_PRECONDITION,
    });
  });
});
