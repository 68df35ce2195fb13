/** The process measureUsage (usage-walk.ts) starts: walks one volume and prints what it found. */
import { runChild } from "./usage-walk.ts";

// No process.exit: it could cut off the answer still being written to the pipe.
runChild(process.argv[2] ?? "{}").catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
