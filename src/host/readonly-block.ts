import { readdir, readFile, readlink, stat } from "node:fs/promises";
import { basename, resolve } from "node:path";
import { CommandError, run } from "./exec.ts";
import { listMounts, type MountEntry, splitDevNumber } from "./mounts.ts";

/**
 * Read-only views of block devices, for read-only raw block publications: a read-only loop device
 * over the device, one per publication, found again from sysfs and the mount table (no state kept).
 *
 * Why: a read-only bind mount does not stop writes to a device node, and `blockdev --setro` on
 * the device itself would also stop another, read-write publication of the same volume. What the
 * kernel (6.18) does with a read-only loop device: open(O_RDWR) still succeeds, but write(2),
 * O_DIRECT writes, BLKDISCARD and BLKZEROOUT fail with EPERM, a shared writable mmap with EINVAL,
 * and BLKROSET 0 cannot lift it (the flag is on the disk, not the block device).
 *
 * Why one view per publication: publish and unpublish of different targets of one volume run
 * concurrently, so a shared view could be detached by one unpublish between another publish's
 * losetup and its bind mount. A view is detached only while no mount or device uses it.
 */

/** What `releaseReadOnlyDevice` found: the view, and whether it was detached or what still uses it. */
export interface ReleaseResult {
  /** The view's device node, e.g. /dev/loop3. */
  view: string;
  /** The device it views, as the kernel names its backing file. */
  device: string;
  detached: boolean;
  /** Mount points and devices that still use the view; empty when it was detached. */
  usedBy: string[];
}

/** A read-only view: a read-only loop device over a whole block device. */
export interface ReadOnlyView {
  /** The loop device node, e.g. /dev/loop3. */
  view: string;
  /** The device it views, as the kernel names its backing file, e.g. /dev/nvme1n1. */
  device: string;
  /** The viewed device's number (st_rdev), to compare with another path to the same device. */
  deviceRdev: bigint;
}

const LOSETUP_TIMEOUT_MS = 30_000;
const LOOP_NAME = /^loop\d+$/;
const LOOP_DEVICE_PRINTED = /^\/dev\/loop\d+$/m;

/**
 * Creates a new read-only view of `device` and returns its node. Every call makes a new one (see
 * above): the caller checks its target first, and releases the view if it cannot use it.
 */
export async function createReadOnlyDevice(device: string): Promise<string> {
  const info = await stat(device).catch((err: Error) => {
    throw new Error(`cannot make a read-only view of ${device}: ${err.message}`, { cause: err });
  });
  if (!info.isBlockDevice()) throw new Error(`cannot make a read-only view of ${device}: not a block device`);
  // Readers must see the device's sector size even where the loop falls back to buffered I/O.
  // blockdev takes no "--": an absolute path cannot be read as an option.
  const { stdout } = await run("blockdev", ["--getss", resolve(device)], { timeoutMs: LOSETUP_TIMEOUT_MS });
  const base = ["--read-only", "--find", "--show", "--sector-size", stdout.trim()];
  try {
    // Direct I/O: no second page cache of the volume. Where the device cannot take it, the kernel
    // quietly uses buffered I/O (LOOP_CONFIGURE); only old kernels make losetup fail instead.
    return await attachView([...base, "--direct-io=on", "--", device], device);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    // An old losetup attaches first and fails on the direct I/O ioctl afterwards: use what it attached.
    const printed = err.stdout.match(LOOP_DEVICE_PRINTED)?.[0];
    if (printed && (await findReadOnlyView(printed))) return printed;
    return attachView([...base, "--", device], device);
  }
}

async function attachView(args: string[], device: string): Promise<string> {
  const { stdout } = await run("losetup", args, { timeoutMs: LOSETUP_TIMEOUT_MS });
  const view = stdout.match(LOOP_DEVICE_PRINTED)?.[0];
  if (!view) throw new Error(`losetup ${args.join(" ")} attached no loop device for ${device}: "${stdout}"`);
  return view;
}

/**
 * The read-only view shown at `path` (the view's node, or a target it is bind-mounted on), and the
 * device it views; undefined for anything else, the viewed device itself included.
 */
export async function findReadOnlyView(path: string): Promise<ReadOnlyView | undefined> {
  const info = await stat(path, { bigint: true }).catch(() => undefined);
  if (!info?.isBlockDevice()) return undefined;
  const { major, minor } = splitDevNumber(info.rdev);
  const sysfs = await readlink(`/sys/dev/block/${major}:${minor}`).catch(() => undefined);
  return sysfs ? viewOfLoop(basename(sysfs)) : undefined;
}

