/**
 * Which CPUs the fake AWS and the drivers run on during the benchmark's AWS scenarios.
 *
 * moto answers one request at a time, on one CPU. Sharing the machine's CPUs with it (two here),
 * a driver that spends more CPU in a burst takes some of moto's, so its AWS answers more slowly:
 * a cost production, where AWS runs elsewhere, does not have. With moto on a CPU of its own and
 * every driver and the load generator on the others, each driver waits for an AWS as fast for one
 * as for the other; what a driver spends is still shown, as its CPU time. Measured on 2026-12-06:
 * 100 deletes with 25 ms of AWS latency took 1.07-1.12x the official driver's time with moto
 * sharing the CPUs (four benchmark runs), 0.95-1.10x with moto on its own (three).
 */
import { execFileSync } from "node:child_process";
import os from "node:os";

export interface CpuLayout {
  /** What the layouts are, or why there is one only; for the benchmark's notes. */
  description: string;
  /** moto on CPU 0, this process (and the drivers it starts from now on) on the others. */
  separate(): void;
  /** Every process on every CPU again. */
  share(): void;
}

/** Why the fake AWS cannot have a CPU of its own here, or undefined when it can. */
function cannotSeparate(cpus: number, fakeAwsPid: number | undefined, all: string): string | undefined {
  if (cpus < 2) return "one CPU only";
  if (fakeAwsPid === undefined) return "the fake AWS is not a process here";
  try {
    pin(all, fakeAwsPid);
    return undefined;
  } catch (err) {
    return `taskset failed: ${(err as Error).message.split("\n")[0]}`;
  }
}

function pin(list: string, pid: number): void {
  execFileSync("taskset", ["-a", "-p", "-c", list, String(pid)], { stdio: "ignore" });
}

export function cpuLayout(fakeAwsPid: number | undefined): CpuLayout {
  const cpus = os.availableParallelism();
  const all = `0-${cpus - 1}`;
  const unable = cannotSeparate(cpus, fakeAwsPid, all);
  // (The pid's test only tells the compiler what cannotSeparate already checked.)
  if (unable !== undefined || fakeAwsPid === undefined) {
    return {
      description: `The fake AWS shares the CPUs with the drivers in every scenario (${unable}).`,
      separate: () => {},
      share: () => {},
    };
  }
  const others = cpus === 2 ? "1" : `1-${cpus - 1}`;
  return {
    description: `AWS scenarios (bursts, token buckets): the fake AWS (moto) on CPU 0, the drivers and the load generator on CPU ${others}; rows marked "moto sharing the CPUs" ran with every process on every CPU.`,
    separate() {
      pin("0", fakeAwsPid);
      pin(others, process.pid);
    },
    share() {
      pin(all, fakeAwsPid);
      pin(all, process.pid);
    },
  };
}
