import { onTestFailed } from "vitest";
import type { E2eEnv } from "./env.ts";
import { waitFor } from "./processes.ts";

export const MINUTE = 60_000;

/** The steps the scenarios share, each as a user would take it with kubectl. */
export function steps(getEnv: () => E2eEnv) {
  /** On failure, print what a person would look at. */
  const diagnoseOnFailure = () =>
    onTestFailed(async () => {
      console.error(await getEnv().diagnostics());
    });

  const podPhase = async (name: string) =>
    (
      await getEnv()
        .kubectl(["get", "pod", name, "-o", "jsonpath={.status.phase}"])
        .catch(() => "")
    ).trim();

  const waitRunning = (name: string, timeoutMs = 3 * MINUTE) =>
    waitFor(
      `pod ${name} Running`,
      async () => ((await podPhase(name)) === "Running" ? true : undefined),
      timeoutMs,
    );

  const exec = (podName: string, script: string) =>
    getEnv().kubectl(["exec", podName, "--", "sh", "-c", script]);

  const waitGone = (kind: string, name: string, timeoutMs = 3 * MINUTE) =>
    waitFor(
      `${kind} ${name} to be gone`,
      async () => {
        const out = await getEnv().kubectl(["get", kind, name, "--ignore-not-found", "-o", "name"]);
        return out.trim() === "" ? true : undefined;
      },
      timeoutMs,
    );

  const volumeOf = async (claim: string) => {
    const pvName = (
      await getEnv().kubectl(["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"])
    ).trim();
    const pv = await getEnv().get("pv", pvName);
    return { pvName, pv, volumeId: pv.spec.csi.volumeHandle as string };
  };

  return { diagnoseOnFailure, podPhase, waitRunning, exec, waitGone, volumeOf };
}
