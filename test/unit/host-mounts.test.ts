import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  listMounts,
  parseMountInfo,
  parseMountInfoLine,
  splitDevNumber,
  unescapeOctal,
} from "../../src/host/mounts.ts";

describe("parseMountInfoLine", () => {
  it("reads every field of a plain line", () => {
    const e = parseMountInfoLine(
      "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,errors=remount-ro",
    );
    expect(e).toEqual({
      id: 22,
      parentId: 1,
      major: 259,
      minor: 1,
      root: "/",
      mountPoint: "/",
      mountOptions: ["rw", "relatime"],
      optionalFields: ["shared:1"],
      fsType: "ext4",
      source: "/dev/nvme0n1p1",
      superOptions: ["rw", "errors=remount-ro"],
    });
  });

  it("accepts zero optional fields", () => {
    const e = parseMountInfoLine("36 22 0:31 / /run rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k,mode=755");
    expect(e?.optionalFields).toEqual([]);
    expect(e?.fsType).toBe("tmpfs");
    expect(e?.source).toBe("tmpfs");
    expect(e?.superOptions).toEqual(["rw", "size=1024k", "mode=755"]);
  });

  it("accepts several optional fields, including propagate_from and unbindable", () => {
    const e = parseMountInfoLine(
      "40 22 7:3 / /var/lib/kubelet/g rw,relatime shared:5 master:2 propagate_from:1 unbindable - xfs /dev/loop3 rw,attr2",
    );
    expect(e?.optionalFields).toEqual(["shared:5", "master:2", "propagate_from:1", "unbindable"]);
    expect(e?.fsType).toBe("xfs");
    expect(e?.source).toBe("/dev/loop3");
  });

  it("unescapes space, tab, newline and backslash in the mount point, root and source", () => {
    const e = parseMountInfoLine(
      "50 22 0:45 /dir\\040x /mnt/a\\040b\\011c\\012d\\134e rw - fuse.sshfs user@h:/x\\040y rw,user_id=0",
    );
    expect(e?.root).toBe("/dir x");
    expect(e?.mountPoint).toBe("/mnt/a b\tc\nd\\e");
    expect(e?.source).toBe("user@h:/x y");
    expect(e?.fsType).toBe("fuse.sshfs");
  });

  it("keeps an empty source (two spaces in a row) instead of shifting the fields", () => {
    const e = parseMountInfoLine("60 22 0:50 / /mnt/empty rw,relatime - tmpfs  rw,size=16k");
    expect(e?.source).toBe("");
    expect(e?.superOptions).toEqual(["rw", "size=16k"]);
  });

  it("does not mistake a mount point named '-' for the separator", () => {
    const e = parseMountInfoLine("61 22 0:51 / /mnt/- rw - tmpfs tmpfs rw");
    expect(e?.mountPoint).toBe("/mnt/-");
    expect(e?.fsType).toBe("tmpfs");
  });

  it("shows a bind mount of a subdirectory through its root and the device's major:minor", () => {
    const [dev, bind] = parseMountInfo(
      [
        "70 22 7:3 / /staging rw,relatime shared:9 - ext4 /dev/loop3 rw",
        "71 22 7:3 /data/sub /pods/x/mount ro,relatime shared:9 - ext4 /dev/loop3 rw",
      ].join("\n"),
    );
    expect(bind?.root).toBe("/data/sub");
    expect([bind?.major, bind?.minor]).toEqual([dev?.major, dev?.minor]);
    expect(bind?.mountOptions).toContain("ro");
    expect(bind?.superOptions).toEqual(["rw"]);
  });

  it("skips blank and malformed lines", () => {
    expect(parseMountInfoLine("")).toBeUndefined();
    expect(parseMountInfoLine("garbage")).toBeUndefined();
    expect(parseMountInfoLine("1 2 x:y / / rw - ext4 /dev/a rw")).toBeUndefined();
    expect(parseMountInfoLine("1 2 8:1 / / rw shared:1 ext4 /dev/a rw")).toBeUndefined();
    const all = parseMountInfo("\n22 1 8:1 / / rw - ext4 /dev/sda1 rw\nnonsense\n\n");
    expect(all.map((e) => e.mountPoint)).toEqual(["/"]);
  });

  it("keeps stacked mounts in table order (bottom first)", () => {
    const entries = parseMountInfo(
      ["80 22 7:1 / /t rw - ext4 /dev/loop1 rw", "81 80 7:2 / /t rw - xfs /dev/loop2 rw"].join("\n"),
    );
    expect(entries.filter((e) => e.mountPoint === "/t").map((e) => e.source)).toEqual([
      "/dev/loop1",
      "/dev/loop2",
    ]);
  });
});

