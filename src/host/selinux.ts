/**
 * SELinux mount contexts for the node plugin. With SELinuxMount (GA in Kubernetes 1.37, and the
 * CSIDriver's `seLinuxMount: true`), kubelet puts `context="..."` in the mount flags of NodeStage
 * and NodePublish instead of having the container runtime relabel every file. mount(8) (libmount,
 * built with libselinux) silently drops SELinux options when it thinks SELinux is off, and it
 * decides that from selinuxfs being mounted at /sys/fs/selinux. In a container it usually is not,
 * even on an SELinux host: the pod would get an unlabelled volume and permission denied. So the
 * node plugin mounts selinuxfs there itself when the kernel runs SELinux.
 */
import { readFile } from "node:fs/promises";
import type { Logger } from "../log.ts";
import { run } from "./exec.ts";
import { listMounts, type MountEntry } from "./mounts.ts";

export const SELINUXFS_MOUNT_POINT = "/sys/fs/selinux";

export interface SelinuxHost {
  /** The kernel's filesystem types: selinuxfs is registered only when SELinux was enabled at boot. */
  filesystems(): Promise<string>;
  mounts(): Promise<MountEntry[]>;
  mountSelinuxfs(target: string): Promise<void>;
}

const realHost: SelinuxHost = {
  filesystems: () => readFile("/proc/filesystems", "utf8"),
  mounts: listMounts,
  mountSelinuxfs: async (target) => {
    await run("mount", ["-t", "selinuxfs", "selinuxfs", target], { timeoutMs: 10_000 });
  },
};

export type SelinuxfsState = "selinux-off" | "already-mounted" | "mounted" | "failed";

/** Makes selinuxfs visible to mount(8) when the kernel runs SELinux; never fails the plugin's start. */
export async function exposeSelinuxfs(log: Logger, host: SelinuxHost = realHost): Promise<SelinuxfsState> {
  try {
    const types = (await host.filesystems()).split("\n").map((line) => line.trim().split(/\s+/).at(-1));
    if (!types.includes("selinuxfs")) return "selinux-off";
    const mounted = (await host.mounts()).some(
      (m) => m.mountPoint === SELINUXFS_MOUNT_POINT && m.fsType === "selinuxfs",
    );
    if (mounted) return "already-mounted";
    await host.mountSelinuxfs(SELINUXFS_MOUNT_POINT);
    log.info(
      { path: SELINUXFS_MOUNT_POINT },
      "mounted selinuxfs so that mount(8) keeps SELinux context= options",
    );
    return "mounted";
  } catch (err) {
    log.warn(
      { err: err instanceof Error ? err.message : String(err) },
      "SELinux is on but selinuxfs could not be mounted: mount(8) will drop context= options (SELinuxMount volumes get no label)",
    );
    return "failed";
  }
}
