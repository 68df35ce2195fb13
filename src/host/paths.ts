import { constants } from "node:fs";
import { lstat, mkdir, open, realpath } from "node:fs/promises";
import path from "node:path";
import { bounded } from "./bounded.ts";
import { listMounts, type MountEntry } from "./mounts.ts";

/** Linux PATH_MAX (4096) counts the terminating NUL: 4095 bytes is the longest usable path. */
export const MAX_PATH_BYTES = 4095;
/** Linux NAME_MAX: one path component. */
export const MAX_NAME_BYTES = 255;
export const DEFAULT_KUBELET_DIR = "/var/lib/kubelet";

/**
 * Why a kubelet path (staging_target_path, target_path) is unacceptable as a string, or undefined
 * when it is fine. Only exact, normalized absolute paths pass, so the string we mount at is the
 * string the mount table will show and no `..` can lead elsewhere. "/" is refused: no CSI path is
 * ever the root, and mounting over it or removing it would take the node down.
 */
export function invalidPathReason(p: string): string | undefined {
  if (p === "") return "must not be empty";
  if (p.includes("\0")) return "must not contain a NUL character";
  const bytes = Buffer.byteLength(p, "utf8");
  if (bytes > MAX_PATH_BYTES) return `must be at most ${MAX_PATH_BYTES} bytes long, not ${bytes}`;
  if (!p.startsWith("/")) return `must be an absolute path, not "${shorten(p)}"`;
  if (p === "/") return "must not be the root directory";
  if (p.endsWith("/")) return `must not end with "/"`;
  const segments = p.split("/").slice(1);
  if (segments.includes("..")) return `must not contain ".." segments`;
  if (path.posix.normalize(p) !== p)
    return `must be normalized (no "//" or "." segments), not "${shorten(p)}"`;
  const long = segments.find((s) => Buffer.byteLength(s, "utf8") > MAX_NAME_BYTES);
  if (long !== undefined) return `has a component longer than ${MAX_NAME_BYTES} bytes`;
  return undefined;
}

/** A path inside (or equal to) dir. */
const isWithin = (p: string, dir: string): boolean => p === dir || p.startsWith(`${dir}/`);

export type Confined = { ok: true; path: string } | { ok: false; reason: string };

/**
 * The kubelet's directories (`--kubelet-dir`): the only place where the node plugin creates,
 * mounts or deletes anything. A path is accepted when it is well formed, lies below one of them as
 * written, and none of its existing components is a symbolic link that leads out of them; its last
 * component may not be a symbolic link at all (kubelet never makes one, and mount would follow it).
 */
export class KubeletDirs {
  readonly #dirs: { given: string; real: string }[];

  private constructor(dirs: { given: string; real: string }[]) {
    this.#dirs = dirs;
  }

  /** Resolves each directory once, at start-up (the kubelet's root may itself be a symlink). */
  static async open(dirs: readonly string[]): Promise<KubeletDirs> {
    const resolved = await Promise.all(
      dirs.map(async (given) => ({
        given,
        real: await bounded(`realpath ${given}`, () => realpath(given)).catch(() => given),
      })),
    );
    return new KubeletDirs(resolved);
  }

  get dirs(): string[] {
    return this.#dirs.map((d) => d.given);
  }

  /** Why p cannot be a kubelet path, judged from the string alone (no filesystem call), or undefined. */
  lexicalReason(p: string): string | undefined {
    const reason = invalidPathReason(p);
    if (reason) return reason;
    if (this.#dirs.some((d) => isWithin(p, d.given) || isWithin(p, d.real))) return undefined;
    return `must lie under the kubelet directory (${this.dirs.join(", ")}), not "${shorten(p)}"`;
  }

  /**
   * Checks p and returns it with its existing parent directories resolved: the path the kernel
   * will show in the mount table. The last component is not looked at when something is mounted
   * there (a dead NFS mount would hang a stat of it). `mounts`: the mount table, when the caller
   * has just read it (one read instead of two).
   */
  async confine(p: string, opts: { mounts?: readonly MountEntry[] } = {}): Promise<Confined> {
    const lexical = this.lexicalReason(p);
    if (lexical) return { ok: false, reason: lexical };
    const missing: string[] = [];
    let existing = path.dirname(p);
    let real: string;
    for (;;) {
      try {
        const dir = existing;
        real = await bounded(`realpath ${dir}`, () => realpath(dir));
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "ENOENT") {
          if (code === "ENOTDIR") return { ok: false, reason: `has a component that is not a directory` };
          if (code === "ELOOP") return { ok: false, reason: "has a loop of symbolic links" };
          throw err;
        }
        const dir = existing;
        if (await lstatOrUndefined(dir)) {
          return { ok: false, reason: `has a component that is a symbolic link leading nowhere: ${dir}` };
        }
        missing.unshift(path.basename(existing));
        existing = path.dirname(existing);
      }
    }
    if (!this.#dirs.some((d) => isWithin(real, d.real))) {
      return {
        ok: false,
        reason:
          real === existing
            ? `must lie under the kubelet directory (${this.dirs.join(", ")}), which does not exist here`
            : `leads out of the kubelet directory through a symbolic link: ${existing} is ${real}`,
      };
    }
    const resolved = path.join(real, ...missing, path.basename(p));
    if (
      missing.length === 0 &&
      !(opts.mounts ?? (await listMounts())).some((m) => m.mountPoint === resolved)
    ) {
      const info = await lstatOrUndefined(resolved);
      if (info?.isSymbolicLink()) return { ok: false, reason: "must not be a symbolic link" };
    }
    return { ok: true, path: resolved };
  }
}

/** lstat, bounded; undefined when nothing is there (ENOENT, ENOTDIR). */
export async function lstatOrUndefined(p: string) {
  return bounded(`lstat ${p}`, () => lstat(p)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR") return undefined;
    throw err;
  });
}

/**
 * mkdir -p without following symbolic links: each missing directory is made on its own (mkdir(2)
 * never follows a link at the last component), and one that appears meanwhile must be a real
 * directory. Node's recursive mkdir is not used: under /proc it loops forever (Node 24).
 */
export async function makeDirectories(dir: string): Promise<void> {
  const toMake: string[] = [];
  let current = dir;
  while (current !== "/" && !(await lstatOrUndefined(current))) {
    toMake.unshift(current);
    current = path.dirname(current);
  }
  for (const d of toMake) {
    try {
      await bounded(`mkdir ${d}`, () => mkdir(d, 0o750));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
  const info = await lstatOrUndefined(dir);
  if (!info?.isDirectory())
    throw new Error(`${dir} is not a directory (a symbolic link?): refusing to use it`);
}

/** Creates an empty file (a block volume's publish target) and its directories, following no link. */
export async function makeFile(file: string): Promise<void> {
  await makeDirectories(path.dirname(file));
  const flags = constants.O_CREAT | constants.O_WRONLY | constants.O_NOFOLLOW;
  const handle = await bounded(`create ${file}`, () => open(file, flags, 0o640)).catch(
    (err: NodeJS.ErrnoException) => {
      if (err.code === "ELOOP") throw new Error(`${file} is a symbolic link: refusing to use it`);
      throw err;
    },
  );
  await handle.close();
}

/** Cut on code points, never inside a surrogate pair: gRPC cannot send a malformed string. */
const shorten = (p: string): string => {
  const points = [...p];
  return points.length > 200 ? `${points.slice(0, 200).join("")}...` : p;
};
