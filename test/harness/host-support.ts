// What a test file needs of this machine before it makes loop devices and mounts: the one check
// every such file runs, and the capability ext4's online growth depends on.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Why loop devices and mounts cannot be tested here (with these commands), or undefined when they can. */
export function loopDeviceSkipReason(commands: readonly string[]): string | undefined {
  if (process.getuid?.() !== 0) return "needs root for loop devices and mounts";
  for (const cmd of ["losetup", ...commands]) {
    try {
      execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore", timeout: 10_000 });
    } catch {
      return `${cmd} is not installed`;
    }
  }
  try {
    execFileSync("losetup", ["--find"], { stdio: "ignore", timeout: 10_000 });
  } catch {
    return "no loop device can be set up here (losetup --find failed)";
  }
  return undefined;
}

/** Growing a mounted ext4 (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE (bit 24), even for root. */
export function canGrowExt4Online(): boolean {
  const hex = /^CapBnd:\s*([0-9a-f]+)/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
  return hex !== undefined && (BigInt(`0x${hex}`) & (1n << 24n)) !== 0n;
}
