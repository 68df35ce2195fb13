import { execFileSync } from "node:child_process";
import { constants } from "node:fs";
import {
  chmod,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  realpath,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../src/host/exec.ts";
import { bindMount, findMountsAt, listMounts, type MountEntry, unmount } from "../../src/host/mounts.ts";
import {
  createReadOnlyDevice,
  findReadOnlyView,
  releaseReadOnlyDevice,
  releaseUnusedReadOnlyDevices,
} from "../../src/host/readonly-block.ts";
import { loopDeviceSkipReason } from "../harness/host-support.ts";

// Real loop devices and mounts. An "EBS disk" is a read-write loop device over a sparse file, as
// in the attach simulation; everything attached over files under this test's root is detached
// after every test, failed or not, and nothing else is touched.

const MiB = 1024 ** 2;
const FILE = "[test/integration/readonly-block.test.ts]";

const skip = loopDeviceSkipReason(["mount", "umount", "blockdev", "blkdiscard"]);
if (skip) console.warn(`${FILE} SKIPPED: ${skip}`);

let root = "";
let counter = 0;

const sysfs = (device: string, file: string) =>
  readFile(`/sys/block/${path.basename(device)}/${file}`, "utf8").then(
    (s) => s.trim(),
    () => undefined,
  );

/** A read-write loop device over a new sparse file, holding `pattern` at offset 0. */
async function attachDisk(pattern: Buffer, opts: { sectorSize?: number } = {}): Promise<string> {
  const file = path.join(root, `disk-${++counter}.img`);
  await writeFile(file, "");
  await run("truncate", ["-s", String(64 * MiB), file]);
  const args = ["--find", "--show", ...(opts.sectorSize ? ["--sector-size", String(opts.sectorSize)] : [])];
  const device = (await run("losetup", [...args, "--", file])).stdout.trim();
  await writeAt(device, pattern, 0);
  return device;
}

async function writeAt(device: string, data: Buffer, position: number): Promise<void> {
  const handle = await open(device, "r+");
  try {
    await handle.write(data, 0, data.length, position);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readAt(device: string, length: number, position = 0): Promise<Buffer> {
  const handle = await open(device, "r");
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buf, 0, length, position);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** How a write through `device` fails: at open(2) or at write(2); undefined when it succeeds. */
async function writeFailure(device: string, flags: string | number = "r+"): Promise<string | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(device, flags);
  } catch (err) {
    return `open: ${(err as NodeJS.ErrnoException).code}`;
  }
  try {
    const current = await readAt(device, 1);
    await handle.write(current, 0, 1, 0); // the byte that is there: a write that succeeds changes nothing
    return undefined;
  } catch (err) {
    return `write: ${(err as NodeJS.ErrnoException).code}`;
  } finally {
    await handle.close();
  }
}

async function newTarget(): Promise<string> {
  const target = path.join(root, `target-${++counter}`);
  await writeFile(target, "");
  return target;
}

/** Publishes `device` on a file target as the node does: bind, then remount the bind read-only. */
async function publish(device: string, target: string): Promise<MountEntry> {
  await bindMount(device, target, { readOnly: true });
  const entry = (await findMountsAt(target)).at(-1);
  if (!entry) throw new Error(`${target}: not mounted after bindMount`);
  return entry;
}

/** Whether a loop device is bound; a busy one is detached at its last close, so wait a little. */
async function isAttached(device: string, waitMs = 5000): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if ((await sysfs(device, "loop/backing_file")) === undefined) return false;
    if (Date.now() >= deadline) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every loop device over a file under root, or over such a loop device (at any depth), upper ones first. */
async function loopsOfThisTest(): Promise<string[]> {
  const loops = (await readdir("/sys/block")).filter((n) => /^loop\d+$/.test(n));
  const backing = new Map<string, string>();
  for (const name of loops) {
    const file = await sysfs(name, "loop/backing_file");
    if (file) backing.set(name, file);
  }
  const ours: string[] = [];
  const rdevs = new Set<bigint>();
  for (let changed = true; changed; ) {
    changed = false;
    for (const [name, file] of backing) {
      if (ours.includes(name)) continue;
      const st = await stat(file, { bigint: true }).catch(() => undefined);
      if (file.startsWith(`${root}/`) || (st?.isBlockDevice() && rdevs.has(st.rdev))) {
        ours.push(name);
        rdevs.add((await stat(`/dev/${name}`, { bigint: true })).rdev);
        changed = true;
      }
    }
  }
  return ours.reverse().map((n) => `/dev/${n}`);
}

async function cleanUp(): Promise<void> {
  if (!root) return;
  const errors: unknown[] = [];
  for (let round = 0; round < 5; round++) {
    const points = (await listMounts()).map((m) => m.mountPoint).filter((p) => p.startsWith(`${root}/`));
    if (points.length === 0) break;
    for (const p of new Set(points)) await run("umount", ["--", p]).catch((e: unknown) => errors.push(e));
  }
  for (const loop of await loopsOfThisTest()) {
    await run("losetup", ["--detach", loop]).catch((e: unknown) => errors.push(e));
  }
  if (errors.length > 0) throw new AggregateError(errors, `${FILE} cleanup failed`);
}

describe.skipIf(skip !== undefined)("read-only views of block devices on real loop devices", () => {
  beforeAll(async () => {
    root = await realpath(await mkdtemp(path.join(tmpdir(), "ro-block-it-")));
  });

  afterEach(cleanUp);

  afterAll(async () => {
    await cleanUp();
    if (root) await rm(root, { recursive: true, force: true });
  });

  const pattern = Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 31 + 7) & 0xff));

  it("a read-only bind of the device itself does not stop writes (why views exist)", async () => {
    const disk = await attachDisk(pattern);
    const target = await newTarget();
    const entry = await publish(disk, target);
    expect(entry.mountOptions).toContain("ro");
    expect(await writeFailure(target)).toBeUndefined();
  });

  it("a view reads the device's bytes and refuses every write, and the device stays writable", async () => {
    const disk = await attachDisk(pattern);
    const view = await createReadOnlyDevice(disk);

    expect(view).toMatch(/^\/dev\/loop\d+$/);
    expect(view).not.toBe(disk);
    expect(await sysfs(view, "ro")).toBe("1");
    expect(await sysfs(view, "loop/dio")).toBe("1"); // direct I/O works over a loop-backed device here
    expect(await readAt(view, pattern.length)).toEqual(pattern);

    // The kernel lets the open for writing through; every write then fails with EPERM.
    expect(await writeFailure(view, "r+")).toBe("write: EPERM");
    expect(await writeFailure(view, constants.O_WRONLY)).toBe("write: EPERM");
    await expect(run("blkdiscard", ["--force", "--", view])).rejects.toThrow(/blkdiscard/);
    expect(await readAt(view, pattern.length)).toEqual(pattern);

    const marker = Buffer.from("still writable");
    await writeAt(disk, marker, 16 * MiB);
    expect(await readAt(disk, marker.length, 16 * MiB)).toEqual(marker);

    const found = await findReadOnlyView(view);
    expect(found).toEqual({ view, device: disk, deviceRdev: (await stat(disk, { bigint: true })).rdev });
    expect(await findReadOnlyView(disk)).toBeUndefined();
  });

  it("published like the node does, the target refuses writes; after the unmount release detaches the view only", async () => {
    const disk = await attachDisk(pattern);
    const view = await createReadOnlyDevice(disk);
    const target = await newTarget();
    const entry = await publish(view, target);

    expect(entry.fsType).toBe("devtmpfs");
    expect(entry.root).toBe(`/${path.basename(view)}`);
    expect((await findReadOnlyView(target))?.device).toBe(disk);
    expect(await readAt(target, pattern.length)).toEqual(pattern);
    expect(await writeFailure(target)).toBe("write: EPERM");

    await unmount(target);
    expect(await releaseReadOnlyDevice(entry)).toEqual({ view, device: disk, detached: true, usedBy: [] });
    expect(await isAttached(view)).toBe(false);
    // Released again (a retried unpublish): nothing left to do.
    expect(await releaseReadOnlyDevice(entry)).toBeUndefined();

    expect(await isAttached(disk, 0)).toBe(true);
    expect(await sysfs(disk, "ro")).toBe("0");
    expect(await readAt(disk, pattern.length)).toEqual(pattern);
    expect(await writeFailure(disk)).toBeUndefined();
  });

  it("release keeps a view that another mount still shows, and detaches it after the last", async () => {
    const disk = await attachDisk(pattern);
    const view = await createReadOnlyDevice(disk);
    const [first, second] = [await newTarget(), await newTarget()];
    const firstEntry = await publish(view, first);
    const secondEntry = await publish(first, second); // as kubelet binds the target into a pod

    await unmount(first);
    expect(await releaseReadOnlyDevice(firstEntry)).toEqual({
      view,
      device: disk,
      detached: false,
      usedBy: [second],
    });
    expect(await isAttached(view, 0)).toBe(true);

    await unmount(second);
    expect((await releaseReadOnlyDevice(secondEntry))?.detached).toBe(true);
    expect(await isAttached(view)).toBe(false);
  });

  it("release keeps a view that another loop device is set up over (as kubelet does over a target)", async () => {
    const disk = await attachDisk(pattern);
    const view = await createReadOnlyDevice(disk);
    const over = (await run("losetup", ["--find", "--show", "--", view])).stdout.trim();
    expect(await releaseReadOnlyDevice(view)).toEqual({
      view,
      device: disk,
      detached: false,
      usedBy: [over],
    });
    expect(await isAttached(view, 0)).toBe(true);
  });

  it("a view that was never mounted is released by its node (a publish that failed after losetup)", async () => {
    const disk = await attachDisk(pattern);
    const view = await createReadOnlyDevice(disk);
    expect((await releaseReadOnlyDevice(view))?.detached).toBe(true);
    expect(await isAttached(view)).toBe(false);
  });

  it("release never detaches a read-write loop device, a loop over a file, or a partial view", async () => {
    const disk = await attachDisk(pattern);
    const file = path.join(root, "plain.img");
    await run("truncate", ["-s", String(8 * MiB), file]);
    const losetup = async (...args: string[]) =>
      (await run("losetup", ["--find", "--show", ...args])).stdout.trim();
    const others = [
      disk, // read-write, over a file: the attach simulation's EBS disk
      await losetup("--read-only", "--", file), // read-only, but over a regular file
      await losetup("--", disk), // over a block device, but read-write
      await losetup("--read-only", "--offset", "4096", "--", disk), // read-only over a block device, but not all of it
    ];
    for (const device of others) {
      expect(await findReadOnlyView(device)).toBeUndefined();
      expect(await releaseReadOnlyDevice(device)).toBeUndefined();
      const target = await newTarget();
      const entry = await publish(device, target);
      await unmount(target);
      expect(await releaseReadOnlyDevice(entry)).toBeUndefined();
      expect(await isAttached(device, 0)).toBe(true);
    }
    expect(await releaseUnusedReadOnlyDevices(disk)).toEqual([]);
    for (const device of others) expect(await isAttached(device, 0)).toBe(true);
  });

  it("releaseUnusedReadOnlyDevices detaches the views of a device nothing uses and keeps mounted ones", async () => {
    const disk = await attachDisk(pattern);
    const otherDisk = await attachDisk(pattern);
    const leaked = await createReadOnlyDevice(disk);
    const mounted = await createReadOnlyDevice(disk);
    const ofOtherDisk = await createReadOnlyDevice(otherDisk);
    const target = await newTarget();
    await publish(mounted, target);

    const results = await releaseUnusedReadOnlyDevices(disk);
    expect(results.sort((a, b) => a.view.localeCompare(b.view))).toEqual(
      [
        { view: leaked, device: disk, detached: true, usedBy: [] },
        { view: mounted, device: disk, detached: false, usedBy: [target] },
      ].sort((a, b) => a.view.localeCompare(b.view)),
    );
    expect(await isAttached(leaked)).toBe(false);
    expect(await isAttached(mounted, 0)).toBe(true);
    expect(await isAttached(ofOtherDisk, 0)).toBe(true);
  });

  it("a view has the device's sector size", async () => {
    const disk = await attachDisk(pattern, { sectorSize: 4096 });
    const view = await createReadOnlyDevice(disk);
    expect(await sysfs(view, "queue/logical_block_size")).toBe("4096");
    expect(await readAt(view, pattern.length)).toEqual(pattern);
  });

  it("refuses what is not a block device, naming it", async () => {
    const file = path.join(root, "not-a-device");
    await writeFile(file, "");
    await expect(createReadOnlyDevice(file)).rejects.toThrow(`${file}: not a block device`);
    await expect(createReadOnlyDevice(`${file}-missing`)).rejects.toThrow(`${file}-missing`);
  });

  describe("where losetup cannot use direct I/O", () => {
    const realLosetup = () => execFileSync("sh", ["-c", "command -v losetup"], { encoding: "utf8" }).trim();

    /** Runs fn with a losetup first in PATH that does `onDirectIo` when asked for direct I/O. */
    async function withLosetup<T>(onDirectIo: string, fn: () => Promise<T>): Promise<T> {
      const bin = path.join(root, `bin-${++counter}`);
      await mkdir(bin);
      const script = [
        "#!/bin/sh",
        'for a in "$@"; do',
        `  if [ "$a" = "--direct-io=on" ]; then ${onDirectIo}; fi`,
        "done",
        `exec ${realLosetup()} "$@"`,
      ].join("\n");
      await writeFile(path.join(bin, "losetup"), `${script}\n`);
      await chmod(path.join(bin, "losetup"), 0o755);
      const saved = process.env.PATH;
      process.env.PATH = `${bin}:${saved}`;
      try {
        return await fn();
      } finally {
        process.env.PATH = saved;
      }
    }

    async function viewsOf(disk: string): Promise<string[]> {
      const views: string[] = [];
      for (const loop of await loopsOfThisTest()) {
        if ((await findReadOnlyView(loop))?.device === disk) views.push(loop);
      }
      return views;
    }

    it("refused before attaching: the view is made without it", async () => {
      const disk = await attachDisk(pattern);
      const view = await withLosetup('echo "losetup: direct io not supported" >&2; exit 1', () =>
        createReadOnlyDevice(disk),
      );
      expect(await viewsOf(disk)).toEqual([view]);
      expect(await sysfs(view, "loop/dio")).toBe("0");
      expect(await readAt(view, pattern.length)).toEqual(pattern);
    });

    it("failed after attaching (old kernels): the attached view is used, none is leaked", async () => {
      const disk = await attachDisk(pattern);
      const fail = `${realLosetup()} "$@"; echo "losetup: set direct io failed" >&2; exit 1`;
      const view = await withLosetup(fail, () => createReadOnlyDevice(disk));
      expect(await viewsOf(disk)).toEqual([view]);
      expect(await readAt(view, pattern.length)).toEqual(pattern);
    });
  });
});