/**
 * After `published` was unmounted from its target: detaches the read-only view that was mounted
 * there, unless a mount or a device still uses it. `published` is the target's MountEntry from
 * before the unmount (a device node bind-mounted on a file shows the node's name as its root), or
 * the view's node itself (to undo a publication that failed before mounting it). Anything but a
 * view (a read-write loop device, a loop over a file, the volume's own device) is left alone and
 * answers undefined.
 */
export async function releaseReadOnlyDevice(
  published: MountEntry | string,
): Promise<ReleaseResult | undefined> {
  const view =
    typeof published === "string"
      ? await findReadOnlyView(published)
      : await viewOfLoop(published.root.slice(1));
  return view ? detachUnlessUsed(view) : undefined;
}

/**
 * Detaches every unused read-only view of `device`, e.g. one left by a publication that crashed
 * between losetup and mount. Before the volume leaves the node: a view holds the device open.
 */
export async function releaseUnusedReadOnlyDevices(device: string): Promise<ReleaseResult[]> {
  const wanted = (await stat(device, { bigint: true }).catch(() => undefined))?.rdev;
  if (wanted === undefined) return [];
  const results: ReleaseResult[] = [];
  for (const name of await loopNames()) {
    const view = await viewOfLoop(name);
    if (view?.deviceRdev === wanted) results.push(await detachUnlessUsed(view));
  }
  return results;
}

async function detachUnlessUsed(view: ReadOnlyView): Promise<ReleaseResult> {
  const usedBy = await usersOf(basename(view.view));
  if (usedBy.length > 0) return { view: view.view, device: view.device, detached: false, usedBy };
  try {
    // A view still held open (udev probing it) is detached by the kernel at its last close.
    await run("losetup", ["--detach", view.view], { timeoutMs: LOSETUP_TIMEOUT_MS });
  } catch (err) {
    // Detached meanwhile by someone else: the goal is reached.
    if (!(await viewOfLoop(basename(view.view)))) {
      return { view: view.view, device: view.device, detached: true, usedBy: [] };
    }
    const why = (err as Error).message;
    throw new Error(`detaching the read-only view ${view.view} of ${view.device}: ${why}`, { cause: err });
  }
  return { view: view.view, device: view.device, detached: true, usedBy: [] };
}

/**
 * The view a loop device is, or undefined: it must be bound, read-only, over a whole block device
 * (offset and size limit 0). A backing file that is a regular file (or gone: "(deleted)") never is.
 */
async function viewOfLoop(name: string): Promise<ReadOnlyView | undefined> {
  if (!LOOP_NAME.test(name)) return undefined;
  const [backingFile, ro, offset, sizeLimit] = await Promise.all(
    ["loop/backing_file", "ro", "loop/offset", "loop/sizelimit"].map((f) => readSysfs(name, f)),
  );
  if (!backingFile || ro !== "1" || offset !== "0" || sizeLimit !== "0") return undefined;
  const backing = await stat(backingFile, { bigint: true }).catch(() => undefined);
  if (!backing?.isBlockDevice()) return undefined;
  return { view: `/dev/${name}`, device: backingFile, deviceRdev: backing.rdev };
}

/**
 * What uses a loop device: a bind mount of its node (its name as the mount's root), a filesystem
 * on it (its numbers), a device stacked on it (holders), or another loop device over it.
 */
async function usersOf(name: string): Promise<string[]> {
  const numbers = await readSysfs(name, "dev");
  if (!numbers) throw new Error(`cannot tell what uses /dev/${name}: /sys/block/${name}/dev is missing`);
  const [major, minor] = numbers.split(":").map(Number);
  const users = (await listMounts())
    .filter((m) => m.root === `/${name}` || (m.major === major && m.minor === minor))
    .map((m) => m.mountPoint);
  const holders = await readdir(`/sys/block/${name}/holders`).catch(() => [] as string[]);
  users.push(...holders.map((h) => `/dev/${h}`));
  for (const other of await loopNames()) {
    if (other === name) continue;
    const backingFile = await readSysfs(other, "loop/backing_file");
    const backing = backingFile
      ? await stat(backingFile, { bigint: true }).catch(() => undefined)
      : undefined;
    if (!backing?.isBlockDevice()) continue;
    const over = splitDevNumber(backing.rdev);
    if (over.major === major && over.minor === minor) users.push(`/dev/${other}`);
  }
  return users;
}

/** A sysfs attribute of /sys/block/<name> without its newline; undefined when absent (e.g. an unbound loop). */
async function readSysfs(name: string, file: string): Promise<string | undefined> {
  return readFile(`/sys/block/${name}/${file}`, "utf8").then(
    (s) => s.replace(/\n$/, ""),
    () => undefined,
  );
}

async function loopNames(): Promise<string[]> {
  return (await readdir("/sys/block")).filter((n) => LOOP_NAME.test(n));
}
