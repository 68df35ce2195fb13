// Undoes what podman leaves on the host after the container tests: it makes /run/netns a shared
// bind mount of itself for its first network namespace (a container of any network mode, "none"
// included), and keeps it. The mount is undone when these tests made it and no namespace is left.
import { readdir } from "node:fs/promises";
import { run } from "../../src/host/exec.ts";
import { isMountPoint } from "../../src/host/mounts.ts";

const NETNS = "/run/netns";

export default async function setup(): Promise<() => Promise<void>> {
  const before = await isMountPoint(NETNS);
  return async () => {
    if (!before && (await isMountPoint(NETNS)) && (await readdir(NETNS)).length === 0) {
      await run("umount", [NETNS]);
    }
  };
}
