import { mkdir, open, readdir, realpath, rename, rm, stat, symlink, truncate } from "node:fs/promises";
import path from "node:path";
import { run } from "../../src/host/exec.ts";
import { findMountsOfSource, unmountAll } from "../../src/host/mounts.ts";

/**
 * The local stand-in for EBS attachment (test only): a volume is a sparse file, attaching it is a
 * loop device, and the by-id symlink the node looks up points at that loop device, as udev's
 * nvme-Amazon_Elastic_Block_Store_vol<id> link points at /dev/nvmeXn1 on EC2.
 */
export interface AttachSimOptions {
  /** Where the by-id links go (a test directory standing in for /dev/disk/by-id). */
  byIdDir: string;
  /** Where the volume files live; kept across detach/attach, since they are the volumes' data. */
  stateDir: string;
}

export interface Attachment {
  /** The loop device, e.g. /dev/loop3. */
  device: string;
  /** The by-id link to it. */
  link: string;
}

export interface AttachSim {
  /** Creates the volume file if missing (sparse), attaches it. Attaching again returns the same device. */
  attach(volumeId: string, sizeGiB: number): Promise<Attachment>;
  /** Removes the link and the loop device; the file (the data) stays. Not attached is fine. */
  detach(volumeId: string): Promise<void>;
  /**
   * Grows the file and tells an attached loop device its new size (`losetup -c`). EBS never shrinks.
   * A volume that was never attached has no file: nothing to do.
   */
  resize(volumeId: string, sizeGiB: number): Promise<void>;
  /**
   * An EBS snapshot: a sparse copy of the volume's file as it is now (what was written and synced).
   * A volume never attached has no file, and its snapshot holds nothing.
   */
  snapshot(volumeId: string, snapshotId: string): Promise<void>;
  /** A volume made from a snapshot (restore) or from a volume (clone) starts as a copy of its data. */
  copyInto(volumeId: string, sourceId: string): Promise<void>;
  removeSnapshot(snapshotId: string): Promise<void>;
  /** Deletes the volume's file, detaching it first if needed. */
  remove(volumeId: string): Promise<void>;
  /**
   * Unmounts, detaches and deletes everything under stateDir, including what a crashed earlier run
   * left (found through `losetup --list`), and its links in byIdDir. Tries every step; throws an
   * AggregateError afterwards if some failed.
   */
  cleanup(): Promise<void>;
  /** The by-id link path of a volume, attached or not. */
  linkPath(volumeId: string): string;
  /** The loop device a volume's file is attached to now, from the kernel (not from memory). */
  deviceOf(volumeId: string): Promise<string | undefined>;
}

const GiB = 1024 ** 3;
const LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_vol";
const VOLUME_ID = /^vol-[0-9A-Za-z]+$/;
const SOURCE_ID = /^(vol|snap)-[0-9A-Za-z]+$/;
const LOSETUP_TIMEOUT_MS = 30_000;

export interface LoopDevice {
  name: string;
  backFile: string;
}

/** Every loop device with its backing file, from the kernel. */
export async function listLoopDevices(): Promise<LoopDevice[]> {
  const { stdout } = await run("losetup", ["--list", "--json", "--output", "NAME,BACK-FILE"], {
    timeoutMs: LOSETUP_TIMEOUT_MS,
  });
  if (stdout.trim() === "") return []; // losetup prints nothing at all when no loop device is set up
  const parsed = JSON.parse(stdout) as { loopdevices?: { name: string; "back-file"?: string | null }[] };
  return (parsed.loopdevices ?? []).map((d) => ({
    name: d.name,
    // The kernel appends " (deleted)" once the file is unlinked.
    backFile: (d["back-file"] ?? "").replace(/ \(deleted\)$/, ""),
  }));
}

