// Undoes what podman leaves on the host after the container tests: it makes /run/netns a shared
// bind mount of itself for its first network namespace (a container of any network mode, "none"
// included), and keeps it. The mount is undone when these tests made it and no namespace is left.
import { readdir, readFile } from "node:fs/promises";
import { run } from "../../src/host/exec.ts";

const NETNS = "/run/netns";

async function netnsMounted(): Promise<boolean> {
  return (await readFile("/proc/self/mountinfo", "utf8"))
    .split("\n")
    .some((line) => line.split(" ")[4] === NETNS);
}

export default async function setup(): Promise<() => Promise<void>> {
  const before = await netnsMounted();
  return async () => {
    if (!before && (await netnsMounted()) && (await readdir(NETNS)).length === 0) {
      await run("umount", [NETNS]);
    }
  };
}
