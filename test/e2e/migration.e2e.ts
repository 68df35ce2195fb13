// The drop-in promise, tested: volumes made by the official EBS driver keep working after it is
// replaced by this one (and the other way round, for a rollback), on the real cluster.
import type { Tag } from "@aws-sdk/client-ec2";
import { describe, expect, test } from "vitest";
import { run } from "../../src/host/exec.ts";
import { NODE_NAME } from "./cluster.ts";
import { type Deployment, deployEbs, EBS, type EbsFlavor } from "./deploy.ts";
import { e2eSkipReason } from "./env.ts";
import { pod, pvc, SLEEP_FOREVER, storageClass } from "./objects.ts";
import { MINUTE, useE2e } from "./steps.ts";

const skip = e2eSkipReason({ official: true });
if (skip) console.warn(`e2e skipped: ${skip}`);

/**
 * Where the two drivers differ in what they leave on a volume a user can see, for the same
 * StorageClass (gp3, ext4, WaitForFirstConsumer). README's "Upgrading from the official drivers"
 * lists the same, with the consequence. A difference not listed here fails the test.
 */
const KNOWN_DIFFERENCES: string[] = [
  // Informational: both drivers take the file system type from the volume capability when staging.
  "volume context: only this driver sets csi.storage.k8s.io/fstype=ext4",
  // kubelet labels every node kubernetes.io/os anyway, and neither driver's PVs select on it.
  "node topology keys: only the official driver sets kubernetes.io/os",
  // Both drivers report both zone keys for the node, so kubelet labels the node with both.
  "PV node affinity keys: only this driver sets topology.ebs.csi.aws.com/zone",
];

/** One claim of each kind the issue names, and what its pod leaves on it. */
const CLAIMS = [
  { name: "ext4", sc: "m-gp3", size: "1Gi" },
  { name: "xfs", sc: "m-xfs", size: "1Gi" },
  { name: "block", sc: "m-gp3", size: "1Gi", block: true },
  { name: "io2", sc: "m-io2", size: "4Gi" },
  { name: "tags", sc: "m-tags", size: "1Gi" },
] as const;
type Claim = (typeof CLAIMS)[number];
/** Per aspect (tags, contexts, topology), the sorted keys or key=value pairs seen. */
type Footprint = Record<string, string[]>;

