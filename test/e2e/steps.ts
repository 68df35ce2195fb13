import { DescribeVolumesCommand } from "@aws-sdk/client-ec2";
import { afterAll, afterEach, beforeAll, beforeEach, onTestFailed } from "vitest";
import { type E2eEnv, type E2eOptions, startE2e } from "./env.ts";
import { waitFor as waitForOrExit } from "./processes.ts";

export const MINUTE = 60_000;

/**
 * One environment for the scenarios of a describe block: started before the first, stopped after
 * the last. After each scenario, what it left in the test namespace is deleted (a failed scenario
 * leaves its objects; the scenarios themselves check that their own deletions work). `env` reads
 * through to the environment once it has started.
 */
export function useE2e(options: E2eOptions) {
  let current: E2eEnv | undefined;
  beforeAll(async () => {
    current = await startE2e(options);
  }, 10 * MINUTE);
  afterAll(async () => {
    await current?.stop();
  }, 5 * MINUTE);
  beforeEach(() => {
    // A scenario on a cluster missing a component would only wait out its timeouts.
    const crashed = current?.cluster.components.filter((c) => c.crashedAlready) ?? [];
    if (crashed.length > 0) {
      throw new Error(
        `the cluster is broken: ${crashed.map((c) => `${c.name} exited\n${c.tail(30)}`).join("\n")}`,
      );
    }
  });
  afterEach(async () => {
    await current?.deleteAll();
  }, 5 * MINUTE);
  const getEnv = () => {
    if (!current) throw new Error("the e2e environment did not start (see the error of beforeAll)");
    return current;
  };
  const env = new Proxy({} as E2eEnv, {
    get: (_, key) => Reflect.get(getEnv(), key),
    set: (_, key, value) => Reflect.set(getEnv(), key, value),
  });
  return { env, ...steps(getEnv) };
}

/** The steps the scenarios share, each as a user would take it with kubectl. */
function steps(getEnv: () => E2eEnv) {
  /** Polls until check returns a value; fails at once if a component of the cluster crashes. */
  const waitFor = <T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number) =>
    waitForOrExit(what, check, timeoutMs, getEnv().cluster.crashed());

  /** On failure, print what a person would look at. */
  const diagnoseOnFailure = () =>
    onTestFailed(async () => {
      console.error(
        await getEnv()
          .diagnostics()
          .catch((err: unknown) => `no diagnostics: ${String(err)}`),
      );
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

  /** The EC2 volume as DescribeVolumes shows it, or undefined once it is gone. */
  const ec2Volume = async (volumeId: string) => {
    const out = await getEnv()
      .aws.ec2.send(new DescribeVolumesCommand({ VolumeIds: [volumeId] }))
      .catch((err: Error) => (err.name.includes("NotFound") ? { Volumes: [] } : Promise.reject(err)));
    return out.Volumes?.[0];
  };

  return { diagnoseOnFailure, waitFor, podPhase, waitRunning, exec, waitGone, volumeOf, ec2Volume };
}
