import type { Mode } from "./config.ts";

/**
 * The mode named on a command line (--mode X or --mode=X), read before the full parse in config.ts:
 * src/main.ts needs it before anything else loads. A command line it cannot read gets the flags of
 * the default mode, "all"; config.ts then reports what is wrong with it.
 */
export function modeOfCommandLine(argv: string[]): Mode {
  let mode: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--mode") mode = argv[++i];
    else if (arg.startsWith("--mode=")) mode = arg.slice("--mode=".length);
  }
  return mode === "controller" || mode === "node" ? mode : "all";
}
