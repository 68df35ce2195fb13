import path from "node:path";

/** Linux PATH_MAX. */
export const MAX_PATH_BYTES = 4096;
/** Linux NAME_MAX: one path component. */
export const MAX_NAME_BYTES = 255;

/**
 * Why a kubelet path (staging_target_path, target_path) is unacceptable, or undefined when it is
 * fine. The caller turns the reason into INVALID_ARGUMENT naming the field. Only exact, normalized
 * absolute paths pass, so the string we mount at is the string the mount table will show and no
 * `..` can lead outside the kubelet's directories. "/" is refused: no CSI path is ever the root, and
 * mounting over it or removing it would take the node down.
 */
export function invalidPathReason(p: string): string | undefined {
  if (p === "") return "must not be empty";
  if (p.includes("\0")) return "must not contain a NUL character";
  const bytes = Buffer.byteLength(p, "utf8");
  if (bytes > MAX_PATH_BYTES) return `must be at most ${MAX_PATH_BYTES} bytes long, not ${bytes}`;
  if (!p.startsWith("/")) return `must be an absolute path, not "${p}"`;
  if (p === "/") return "must not be the root directory";
  if (p.endsWith("/")) return `must not end with "/"`;
  const segments = p.split("/").slice(1);
  if (segments.includes("..")) return `must not contain ".." segments`;
  if (path.posix.normalize(p) !== p) return `must be normalized (no "//" or "." segments), not "${p}"`;
  const long = segments.find((s) => Buffer.byteLength(s, "utf8") > MAX_NAME_BYTES);
  if (long !== undefined) return `has a component longer than ${MAX_NAME_BYTES} bytes`;
  return undefined;
}
