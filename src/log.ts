import { type LevelWithSilent, type Logger, pino } from "pino";

export type { Logger };

/** One logger for the whole process: JSON lines on stderr, so stdout stays free for CLI output. */
export function createLogger(level: LevelWithSilent = "info", destination: number | string = 2): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ dest: destination, sync: true }),
  );
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