export function createAttachSim(options: AttachSimOptions): AttachSim {
  const byIdDir = path.resolve(options.byIdDir);
  let stateDirReal: string | undefined;
  const known = new Set<string>();
  const queues = new Map<string, Promise<unknown>>();

  /** Operations on one volume run one after another; different volumes run in parallel. */
  function serial<T>(volumeId: string, fn: () => Promise<T>): Promise<T> {
    const prev = queues.get(volumeId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    queues.set(volumeId, tail);
    void tail.then(() => {
      if (queues.get(volumeId) === tail) queues.delete(volumeId);
    });
    return next;
  }

  // losetup shows the backing file's real path, so the state dir is compared resolved.
  async function stateDir(): Promise<string> {
    if (stateDirReal === undefined) {
      await mkdir(options.stateDir, { recursive: true });
      stateDirReal = await realpath(options.stateDir);
    }
    return stateDirReal;
  }

  function checkId(volumeId: string): void {
    if (!VOLUME_ID.test(volumeId)) throw new Error(`attach sim: bad volume id "${volumeId}"`);
  }

  const linkPath = (volumeId: string): string =>
    path.join(byIdDir, LINK_PREFIX + volumeId.slice("vol-".length));
  const filePath = async (volumeId: string): Promise<string> =>
    path.join(await stateDir(), `${volumeId}.img`);

  /** A sparse copy: holes stay holes, so a 10 GiB volume with 1 MiB written costs 1 MiB. */
  async function copySparse(from: string, to: string): Promise<boolean> {
    if (!(await stat(from).catch(() => undefined))) return false;
    const tmp = `${to}.tmp-${process.pid}`;
    await run("cp", ["--sparse=always", "--", from, tmp], { timeoutMs: LOSETUP_TIMEOUT_MS });
    await rename(tmp, to);
    return true;
  }

  async function devicesOf(file: string): Promise<string[]> {
    return (await listLoopDevices()).filter((d) => d.backFile === file).map((d) => d.name);
  }

  async function growFile(file: string, sizeGiB: number): Promise<void> {
    if (!(Number.isFinite(sizeGiB) && sizeGiB > 0)) throw new Error(`attach sim: bad size ${sizeGiB} GiB`);
    const bytes = Math.ceil(sizeGiB * GiB);
    const handle = await open(file, "a");
    await handle.close();
    const current = (await stat(file)).size;
    if (bytes < current)
      throw new Error(`attach sim: ${file} is ${current} bytes, cannot shrink to ${bytes}`);
    // truncate() extends without writing: the file stays sparse, so a 10 GiB volume costs no disk.
    if (bytes > current) await truncate(file, bytes);
  }

  async function pointLink(link: string, device: string): Promise<void> {
    await mkdir(byIdDir, { recursive: true });
    const tmp = `${link}.tmp-${process.pid}`;
    await rm(tmp, { force: true });
    await symlink(device, tmp);
    await rename(tmp, link); // atomic: the link never points nowhere while being replaced
  }

  async function detachDevice(device: string): Promise<void> {
    try {
      await run("losetup", ["--detach", device], { timeoutMs: LOSETUP_TIMEOUT_MS });
    } catch (err) {
      // Someone else detached it in between: fine.
      if ((await listLoopDevices()).some((d) => d.name === device)) throw err;
    }
  }

  async function detachNow(volumeId: string): Promise<void> {
    await rm(linkPath(volumeId), { force: true });
    for (const device of await devicesOf(await filePath(volumeId))) await detachDevice(device);
  }

  return {
    linkPath,

    async deviceOf(volumeId) {
      checkId(volumeId);
      return (await devicesOf(await filePath(volumeId)))[0];
    },

    attach(volumeId, sizeGiB) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        const file = await filePath(volumeId);
        known.add(volumeId);
        await growFile(file, sizeGiB);
        let device = (await devicesOf(file))[0];
        if (device === undefined) {
          const { stdout } = await run("losetup", ["--find", "--show", "--", file], {
            timeoutMs: LOSETUP_TIMEOUT_MS,
          });
          device = stdout.trim();
        } else {
          await run("losetup", ["--set-capacity", device], { timeoutMs: LOSETUP_TIMEOUT_MS });
        }
        const link = linkPath(volumeId);
        await pointLink(link, device);
        return { device, link };
      });
    },

    detach(volumeId) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        await detachNow(volumeId);
      });
    },

    resize(volumeId, sizeGiB) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        const file = await filePath(volumeId);
        // A volume never attached has no file yet: attach creates it at EC2's size of the moment.
        if (!(await stat(file).catch(() => undefined))) return;
        await growFile(file, sizeGiB);
        for (const device of await devicesOf(file)) {
          await run("losetup", ["--set-capacity", device], { timeoutMs: LOSETUP_TIMEOUT_MS });
        }
      });
    },

    snapshot(volumeId, snapshotId) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        if (!SOURCE_ID.test(snapshotId)) throw new Error(`attach sim: bad snapshot id "${snapshotId}"`);
        await copySparse(await filePath(volumeId), await filePath(snapshotId));
      });
    },

    copyInto(volumeId, sourceId) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        if (!SOURCE_ID.test(sourceId)) throw new Error(`attach sim: bad source id "${sourceId}"`);
        if (await copySparse(await filePath(sourceId), await filePath(volumeId))) known.add(volumeId);
      });
    },

    async removeSnapshot(snapshotId) {
      if (!SOURCE_ID.test(snapshotId)) throw new Error(`attach sim: bad snapshot id "${snapshotId}"`);
      await rm(await filePath(snapshotId), { force: true });
    },

    remove(volumeId) {
      return serial(volumeId, async () => {
        checkId(volumeId);
        await detachNow(volumeId);
        await rm(await filePath(volumeId), { force: true });
        known.delete(volumeId);
      });
    },

    async cleanup() {
      const errors: unknown[] = [];
      const attempt = async (fn: () => Promise<unknown>): Promise<void> => {
        try {
          await fn();
        } catch (err) {
          errors.push(err);
        }
      };
      let dir: string | undefined;
      await attempt(async () => {
        dir = await stateDir();
      });
      if (dir !== undefined) {
        const under = `${dir}/`;
        let loops: LoopDevice[] = [];
        await attempt(async () => {
          loops = (await listLoopDevices()).filter((d) => d.backFile.startsWith(under));
        });
        for (const loop of loops) {
          // A failed test may have left the device mounted, bind mounts included: deepest first.
          await attempt(async () => {
            const points = [...new Set((await findMountsOfSource(loop.name)).map((m) => m.mountPoint))];
            points.sort((a, b) => b.length - a.length);
            for (const p of points) await attempt(() => unmountAll(p));
          });
          await attempt(() => detachDevice(loop.name));
        }
        // The sim's own list, for whatever the scan could not see (e.g. a link whose device is gone).
        for (const volumeId of known) await attempt(() => detachNow(volumeId));
        await attempt(async () => {
          for (const name of await readdir(dir!)) {
            if (name.endsWith(".img")) await attempt(() => rm(path.join(dir!, name), { force: true }));
          }
        });
      }
      await attempt(async () => {
        const names = await readdir(byIdDir).catch((err: NodeJS.ErrnoException) => {
          if (err.code === "ENOENT") return [] as string[];
          throw err;
        });
        for (const name of names) {
          if (name.startsWith(LINK_PREFIX))
            await attempt(() => rm(path.join(byIdDir, name), { force: true }));
        }
      });
      known.clear();
      if (errors.length > 0)
        throw new AggregateError(errors, `attach sim cleanup: ${errors.length} step(s) failed`);
    },
  };
}