describe.skipIf(skip)("EBS: switching between the official driver and this one", () => {
  const { env, diagnoseOnFailure, waitFor, waitRunning, exec, volumeOf, ec2Volume } = useE2e({
    ebs: false,
    efs: false,
  });
  let installed: { flavor: EbsFlavor; deployment: Deployment } | undefined;

  const install = async (flavor: EbsFlavor) => {
    if (installed?.flavor === flavor) return;
    await installed?.deployment.remove();
    installed = undefined;
    installed = { flavor, deployment: await deployEbs(env.deployContext, flavor) };
    env.ebs = installed.deployment;
  };

  const classes = () => [
    storageClass("m-gp3", EBS, { parameters: { type: "gp3" } }),
    storageClass("m-xfs", EBS, { parameters: { type: "gp3", "csi.storage.k8s.io/fstype": "xfs" } }),
    storageClass("m-io2", EBS, { parameters: { type: "io2", iops: "1000" } }),
    storageClass("m-tags", EBS, {
      parameters: {
        type: "gp3",
        tagSpecification_1: "team=storage",
        tagSpecification_2: "claim={{ .PVCName }}",
      },
    }),
  ];

  const writer = (prefix: string, c: Claim, text: string) =>
    "block" in c
      ? pod(
          `${prefix}-${c.name}`,
          `printf '%-32s' '${text}' | dd of=/dev/xvda bs=512 conv=sync,fsync 2>/dev/null; ${SLEEP_FOREVER}`,
          {
            claim: `${prefix}-${c.name}`,
            block: true,
          },
        )
      : pod(`${prefix}-${c.name}`, `echo '${text}' >> /data/log && sync && ${SLEEP_FOREVER}`, {
          claim: `${prefix}-${c.name}`,
        });

  const readBack = async (prefix: string, c: Claim) =>
    "block" in c
      ? (await exec(`${prefix}-${c.name}`, "dd if=/dev/xvda bs=32 count=1 2>/dev/null")).trim()
      : (await exec(`${prefix}-${c.name}`, "cat /data/log")).trim();

  /** The file system's UUID, read on the node from the attached disk: the same one means not reformatted. */
  const uuidOf = async (volumeId: string) => {
    const device = await env.sim.deviceOf(volumeId);
    if (!device) throw new Error(`${volumeId} is not attached`);
    const { stdout } = await run("blkid", ["-o", "value", "-s", "UUID", device], { okCodes: [0, 2] });
    return stdout.trim();
  };

  /** Makes the claims and their pods with the installed driver; returns what a switch must keep. */
  const createAll = async (prefix: string, text: string) => {
    await env.apply(
      ...classes(),
      ...CLAIMS.map((c) => pvc(`${prefix}-${c.name}`, c.sc, { size: c.size, block: "block" in c })),
    );
    await env.apply(...CLAIMS.map((c) => writer(prefix, c, text)));
    const kept = new Map<string, { volumeId: string; uuid: string }>();
    for (const c of CLAIMS) {
      await waitRunning(`${prefix}-${c.name}`);
      const { volumeId } = await volumeOf(`${prefix}-${c.name}`);
      kept.set(c.name, { volumeId, uuid: "block" in c ? "" : await uuidOf(volumeId) });
    }
    return kept;
  };

  /** As a node drain: the pods go, kubelet unmounts, the attacher detaches. */
  const drain = async (prefix: string) => {
    await env.kubectl(["delete", "pod", ...CLAIMS.map((c) => `${prefix}-${c.name}`), "--wait=true"]);
    await waitFor(
      "every VolumeAttachment to be gone",
      async () => ((await env.get("volumeattachments")).items.length === 0 ? true : undefined),
      3 * MINUTE,
    );
  };

  /** What a user can see the installed driver leave on a gp3 ext4 claim, for the comparison. */
  const footprint = async (claim: string): Promise<Footprint> => {
    const { pv, volumeId } = await volumeOf(claim);
    const volume = await ec2Volume(volumeId);
    const attachment = (await env.get("volumeattachments")).items.find(
      (va: { spec: { source: { persistentVolumeName?: string } } }) =>
        va.spec.source.persistentVolumeName === pv.metadata.name,
    );
    const csinode = await env.get("csinode", NODE_NAME);
    const topology = csinode.spec.drivers.find((d: { name: string }) => d.name === EBS)?.topologyKeys ?? [];
    const affinity = (pv.spec.nodeAffinity?.required?.nodeSelectorTerms ?? []).flatMap(
      (t: { matchExpressions: { key: string }[] }) => t.matchExpressions.map((e) => e.key),
    );
    const attributes = { ...(pv.spec.csi.volumeAttributes ?? {}) };
    delete attributes["storage.kubernetes.io/csiProvisionerIdentity"];
    return {
      "EC2 tag keys": (volume?.Tags ?? []).map((t: Tag) => t.Key!).sort(),
      "volume context": Object.entries(attributes)
        .map(([k, v]) => `${k}=${v}`)
        .sort(),
      "publish context keys": Object.keys(attachment?.status?.attachmentMetadata ?? {}).sort(),
      "node topology keys": [...topology].sort(),
      "PV node affinity keys": [...new Set<string>(affinity)].sort(),
    };
  };

  const switchAndCheck = async (from: EbsFlavor, to: EbsFlavor) => {
    diagnoseOnFailure();
    const prefix = from === "official" ? "fwd" : "back";
    await install(from);
    const kept = await createAll(prefix, `written by ${from}`);
    const before = await footprint(`${prefix}-ext4`);
    // The StorageClass parameters meant the same to the driver that made the volumes.
    const io2 = await ec2Volume(kept.get("io2")!.volumeId);
    expect([io2?.VolumeType, io2?.Iops, io2?.Size]).toEqual(["io2", 1000, 4]);
    const tagged = await ec2Volume(kept.get("tags")!.volumeId);
    expect(tagged?.Tags).toEqual(
      expect.arrayContaining([
        { Key: "team", Value: "storage" },
        { Key: "claim", Value: `${prefix}-tags` },
      ]),
    );
    await env.apply({
      apiVersion: "snapshot.storage.k8s.io/v1",
      kind: "VolumeSnapshotClass",
      metadata: { name: "m-snap" },
      driver: EBS,
      deletionPolicy: "Delete",
    });
    await snapshot(`${prefix}-old-snap`, `${prefix}-ext4`);

    await drain(prefix);
    await install(to);
    await env.apply(...CLAIMS.map((c) => writer(prefix, c, `written by ${to}`)));
    for (const c of CLAIMS) {
      await waitRunning(`${prefix}-${c.name}`);
      const text = await readBack(prefix, c);
      if ("block" in c) expect(text).toBe(`written by ${to}`);
      else expect(text.split("\n")).toEqual([`written by ${from}`, `written by ${to}`]);
      const k = kept.get(c.name)!;
      if (!("block" in c)) expect(await uuidOf(k.volumeId), `${c.name}: the same file system`).toBe(k.uuid);
    }
    const after = await footprint(`${prefix}-ext4`);
    // The tags the first driver wrote are all still there (nothing rewrote them).
    expect(after["EC2 tag keys"]).toEqual(before["EC2 tag keys"]);

    // Expansion, a new snapshot, and a restore of the old driver's snapshot, by the new driver.
    await env.kubectl([
      "patch",
      "pvc",
      `${prefix}-xfs`,
      "--type=merge",
      "-p",
      '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}',
    ]);
    await waitFor(
      "the xfs claim to report 2Gi",
      async () =>
        (await env.get("pvc", `${prefix}-xfs`)).status.capacity?.storage === "2Gi" ? true : undefined,
      3 * MINUTE,
    );
    await waitFor(
      "df in the pod to show the new size",
      async () => {
        const kib = Number((await exec(`${prefix}-xfs`, "df -k /data | tail -1")).trim().split(/\s+/)[1]);
        return kib > 1.5 * 1024 * 1024 ? true : undefined;
      },
      2 * MINUTE,
    );
    await snapshot(`${prefix}-new-snap`, `${prefix}-ext4`);
    await env.apply(
      pvc(`${prefix}-restored`, "m-gp3", {
        dataSource: {
          apiGroup: "snapshot.storage.k8s.io",
          kind: "VolumeSnapshot",
          name: `${prefix}-old-snap`,
        },
      }),
      pod(`${prefix}-restored`, SLEEP_FOREVER, { claim: `${prefix}-restored` }),
    );
    await waitRunning(`${prefix}-restored`);
    expect((await exec(`${prefix}-restored`, "cat /data/log")).trim()).toBe(`written by ${from}`);

    // Deleting the claims deletes the volumes the other driver made.
    const volumes = [...kept.values()].map((k) => k.volumeId);
    await env.deleteAll();
    for (const id of volumes) {
      await waitFor(`${id} deleted`, async () => ((await ec2Volume(id)) ? undefined : true), 2 * MINUTE);
    }
    return before;
  };

  const snapshot = async (name: string, claim: string) => {
    await env.apply({
      apiVersion: "snapshot.storage.k8s.io/v1",
      kind: "VolumeSnapshot",
      metadata: { name, namespace: "default" },
      spec: { volumeSnapshotClassName: "m-snap", source: { persistentVolumeClaimName: claim } },
    });
    await waitFor(
      `VolumeSnapshot ${name} readyToUse`,
      async () => ((await env.get("volumesnapshot", name)).status?.readyToUse === true ? true : undefined),
      3 * MINUTE,
    );
  };

  let officialFootprint: Footprint | undefined;
  let ourFootprint: Footprint | undefined;

  test("forward: volumes made by the official driver, served by this one", async () => {
    officialFootprint = await switchAndCheck("official", "ours");
  });

  test("backward: volumes made by this driver, served by the official one (a rollback)", async () => {
    ourFootprint = await switchAndCheck("ours", "official");
  });

  test("what differs between the two is what README lists", async () => {
    expect(officialFootprint && ourFootprint, "both switches ran").toBeTruthy();
    const differences: string[] = [];
    for (const [what, theirs] of Object.entries(officialFootprint!)) {
      const mine = ourFootprint![what] ?? [];
      const onlyTheirs = theirs.filter((x) => !mine.includes(x));
      const onlyMine = mine.filter((x) => !theirs.includes(x));
      if (onlyTheirs.length > 0)
        differences.push(`${what}: only the official driver sets ${onlyTheirs.join(", ")}`);
      if (onlyMine.length > 0) differences.push(`${what}: only this driver sets ${onlyMine.join(", ")}`);
    }
    console.log(`differences (official v1.44.0 vs this driver):\n  ${differences.join("\n  ") || "none"}`);
    expect(differences).toEqual(KNOWN_DIFFERENCES);
  });
});