describe("unescapeOctal", () => {
  it("leaves text without escapes alone", () => {
    expect(unescapeOctal("/var/lib/kubelet")).toBe("/var/lib/kubelet");
    expect(unescapeOctal("a\\9b")).toBe("a\\9b");
  });
});

describe("splitDevNumber", () => {
  it("decodes Linux dev_t like gnu_dev_major/minor", () => {
    expect(splitDevNumber(BigInt((259 << 8) | 1))).toEqual({ major: 259, minor: 1 });
    expect(splitDevNumber(BigInt((7 << 8) | 3))).toEqual({ major: 7, minor: 3 });
    // Minor 0x12345 puts its high bits above the major: (mi & 0xff) | (ma << 8) | ((mi & ~0xff) << 12).
    const rdev = 0x45n | (8n << 8n) | (0x12300n << 12n);
    expect(splitDevNumber(rdev)).toEqual({ major: 8, minor: 0x12345 });
    // Major above 0xfff lives above bit 32.
    expect(splitDevNumber((0x1000n << 32n) | (0x5n << 8n))).toEqual({ major: 0x1005, minor: 0 });
  });
});

describe.skipIf(process.getuid?.() !== 0)("listMounts (mounts a tmpfs: root only)", () => {
  it("shows a mount and its removal at once, and gives each caller its own list", async () => {
    const dir = await realpath(await mkdtemp(join(tmpdir(), "list-mounts-")));
    try {
      const before = await listMounts();
      expect(before.some((m) => m.mountPoint === dir)).toBe(false);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=16k", "list-mounts-test", dir]);
      try {
        const entry = (await listMounts()).find((m) => m.mountPoint === dir);
        expect(entry).toMatchObject({ fsType: "tmpfs", source: "list-mounts-test" });
      } finally {
        execFileSync("umount", ["--", dir]);
      }
      const after = await listMounts();
      expect(after.some((m) => m.mountPoint === dir)).toBe(false);
      // The table did not change between these two reads: still, a list one caller changes is not another's.
      after.length = 0;
      expect((await listMounts()).length).toBe(before.length);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(process.getuid?.() !== 0)("listMounts of a long table (mounts tmpfs: root only)", () => {
  it("reads the whole table, however many pages the kernel hands it out in, also to callers at once", async () => {
    const dir = await realpath(await mkdtemp(join(tmpdir(), "list-mounts-long-")));
    // Far more than the page or so the kernel gives per read.
    const points = Array.from({ length: 80 }, (_, i) => join(dir, `mount-point-with-a-long-name-${i}`));
    const mounted: string[] = [];
    try {
      for (const point of points) {
        await mkdir(point);
        execFileSync("mount", ["-t", "tmpfs", "-o", "size=16k", "list-mounts-long", point]);
        mounted.push(point);
      }
      const tables = await Promise.all(Array.from({ length: 8 }, () => listMounts()));
      for (const table of tables) {
        const seen = new Set(table.map((m) => m.mountPoint));
        expect(points.filter((p) => !seen.has(p))).toEqual([]);
      }
    } finally {
      for (const point of mounted.reverse()) execFileSync("umount", ["--", point]);
      await rm(dir, { recursive: true, force: true });
    }
    expect((await listMounts()).filter((m) => m.mountPoint.startsWith(`${dir}/`))).toEqual([]);
  });
});
