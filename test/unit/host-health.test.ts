import { describe, expect, it } from "vitest";
import { healthFromMount } from "../../src/host/health.ts";
import { parseMountInfoLine } from "../../src/host/mounts.ts";

const entry = (line: string) => {
  const e = parseMountInfoLine(line);
  if (!e) throw new Error(`bad test line: ${line}`);
  return e;
};

describe("healthFromMount", () => {
  it("is healthy for a normal read-write mount and a requested read-only one", () => {
    expect(
      healthFromMount(entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro")),
    ).toEqual([]);
    // A read-only bind of a read-write filesystem: ro per mount, rw superblock.
    expect(healthFromMount(entry("43 27 7:0 / /pod ro,relatime - ext4 /dev/loop0 rw"))).toEqual([]);
    // Mounted read-only on purpose: both say ro.
    expect(healthFromMount(entry("44 27 7:0 / /ro ro,relatime - xfs /dev/loop0 ro,attr2"))).toEqual([]);
  });

  it("sees errors=remount-ro as seen on kernel 6.18 (rw everywhere plus emergency_ro): DEGRADED", () => {
    const issues = healthFromMount(
      entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,errors=remount-ro,emergency_ro"),
    );
    expect(issues).toEqual([
      { status: "DEGRADED", reason: "ReadOnlyAfterError", message: expect.stringContaining("/dev/loop0") },
    ]);
    expect(issues[0]!.message).toMatch(/read-only after a filesystem error/);
  });

  it("sees errors=remount-ro as older kernels show it (rw mount, ro superblock): DEGRADED", () => {
    expect(
      healthFromMount(entry("42 27 259:3 / /stage rw,relatime - ext4 /dev/nvme1n1 ro,errors=remount-ro")),
    ).toMatchObject([{ status: "DEGRADED", reason: "ReadOnlyAfterError" }]);
  });

  it("sees an ext4 shutdown: INACCESSIBLE", () => {
    expect(healthFromMount(entry("42 27 7:0 / /stage rw,relatime - ext4 /dev/loop0 rw,shutdown"))).toEqual([
      { status: "INACCESSIBLE", reason: "FilesystemShutDown", message: expect.stringMatching(/shut down/) },
    ]);
  });
});
