/**
 * npm run bench: measures the driver under load against the fake AWS, each figure next to a
 * baseline measured in the same run (these machines are shared and noisy: compare ratios, not
 * milliseconds across runs). AWS calls are counted by the fault proxy, so they are exact.
 *
 *   BENCH_VOLUMES=100 BENCH_LATENCY_MS=25 BENCH_ROUNDS=3 npm run bench
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { REPO_ROOT } from "../test/harness/driver-process.ts";
import { startEbsEnv } from "../test/harness/ebs-env.ts";
import { benchGidAllocation } from "./gid.ts";

// Measure the driver as the image runs it: compiled, with the image's V8 flags.
process.env.DRIVER_MAIN ??= join(REPO_ROOT, "dist/main.js");
process.env.NODE_OPTIONS ??= "--max-semi-space-size=4";

const VOLUMES = Number(process.env.BENCH_VOLUMES ?? 100);
// An m5.large takes 27 attachments, less its network interface and root volume.
const ATTACHES = Math.min(VOLUMES, 25);
const LATENCY_MS = Number(process.env.BENCH_LATENCY_MS ?? 25);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const GiB = 1024 ** 3;

interface Figures {
  /** Peak resident memory of the driver process over the round (VmHWM), MiB. */
  peakRssMiB: number;
  createMs: number;
  attachMs: number;
  detachMs: number;
  deleteMs: number;
  /** VOLUMES concurrent CreateSnapshot calls (one per volume), as snapshotters send them. */
  snapshotMs: number;
  calls: Record<string, number>;
  /** AWS calls of the snapshot phase alone: first calls, then one readiness poll per snapshot. */
  snapshotCalls: Record<string, number>;
}

const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: "ext4" } };

/** One round: VOLUMES concurrent creates, ATTACHES concurrent attaches to one node, then teardown. */
async function round(batching: boolean): Promise<Figures> {
  process.env.DRIVER_LOG_LEVEL = "warn";
  const env = await startEbsEnv({ mode: "controller", extraArgs: ["--batching", String(batching)] });
  try {
    env.aws.proxy.faults.latencyMs = LATENCY_MS;
    env.aws.proxy.resetStats();
    const timed = async <T>(work: () => Promise<T>): Promise<[T, number]> => {
      const started = performance.now();
      const result = await work();
      return [result, performance.now() - started];
    };
    const [ids, createMs] = await timed(() =>
      Promise.all(
        Array.from({ length: VOLUMES }, async (_, i) => {
          const res = await env.client.call("Controller", "CreateVolume", {
            name: `pvc-bench-${i}`,
            capacity_range: { required_bytes: GiB },
            volume_capabilities: [capability],
          });
          return res.volume.volume_id as string;
        }),
      ),
    );
    const before = env.aws.proxy.stats();
    const snapshot = () =>
      Promise.all(
        ids.map(async (volume_id, i) => {
          const res = await env.client.call("Controller", "CreateSnapshot", {
            name: `snapshot-bench-${i}`,
            source_volume_id: volume_id,
          });
          return res.snapshot.snapshot_id as string;
        }),
      );
    const [snapshotIds, snapshotMs] = await timed(snapshot);
    // The snapshotter calls CreateSnapshot again until ready_to_use: one more round of lookups.
    await snapshot();
    const after = env.aws.proxy.stats();
    const snapshotCalls = Object.fromEntries(
      Object.keys(after)
        .map((action) => [action, (after[action] ?? 0) - (before[action] ?? 0)] as const)
        .filter(([, n]) => n > 0),
    );
    await Promise.all(
      snapshotIds.map((snapshot_id) => env.client.call("Controller", "DeleteSnapshot", { snapshot_id })),
    );
    const attached = ids.slice(0, ATTACHES);
    const publish = (method: string) =>
      Promise.all(
        attached.map((volume_id) =>
          env.client.call("Controller", method, {
            volume_id,
            node_id: env.instanceId,
            volume_capability: capability,
          }),
        ),
      );
    const [, attachMs] = await timed(() => publish("ControllerPublishVolume"));
    const [, detachMs] = await timed(() => publish("ControllerUnpublishVolume"));
    const [, deleteMs] = await timed(() =>
      Promise.all(ids.map((volume_id) => env.client.call("Controller", "DeleteVolume", { volume_id }))),
    );
    const peakRssMiB = await peakRss(env.driver.child?.pid);
    return {
      peakRssMiB,
      createMs,
      attachMs,
      detachMs,
      deleteMs,
      snapshotMs,
      calls: env.aws.proxy.stats(),
      snapshotCalls,
    };
  } finally {
    await env.stop();
  }
}

