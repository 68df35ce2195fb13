// The usage walk on temporary trees: what it counts, what it leaves out, where it stops; in this
// process (walkUsage) and as the node runs it, in a child process (measureUsage).
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { link, lstat, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { measureUsage, walkUsage } from "../../src/efs/usage-walk.ts";
import { listMounts } from "../../src/host/mounts.ts";

const isRoot = process.getuid?.() === 0;
const LIMITS = { maxEntries: 1_000_000, maxMs: 60_000 };

let dir: string;
let root: string;
/** What the walk should count under root: lstat of each path it should see. */
let expected: { bytes: number; inodes: number };

async function allocated(paths: string[]): Promise<{ bytes: number; inodes: number }> {
  let bytes = 0;
  for (const p of paths) bytes += (await lstat(p)).blocks * 512;
  return { bytes, inodes: paths.length };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "efs-usage-walk-"));
  root = join(dir, "volume");
  const outside = join(dir, "outside");
  await mkdir(join(root, "a", "b"), { recursive: true });
  await mkdir(outside);
  await writeFile(join(root, "a", "one.bin"), randomBytes(1024 * 1024));
  await writeFile(join(root, "a", "b", "two.bin"), randomBytes(10 * 1024));
  // A second name of one.bin: its blocks count once, as du counts them.
  await link(join(root, "a", "one.bin"), join(root, "a", "b", "one-again.bin"));
  // A link out of the volume: counted as a link, never followed.
  await writeFile(join(outside, "big.bin"), randomBytes(4 * 1024 * 1024));
  await symlink(outside, join(root, "out"));
  expected = await allocated([
    root,
    join(root, "a"),
    join(root, "a", "one.bin"),
    join(root, "a", "b"),
    join(root, "a", "b", "two.bin"),
    join(root, "out"),
  ]);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("walkUsage", () => {
  it("counts allocated bytes and entries like du -sx: hard links once, symbolic links not followed", async () => {
    const result = await walkUsage(root, LIMITS);
    expect(result).toEqual({ ...expected, unreadable: 0, skippedMounts: 0 });
    expect(result.bytes).toBeGreaterThanOrEqual(1024 * 1024 + 10 * 1024);
    expect(result.bytes).toBeLessThan(4 * 1024 * 1024);
  });

  it("stops at the entry limit with partial figures", async () => {
    const result = await walkUsage(root, { ...LIMITS, maxEntries: 3 });
    expect(result.partial).toBe("entries");
    expect(result.inodes).toBe(3);
    expect(result.bytes).toBeLessThan(expected.bytes);
  });

  it("stops at the time limit, and when aborted, at its next check", async () => {
    const many = join(dir, "many");
    await mkdir(many);
    await Promise.all(Array.from({ length: 600 }, (_, i) => writeFile(join(many, `f${i}`), "")));
    let tick = 0;
    const clock = () => 1000 * tick++;
    const timed = await walkUsage(many, { ...LIMITS, maxMs: 100, now: clock });
    expect(timed.partial).toBe("time");
    expect(timed.inodes).toBeLessThan(601);
    expect((await walkUsage(many, { ...LIMITS, now: clock })).inodes).toBe(601);

    const aborted = new AbortController();
    aborted.abort(new Error("stop"));
    await expect(walkUsage(many, { ...LIMITS, signal: aborted.signal })).rejects.toThrow("stop");
  });

  it("leaves out the mount points it is told about", async () => {
    const result = await walkUsage(root, { ...LIMITS, mountPoints: new Set([join(root, "a", "b")]) });
    expect(result.skippedMounts).toBe(1);
    const b = await allocated([join(root, "a", "b"), join(root, "a", "b", "two.bin")]);
    // one.bin is still counted once, through a/.
    expect(result).toMatchObject({ bytes: expected.bytes - b.bytes, inodes: expected.inodes - b.inodes });
  });

  it("refuses a root that is not a directory", async () => {
    await expect(walkUsage(join(root, "a", "one.bin"), LIMITS)).rejects.toThrow(/not a directory/);
    await expect(walkUsage(join(root, "missing"), LIMITS)).rejects.toMatchObject({ code: "ENOENT" });
  });
});

describe("measureUsage (a child process)", () => {
  it("answers what walkUsage does", async () => {
    expect(await measureUsage(root, LIMITS)).toEqual({ ...expected, unreadable: 0, skippedMounts: 0 });
    expect(await measureUsage(root, { ...LIMITS, maxEntries: 2 })).toMatchObject({
      inodes: 2,
      partial: "entries",
    });
  });

  it("rejects with the child's error, and when aborted", async () => {
    await expect(measureUsage(join(root, "missing"), LIMITS)).rejects.toThrow(
      /usage walk of .* failed.*ENOENT/,
    );
    const abort = new AbortController();
    const walk = measureUsage(root, { ...LIMITS, signal: abort.signal });
    abort.abort(new Error("unpublishing"));
    await expect(walk).rejects.toThrow("unpublishing");
  });

  describe.skipIf(!isRoot)("with mounts below the root (needs root)", () => {
    const mounted: string[] = [];
    afterAll(async () => {
      for (const target of mounted.reverse()) execFileSync("umount", ["--", target]);
    });

    it("never enters another mount: another file system, or a bind mount of this one", async () => {
      const tree = join(dir, "mounted");
      const tmpfs = join(tree, "tmpfs");
      const bind = join(tree, "bind");
      await mkdir(tmpfs, { recursive: true });
      await mkdir(bind);
      await writeFile(join(tree, "own.bin"), randomBytes(64 * 1024));
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", tmpfs]);
      mounted.push(tmpfs);
      await writeFile(join(tmpfs, "elsewhere.bin"), randomBytes(1024 * 1024));
      // Same file system, so the device number alone cannot tell: the mount table does.
      execFileSync("mount", ["--bind", "--", join(dir, "outside"), bind]);
      mounted.push(bind);
      expect((await listMounts()).filter((m) => m.mountPoint.startsWith(`${tree}/`))).toHaveLength(2);

      // Only the tree's own directory and file: neither mount, nor the file and directory in them.
      const own = await allocated([tree, join(tree, "own.bin")]);
      expect(await measureUsage(tree, LIMITS)).toEqual({ ...own, unreadable: 0, skippedMounts: 2 });
    });
  });
});
