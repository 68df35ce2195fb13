import { describe, expect, it } from "vitest";
import { conditionFromMount } from "../../src/host/condition.ts";
import { parseMountInfoLine } from "../../src/host/mounts.ts";

const entry = (line: string) => {
  const e = parseMountInfoLine(line);
  if (!e) throw new Error(`bad test line: ${line}`);
  return e;
};

describe("conditionFromMount", () => {
  it("is healthy for a normal read-write mount and a requested read-only one", () => {
    expect(
      conditionFromMount(entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro")),
    ).toEqual({
      abnormal: false,
      message: "",
    });
    // A read-only bind of a read-write filesystem: ro per mount, rw superblock.
    expect(
      conditionFromMount(entry("43 27 7:0 / /pod ro,relatime - ext4 /dev/loop0 rw"), {
        readOnlyRequested: true,
      }),
    ).toEqual({ abnormal: false, message: "" });
    // Mounted read-only on purpose: both say ro.
    expect(conditionFromMount(entry("44 27 7:0 / /ro ro,relatime - xfs /dev/loop0 ro,attr2"))).toMatchObject({
      abnormal: false,
    });
  });

  it("sees errors=remount-ro as seen on kernel 6.18: rw everywhere plus emergency_ro", () => {
    const c = conditionFromMount(
      entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro,emergency_ro"),
    );
    expect(c.abnormal).toBe(true);
    expect(c.message).toMatch(/read-only after a filesystem error/);
    expect(c.message).toContain("/dev/loop0");
  });

  it("sees errors=remount-ro as older kernels show it: rw mount, ro superblock", () => {
    const c = conditionFromMount(
      entry("42 27 259:3 / /stage rw,relatime - ext4 /dev/nvme1n1 ro,errors=remount-ro"),
    );
    expect(c.abnormal).toBe(true);
  });

  it("sees an ext4 shutdown", () => {
    const c = conditionFromMount(entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,shutdown"));
    expect(c).toMatchObject({ abnormal: true, message: expect.stringMatching(/shut down/) });
  });

  it("flags a read-only mount where read-write was requested", () => {
    const c = conditionFromMount(entry("45 27 7:0 / /pod ro,relatime - ext4 /dev/loop0 ro"), {
      readOnlyRequested: false,
    });
    expect(c).toMatchObject({ abnormal: true, message: expect.stringMatching(/read-write was requested/) });
  });
});
