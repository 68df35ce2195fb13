import { describe, expect, it } from "vitest";
import type { MountEntry } from "../../src/host/mounts.ts";
import { exposeSelinuxfs, SELINUXFS_MOUNT_POINT, type SelinuxHost } from "../../src/host/selinux.ts";
import { createLogger } from "../../src/log.ts";

const log = createLogger("silent");
const WITH_SELINUX = "nodev\tsysfs\nnodev\tselinuxfs\n\text4\n";
const WITHOUT = "nodev\tsysfs\nnodev\tproc\n\text4\n";

function host(filesystems: string, mounts: Partial<MountEntry>[] = [], fail?: Error) {
  const mounted: string[] = [];
  const h: SelinuxHost = {
    filesystems: async () => filesystems,
    mounts: async () => mounts as MountEntry[],
    mountSelinuxfs: async (target) => {
      if (fail) throw fail;
      mounted.push(target);
    },
  };
  return { h, mounted };
}

describe("exposeSelinuxfs", () => {
  it("mounts selinuxfs at /sys/fs/selinux when the kernel runs SELinux and the container does not see it", async () => {
    const { h, mounted } = host(WITH_SELINUX);
    expect(await exposeSelinuxfs(log, h)).toBe("mounted");
    expect(mounted).toEqual([SELINUXFS_MOUNT_POINT]);
  });

  it("does nothing where SELinux is off (selinuxfs not registered) or already visible", async () => {
    const off = host(WITHOUT);
    expect(await exposeSelinuxfs(log, off.h)).toBe("selinux-off");
    expect(off.mounted).toEqual([]);
    const seen = host(WITH_SELINUX, [{ mountPoint: SELINUXFS_MOUNT_POINT, fsType: "selinuxfs" }]);
    expect(await exposeSelinuxfs(log, seen.h)).toBe("already-mounted");
    expect(seen.mounted).toEqual([]);
  });

  it("never fails the plugin's start: a refused mount is reported and the plugin goes on", async () => {
    const { h } = host(WITH_SELINUX, [], new Error("mount: permission denied"));
    expect(await exposeSelinuxfs(log, h)).toBe("failed");
  });
});