/** The process's peak resident set size, from the kernel (what a memory limit is measured against). */
async function peakRss(pid: number | undefined): Promise<number> {
  const status = pid ? await readFile(`/proc/${pid}/status`, "utf8").catch(() => "") : "";
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? Number.NaN);
  return kib / 1024;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function measure(batching: boolean): Promise<Figures> {
  const rounds: Figures[] = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await round(batching));
  return {
    peakRssMiB: Math.max(...rounds.map((r) => r.peakRssMiB)),
    createMs: median(rounds.map((r) => r.createMs)),
    attachMs: median(rounds.map((r) => r.attachMs)),
    detachMs: median(rounds.map((r) => r.detachMs)),
    deleteMs: median(rounds.map((r) => r.deleteMs)),
    snapshotMs: median(rounds.map((r) => r.snapshotMs)),
    calls: rounds[0]!.calls,
    snapshotCalls: rounds[0]!.snapshotCalls,
  };
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  for (const [i, row] of rows.entries()) {
    console.log(
      row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  "),
    );
    if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
  }
}

async function main(): Promise<void> {
  console.log(
    `EBS controller under load: ${VOLUMES} concurrent CreateVolume, ${ATTACHES} concurrent attaches to one node,` +
      ` AWS answering after ${LATENCY_MS} ms; median of ${ROUNDS} rounds.`,
  );
  console.log("Baseline: the same driver with --batching false (one Describe* call per lookup).\n");
  // Alternate the order so that neither variant always runs on a warmer machine.
  const baseline = await measure(false);
  const ours = await measure(true);

  const ratio = (a: number, b: number) => (b === 0 ? "-" : `${(a / b).toFixed(2)}x`);
  const rows = [["phase", "baseline ms", "batched ms", "batched/baseline"]];
  for (const [label, key] of [
    [`create ${VOLUMES}`, "createMs"],
    [`snapshot ${VOLUMES}`, "snapshotMs"],
    [`attach ${ATTACHES}`, "attachMs"],
    [`detach ${ATTACHES}`, "detachMs"],
    [`delete ${VOLUMES}`, "deleteMs"],
  ] as const) {
    rows.push([label, baseline[key].toFixed(0), ours[key].toFixed(0), ratio(ours[key], baseline[key])]);
  }
  printTable(rows);
  console.log(
    `\nController peak memory (VmHWM) under this load: ${ours.peakRssMiB.toFixed(0)} MiB batched, ` +
      `${baseline.peakRssMiB.toFixed(0)} MiB baseline (the deploy manifests' requests and limits follow from it).`,
  );

  console.log("\nAWS calls for the whole round (exact, counted by the fault proxy):");
  const actions = [...new Set([...Object.keys(baseline.calls), ...Object.keys(ours.calls)])].sort();
  const callRows = [["action", "baseline", "batched", "batched/baseline"]];
  const total = (c: Record<string, number>) => Object.values(c).reduce((a, b) => a + b, 0);
  for (const action of actions) {
    const b = baseline.calls[action] ?? 0;
    const o = ours.calls[action] ?? 0;
    callRows.push([action, String(b), String(o), ratio(o, b)]);
  }
  callRows.push([
    "all",
    String(total(baseline.calls)),
    String(total(ours.calls)),
    ratio(total(ours.calls), total(baseline.calls)),
  ]);
  callRows.push([
    "per volume",
    (total(baseline.calls) / VOLUMES).toFixed(2),
    (total(ours.calls) / VOLUMES).toFixed(2),
    ratio(total(ours.calls), total(baseline.calls)),
  ]);
  printTable(callRows);

  const beyondCreates = (c: Record<string, number>) =>
    Object.entries(c)
      .filter(([action]) => action !== "CreateSnapshot")
      .reduce((sum, [, n]) => sum + n, 0);
  console.log(
    `\nSnapshots: ${VOLUMES} concurrent CreateSnapshot calls, then one readiness poll each (as the snapshotter does):` +
      ` EC2 calls besides the ${ours.snapshotCalls["CreateSnapshot"] ?? 0} creates: batched ${beyondCreates(ours.snapshotCalls)}` +
      ` (${(beyondCreates(ours.snapshotCalls) / VOLUMES).toFixed(2)} per snapshot), baseline ${beyondCreates(baseline.snapshotCalls)}` +
      ` (${(beyondCreates(baseline.snapshotCalls) / VOLUMES).toFixed(2)} per snapshot); ` +
      `${JSON.stringify(ours.snapshotCalls)} batched.`,
  );

  console.log("");
  benchGidAllocation();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
