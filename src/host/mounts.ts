import { type FileHandle, open, realpath, rmdir, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { currentCallSignal } from "../call-scope.ts";
import { bounded } from "./bounded.ts";
import { CommandError, run } from "./exec.ts";

/** One line of /proc/self/mountinfo (see proc(5)). */
export interface MountEntry {
  id: number;
  parentId: number;
  /** Device number of the filesystem: for a block device filesystem, the device's; bind mounts share it. */
  major: number;
  minor: number;
  /** Directory of the filesystem that is mounted here: "/" for a whole filesystem, a subdirectory for a bind mount of one. */
  root: string;
  mountPoint: string;
  /** Per-mount options, e.g. ["rw", "relatime"]: a read-only bind shows "ro" here only. */
  mountOptions: string[];
  /** Propagation and peer-group tags, e.g. ["shared:1"]. */
  optionalFields: string[];
  fsType: string;
  /** "none" or "" when the filesystem has no source. */
  source: string;
  /** Options of the filesystem itself (superblock), shared by every mount of it. */
  superOptions: string[];
}

export const MOUNTINFO_PATH = "/proc/self/mountinfo";
const MOUNT_TIMEOUT_MS = 2 * 60_000;
/** umount's exit code when it failed for a reason other than usage or permission (busy, not mounted). */
const UMOUNT_FAILURE = 32;

export class MountBusyError extends Error {
  readonly target: string;
  constructor(target: string, cause: CommandError) {
    super(`${target} is busy: it is still in use and cannot be unmounted (${cause.stderr.trim()})`, {
      cause,
    });
    this.name = "MountBusyError";
    this.target = target;
  }
}

/** Parses the text of /proc/<pid>/mountinfo. Malformed lines are skipped rather than fatal. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const entry = parseMountInfoLine(line);
    if (entry) entries.push(entry);
  }
  return entries;
}

/**
 * Fields are separated by single spaces (an empty source shows as two spaces, so no /\s+/);
 * a variable number of optional fields ends with a lone "-".
 */
export function parseMountInfoLine(line: string): MountEntry | undefined {
  if (line.trim() === "") return undefined;
  const fields = line.split(" ");
  const sep = fields.indexOf("-", 6);
  if (sep < 0 || fields.length < sep + 4) return undefined;
  const [id, parentId, devNumbers, root, mountPoint, mountOptions] = fields;
  const [major, minor] = (devNumbers ?? "").split(":").map(Number);
  if (major === undefined || minor === undefined || !Number.isInteger(major) || !Number.isInteger(minor)) {
    return undefined;
  }
  return {
    id: Number(id),
    parentId: Number(parentId),
    major,
    minor,
    root: unescapeOctal(root ?? ""),
    mountPoint: unescapeOctal(mountPoint ?? ""),
    mountOptions: splitOptions(mountOptions ?? ""),
    optionalFields: fields.slice(6, sep).filter((f) => f !== ""),
    fsType: unescapeOctal(fields[sep + 1] ?? ""),
    source: unescapeOctal(fields[sep + 2] ?? ""),
    superOptions: splitOptions(fields.slice(sep + 3).join(" ")),
  };
}

/** The kernel writes space, tab, newline and backslash in paths as \040, \011, \012, \134. */
export function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

function splitOptions(s: string): string[] {
  return s === "" ? [] : s.split(",").map(unescapeOctal);
}

/** Room for the mount table at first; it grows to whatever the table needs. */
const MOUNTINFO_INITIAL_BYTES = 64 * 1024;
/** Beyond this the table is refused rather than read: memory stays bounded whatever is mounted. */
const MOUNTINFO_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The mount table, read through one descriptor kept open: reading it again from offset 0 makes
 * the kernel write it afresh, so a read costs no open, fstat or close (kubelet asks for every
 * volume's stats every minute). The kernel hands it out a page or so per read, so it is read to
 * the end; reads are never interleaved on the descriptor. Callers who ask while a read runs share
 * the next one, which starts after they asked: as fresh as a read of their own. The text is
 * parsed again only when it differs from the last read's.
 */
class MountTableReader {
  #file: Promise<FileHandle> | undefined;
  #buffer = Buffer.alloc(0);
  #running: Promise<Buffer> | undefined;
  #next: Promise<Buffer> | undefined;
  #lastText: Buffer | undefined;
  #lastEntries: readonly MountEntry[] = [];

  async read(): Promise<readonly MountEntry[]> {
    const text = await bounded(`read ${MOUNTINFO_PATH}`, () => this.#sharedRead());
    if (this.#lastText?.equals(text)) return this.#lastEntries;
    const entries = parseMountInfo(text.toString("utf8"));
    for (const entry of entries) Object.freeze(entry);
    this.#lastText = text;
    this.#lastEntries = entries;
    return entries;
  }

  #sharedRead(): Promise<Buffer> {
    if (!this.#running) {
      this.#running = this.#readWhole().finally(() => {
        this.#running = undefined;
      });
      return this.#running;
    }
    this.#next ??= this.#running
      .catch(() => undefined)
      .then(() => {
        this.#next = undefined;
        return this.#sharedRead();
      });
    return this.#next;
  }

  async #readWhole(): Promise<Buffer> {
    this.#file ??= open(MOUNTINFO_PATH, "r");
    const file = this.#file;
    try {
      const handle = await file;
      let length = 0;
      for (;;) {
        if (length === this.#buffer.length) this.#grow(length);
        const { bytesRead } = await handle.read(this.#buffer, length, this.#buffer.length - length, length);
        if (bytesRead === 0) return Buffer.from(this.#buffer.subarray(0, length));
        length += bytesRead;
      }
    } catch (err) {
      // A descriptor that cannot be read (or opened) is dropped: the next call opens a new one.
      if (this.#file === file) this.#file = undefined;
      (await file.catch(() => undefined))?.close().catch(() => undefined);
      throw err;
    }
  }

  #grow(keep: number): void {
    const size = Math.max(MOUNTINFO_INITIAL_BYTES, this.#buffer.length * 2);
    if (size > MOUNTINFO_MAX_BYTES) {
      throw new Error(`${MOUNTINFO_PATH} is longer than ${MOUNTINFO_MAX_BYTES} bytes: refusing to read it`);
    }
    // Unzeroed: only the bytes the kernel wrote are ever looked at.
    const bigger = Buffer.allocUnsafeSlow(size);
    this.#buffer.copy(bigger, 0, 0, keep);
    this.#buffer = bigger;
  }
}

const mountTable = new MountTableReader();

/**
 * The mount table as the kernel sees it now: read on every call (never an earlier read's answer),
 * parsed only when it changed. The entries are frozen: every caller shares them; the list is the caller's.
 */
export async function listMounts(): Promise<MountEntry[]> {
  return (await mountTable.read()).slice();
}

/**
 * The path as the kernel writes it in mountinfo: symlinks in the parent resolved (kubelet's root
 * may be a symlink), the last component left alone so a hung or broken mount there is not touched.
 */
export async function resolveMountPath(p: string): Promise<string> {
  const abs = path.resolve(p);
  if (abs === "/") return abs;
  try {
    const parent = path.dirname(abs);
    return path.join(await bounded(`realpath ${parent}`, () => realpath(parent)), path.basename(abs));
  } catch {
    return abs;
  }
}

/** Every mount stacked at this path, bottom first (the last one is what the path shows). */
export async function findMountsAt(p: string): Promise<MountEntry[]> {
  const target = await resolveMountPath(p);
  return (await listMounts()).filter((m) => m.mountPoint === target);
}

export async function isMountPoint(p: string): Promise<boolean> {
  return (await findMountsAt(p)).length > 0;
}

/**
 * Every mount of a block device's filesystem, bind mounts included: they show the device's
 * major:minor but the source of the first mount, so both are compared.
 */
export async function findMountsOfSource(device: string): Promise<MountEntry[]> {
  const names = new Set([device]);
  let devNumber: { major: number; minor: number } | undefined;
  try {
    names.add(await realpath(device));
    const st = await stat(device, { bigint: true });
    if (st.isBlockDevice()) devNumber = splitDevNumber(st.rdev);
  } catch {
    // A device that is gone can still appear as a source in the table.
  }
  return (await listMounts()).filter(
    (m) =>
      names.has(m.source) ||
      (devNumber !== undefined && m.major === devNumber.major && m.minor === devNumber.minor),
  );
}

/** Splits a 64-bit Linux dev_t as glibc's gnu_dev_major/gnu_dev_minor do (low and high bits interleaved). */
export function splitDevNumber(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}

export interface MountCallOptions {
  timeoutMs?: number;
}

/** `mount -t fsType -o options -- source target`. */
export async function mount(
  source: string,
  target: string,
  fsType: string,
  options: string[],
  opts: MountCallOptions = {},
): Promise<void> {
  const args = ["-t", fsType];
  if (options.length > 0) args.push("-o", options.join(","));
  args.push("--", source, target);
  await run("mount", args, { timeoutMs: opts.timeoutMs ?? MOUNT_TIMEOUT_MS, signal: currentCallSignal() });
}

/**
 * Bind-mounts source at target. Read-only (and any other per-mount option, e.g. "noexec") needs a
 * second step, `mount -o bind,remount,ro`: mount(2) ignores flags given with MS_BIND. If that step
 * fails the bind is undone, so no writable mount is left behind.
 */
export async function bindMount(
  source: string,
  target: string,
  opts: { readOnly?: boolean; options?: string[]; timeoutMs?: number } = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? MOUNT_TIMEOUT_MS;
  const extra = opts.options ?? [];
  await run("mount", ["--bind", "--", source, target], { timeoutMs, signal: currentCallSignal() });
  if (!opts.readOnly && extra.length === 0) return;
  const remount = ["bind", "remount", ...(opts.readOnly ? ["ro"] : []), ...extra];
  try {
    await run("mount", ["-o", remount.join(","), "--", target], { timeoutMs });
  } catch (err) {
    await run("umount", ["--", target], { timeoutMs }).catch(() => {});
    throw err;
  }
}

/**
 * Unmounts the top mount at target. Not mounted (or gone) is success, so retries are safe.
 * A busy target is a MountBusyError naming the path.
 */
export async function unmount(target: string, opts: MountCallOptions = {}): Promise<void> {
  if (!(await isMountPoint(target))) return;
  try {
    await run("umount", ["--", target], {
      timeoutMs: opts.timeoutMs ?? MOUNT_TIMEOUT_MS,
      signal: currentCallSignal(),
    });
  } catch (err) {
    if (!(err instanceof CommandError) || err.exitCode !== UMOUNT_FAILURE) throw err;
    if (/target is busy|device is busy/i.test(err.stderr)) throw new MountBusyError(target, err);
    // Lost a race with another unmount: fine if nothing is mounted there now.
    if (!(await isMountPoint(target))) return;
    throw err;
  }
}

/** Unmounts every mount stacked at target, top first. Returns how many were unmounted. */
export async function unmountAll(target: string, opts: MountCallOptions = {}): Promise<number> {
  let count = 0;
  // Bounded by the stack seen at the start (plus one): a mount that reappears is an error, not a loop.
  const limit = (await findMountsAt(target)).length + 1;
  while (await isMountPoint(target)) {
    if (count >= limit) throw new Error(`${target}: still mounted after ${count} unmounts`);
    await unmount(target, opts);
    count++;
  }
  return count;
}

/**
 * Removes a target path a plugin created: a file (block volumes) or an empty directory. Never a
 * recursive delete: should an unmount have left a volume there, this fails instead of deleting
 * the volume's data. A missing path is fine.
 */
export async function removeMountTarget(targetPath: string): Promise<void> {
  try {
    await bounded(`rmdir ${targetPath}`, () => rmdir(targetPath));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return;
    if (code === "ENOTDIR") return bounded(`unlink ${targetPath}`, () => unlink(targetPath));
    if (code === "ENOTEMPTY" || code === "EEXIST") {
      throw new Error(`${targetPath} is not empty after unmounting: refusing to delete what is in it`);
    }
    throw err;
  }
}
