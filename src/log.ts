import { openSync, writeSync } from "node:fs";
import type { Writable } from "node:stream";

/** Levels in order of severity; "silent" logs nothing. */
export type Level = "trace" | "debug" | "info" | "warn" | "error" | "fatal";
export type LevelWithSilent = Level | "silent";

const SEVERITY: Record<LevelWithSilent, number> = {
  trace: 10,
  debug: 20,
  info: 30,
  warn: 40,
  error: 50,
  fatal: 60,
  silent: Number.POSITIVE_INFINITY,
};

type LogFn = {
  (msg: string): void;
  (fields: object, msg?: string): void;
};

/**
 * The process's logger: one JSON object per line, `{"level","time","pid",...bindings,...fields,"msg"}`
 * (the shape pino writes, so log pipelines built for it keep working). Lines are written
 * synchronously: a line is never lost when the process exits right after it.
 */
export interface Logger {
  readonly level: LevelWithSilent;
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  isLevelEnabled(level: Level): boolean;
  /** A logger that adds `bindings` to every line. */
  child(bindings: object): Logger;
}

/** Where lines go: a file descriptor (2 = stderr), a file path, or a stream (tests). */
export type Destination = number | string | Writable;

/** One logger for the whole process: JSON lines on stderr, so stdout stays free for CLI output. */
export function createLogger(level: LevelWithSilent = "info", destination: Destination = 2): Logger {
  const write = sink(destination);
  return makeLogger(SEVERITY[level], level, "", write);
}

function sink(destination: Destination): (line: string) => void {
  if (typeof destination === "number") return (line) => writeAll(destination, line);
  if (typeof destination === "string") {
    let fd: number | undefined;
    return (line) => {
      fd ??= openSync(destination, "a");
      writeAll(fd, line);
    };
  }
  return (line) => destination.write(line);
}

/** writeSync may write part of a line (a pipe that is full): the rest follows, or the line is dropped on error. */
function writeAll(fd: number, line: string): void {
  let buf = Buffer.from(line);
  try {
    while (buf.length > 0) buf = buf.subarray(writeSync(fd, buf));
  } catch {
    // A closed or broken stderr must not take the plugin down: the line is lost.
  }
}

function makeLogger(
  threshold: number,
  level: LevelWithSilent,
  bound: string,
  write: (line: string) => void,
): Logger {
  const prefix = `,"pid":${process.pid}`;
  const at = (name: Level): LogFn => {
    if (SEVERITY[name] < threshold) return noop;
    const head = `{"level":"${name}","time":"`;
    return (a: object | string, msg?: string) => {
      let fields = "";
      let text = msg;
      if (typeof a === "string") text = a;
      else if (a instanceof Error) {
        fields = `,"err":${stringify(serializeError(a))}`;
        text ??= a.message;
      } else fields = fieldsOf(a);
      const tail = text === undefined ? "" : `,"msg":${JSON.stringify(text)}`;
      write(`${head}${new Date().toISOString()}"${prefix}${bound}${fields}${tail}}\n`);
    };
  };
  return {
    level,
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    fatal: at("fatal"),
    isLevelEnabled: (name) => SEVERITY[name] >= threshold,
    child: (bindings) => makeLogger(threshold, level, bound + fieldsOf(bindings), write),
  };
}

const noop: LogFn = () => undefined;

/** `,"k":v,...` for an object's own fields (Errors anywhere become {type,message,stack}), or "". */
function fieldsOf(fields: object): string {
  const json = stringify(fields);
  return json.length > 2 ? `,${json.slice(1, -1)}` : "";
}

function serializeError(err: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { type: err.name, message: err.message, stack: err.stack };
  for (const [k, v] of Object.entries(err)) out[k] ??= v;
  return out;
}

/** JSON that never throws: Errors are serialized, BigInts become strings, cycles become "[Circular]". */
function stringify(value: unknown): string {
  try {
    return JSON.stringify(value, plain);
  } catch {
    // Only a cycle (or a throwing getter) gets here: the slower walk that marks repeats.
    const seen = new WeakSet<object>();
    try {
      return JSON.stringify(value, (key, v: unknown) => {
        const out = plain(key, v);
        if (out !== null && typeof out === "object") {
          if (seen.has(out)) return "[Circular]";
          seen.add(out);
        }
        return out;
      });
    } catch (err) {
      return JSON.stringify({ logError: (err as Error).message });
    }
  }
}

function plain(_key: string, v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Error) return serializeError(v);
  return v;
}

const REDACTED = "[redacted]";

/**
 * A copy of a request that is safe to log: every field named `secrets` (the fields CSI marks
 * `csi_secret`) is replaced, at any depth, and long maps are cut short.
 */
export function redactSecrets(value: unknown, depth = 0): unknown {
  if (depth > 8 || value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.slice(0, 20).map((v) => redactSecrets(v, depth + 1));
  const out: Record<string, unknown> = {};
  let n = 0;
  for (const [key, v] of Object.entries(value)) {
    if (++n > 64) {
      out["…"] = `${Object.keys(value).length - 64} more keys`;
      break;
    }
    if (key === "secrets") {
      const count = v && typeof v === "object" ? Object.keys(v).length : 0;
      out[key] = count === 0 ? {} : REDACTED;
    } else {
      out[key] = redactSecrets(v, depth + 1);
    }
  }
  return out;
}
