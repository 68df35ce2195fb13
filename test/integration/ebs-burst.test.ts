// A burst of CreateVolume calls as the external-provisioner sends them (every name several times,
// retried until OK) against an EC2 that throttles, fails and loses answers, once with the driver
// killed halfway. The property: exactly one volume per name, and every caller of a name is told
// the same volume id.
import { setTimeout as sleep } from "node:timers/promises";
import { DescribeVolumesCommand, type Volume } from "@aws-sdk/client-ec2";
import { type ServiceError, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { type EbsEnv, startEbsEnv } from "../harness/ebs-env.ts";

const GiB = 1024 ** 3;
const NAMES = 100;
const CALLS_PER_NAME = 3;
const MAX_TRIES = 200;
/** Codes the external-provisioner retries (the call may still be under way, or may have happened). */
const RETRIED = new Set([status.ABORTED, status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.INTERNAL]);
const mountCap = { mount: { fs_type: "ext4" }, access_mode: { mode: "SINGLE_NODE_WRITER" } };

let env: EbsEnv | undefined;

afterEach(async () => {
  await env?.stop();
  env = undefined;
});

interface BurstResult {
  /** name -> the volume id each of its callers got (undefined for a caller that gave up). */
  ids: Map<string, (string | undefined)[]>;
  /** Calls that failed with a code the provisioner would not retry. */
  unexpected: string[];
  /** Callers that ran out of tries. */
  exhausted: string[];
  /** Failed attempts by gRPC code name. */
  retries: Record<string, number>;
}

/**
 * Sends CALLS_PER_NAME CreateVolume calls for each of NAMES names, all at once; each caller retries
 * its call on a retryable code with a short, growing backoff. onFirstSuccess runs when a name gets
 * its first answer, with the number of names answered so far.
 */
async function burst(e: EbsEnv, prefix: string, onFirstSuccess?: (answered: number) => void) {
  const result: BurstResult = { ids: new Map(), unexpected: [], exhausted: [], retries: {} };
  let answered = 0;
  const callOnce = async (name: string): Promise<string | undefined> => {
    for (let attempt = 0; attempt < MAX_TRIES; attempt++) {
      try {
        const reply = await e.client.call(
          "Controller",
          "CreateVolume",
          {
            name,
            capacity_range: { required_bytes: GiB },
            volume_capabilities: [mountCap],
            parameters: { type: "gp3" },
          },
          60_000,
        );
        return reply.volume.volume_id as string;
      } catch (err) {
        const { code, details } = err as ServiceError;
        const codeName = status[code] ?? String(code);
        result.retries[codeName] = (result.retries[codeName] ?? 0) + 1;
        if (!RETRIED.has(code)) {
          result.unexpected.push(`${name}: ${codeName}: ${details}`);
          return undefined;
        }
        await sleep(Math.min(2000, 50 * 1.5 ** Math.min(attempt, 10)) * (0.5 + Math.random()));
      }
    }
    result.exhausted.push(name);
    return undefined;
  };

  const names = Array.from({ length: NAMES }, (_, i) => `${prefix}-${String(i).padStart(3, "0")}`);
  await Promise.all(
    names.map(async (name) => {
      const callers = Array.from({ length: CALLS_PER_NAME }, async () => {
        const id = await callOnce(name);
        return id;
      });
      let reported = false;
      const ids = await Promise.all(
        callers.map((c) =>
          c.then((id) => {
            if (id && !reported) {
              reported = true;
              onFirstSuccess?.(++answered);
            }
            return id;
          }),
        ),
      );
      result.ids.set(name, ids);
    }),
  );
  return result;
}

/** Volumes tagged CSIVolumeName, asked of moto directly. */
async function csiVolumes(e: EbsEnv): Promise<Volume[]> {
  const out = await e.aws.ec2.send(
    new DescribeVolumesCommand({ Filters: [{ Name: "tag-key", Values: ["CSIVolumeName"] }] }),
  );
  return out.Volumes ?? [];
}

const nameTag = (v: Volume) => v.Tags?.find((t) => t.Key === "CSIVolumeName")?.Value ?? "";

/** The assertions both bursts share: one volume per name, every caller told that volume. */
async function expectOneVolumePerName(e: EbsEnv, result: BurstResult): Promise<void> {
  expect(result.unexpected).toEqual([]);
  expect(result.exhausted).toEqual([]);
  const volumes = await csiVolumes(e);
  const byName = new Map<string, string[]>();
  for (const v of volumes) byName.set(nameTag(v), [...(byName.get(nameTag(v)) ?? []), v.VolumeId ?? ""]);
  expect(volumes).toHaveLength(NAMES);
  expect([...byName.keys()].sort()).toEqual([...result.ids.keys()].sort());
  for (const [name, ids] of result.ids) {
    expect(ids, name).toEqual(Array(CALLS_PER_NAME).fill(byName.get(name)?.[0]));
  }
}

function report(label: string, e: EbsEnv, result: BurstResult): void {
  const stats = e.aws.proxy.stats();
  const total = Object.values(stats).reduce((a, b) => a + b, 0);
  const perAction = Object.entries(stats)
    .sort(([, a], [, b]) => b - a)
    .map(([action, n]) => `${action} ${n} (${(n / NAMES).toFixed(2)}/volume)`)
    .join(", ");
  const durations = e.driver.stderr
    .split("\n")
    .filter((line) => line.includes('"msg":"done"') && line.includes('"method":"CreateVolume"'))
    .map((line) => Number(/"ms":(\d+)/.exec(line)?.[1] ?? 0));
  console.log(
    `${label}: ${total} AWS calls for ${NAMES} volumes = ${(total / NAMES).toFixed(2)} per volume ` +
      `[${perAction}]; failed CSI attempts retried: ${JSON.stringify(result.retries)}; ` +
      `slowest CreateVolume in the (last) driver process: ${Math.max(0, ...durations)} ms`,
  );
}

describe("CreateVolume burst under throttling and 5xx", () => {
  it("100 names x 3 concurrent callers: exactly 100 volumes, one per name, the same id for every caller", async () => {
    env = await startEbsEnv({ mode: "controller" });
    env.aws.proxy.resetStats();
    Object.assign(env.aws.proxy.faults, { throttle: { rate: 0.3 }, errorRate: 0.05, lostAnswerShare: 0.5 });

    const result = await burst(env, "pvc-burst");

    env.aws.proxy.faults.throttle = undefined;
    env.aws.proxy.faults.errorRate = 0;
    report("burst", env, result);
    await expectOneVolumePerName(env, result);
    // The faults did happen: the test would prove nothing on a quiet EC2.
    expect(env.aws.proxy.stats().CreateVolume).toBeGreaterThan(NAMES);
  }, 900_000);

  it("the same burst with the driver SIGKILLed halfway and restarted: still exactly 100 volumes", async () => {
    const e = await startEbsEnv({ mode: "controller" });
    env = e;
    e.aws.proxy.resetStats();
    Object.assign(e.aws.proxy.faults, { throttle: { rate: 0.3 }, errorRate: 0.05, lostAnswerShare: 0.5 });

    const firstPid = e.driver.child?.pid;
    let restarted: Promise<void> | undefined;
    let killedAfter = 0;
    const result = await burst(e, "pvc-crash", (answered) => {
      if (answered >= NAMES / 2 && !restarted) {
        killedAfter = answered;
        restarted = e.restart("SIGKILL");
      }
    });
    await restarted;

    e.aws.proxy.faults.throttle = undefined;
    e.aws.proxy.faults.errorRate = 0;
    report(`burst with SIGKILL after ${killedAfter} names`, e, result);
    expect(restarted).toBeDefined();
    // The second half was answered by a new process: it logged successful CreateVolume calls.
    expect(e.driver.child?.pid).not.toBe(firstPid);
    const served = e.driver.stderr
      .split("\n")
      .filter((line) => line.includes('"method":"CreateVolume"') && line.includes('"code":"OK"'));
    expect(served.length).toBeGreaterThan(0);
    await expectOneVolumePerName(e, result);
  }, 900_000);
});
