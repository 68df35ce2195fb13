// EFS under its real callers (see ebs.e2e.ts): a shared ReadWriteMany claim and a static PV.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { DescribeAccessPointsCommand } from "@aws-sdk/client-efs";
import { describe, expect, test } from "vitest";
import { EFS, e2eSkipReason } from "./env.ts";
import { pod, pvc, SLEEP_FOREVER, storageClass } from "./objects.ts";
import { MINUTE, useE2e } from "./steps.ts";

const skip = e2eSkipReason();
if (skip) console.warn(`e2e skipped: ${skip}`);

describe.skipIf(skip)("EFS on a real cluster", () => {
  const { env, diagnoseOnFailure, waitFor, waitRunning, exec, waitGone, volumeOf } = useE2e({ ebs: false });
  /** This file's environment has EFS: its file system and the edge of its TLS mounts are there. */
  const efs = () => ({ fileSystemId: env.fileSystemId!, ...env.efsEdge! });
  const accessPoints = async () =>
    (await env.aws.efs.send(new DescribeAccessPointsCommand({ FileSystemId: efs().fileSystemId })))
      .AccessPoints ?? [];

  test("ReadWriteMany: two pods share one access point, one writes and the other reads", async () => {
    diagnoseOnFailure();
    await env.apply(
      storageClass("efs-ap", EFS, {
        parameters: { provisioningMode: "efs-ap", fileSystemId: efs().fileSystemId, directoryPerms: "700" },
        binding: "Immediate",
        expand: false,
      }),
      pvc("shared", "efs-ap", { accessMode: "ReadWriteMany", size: "5Gi" }),
    );
    await waitFor(
      "PVC shared Bound",
      async () => ((await env.get("pvc", "shared")).status.phase === "Bound" ? true : undefined),
      2 * MINUTE,
    );
    const { volumeId, pvName } = await volumeOf("shared");
    // fs-id::fsap-id, as the official driver's handles.
    const [fs, , accessPointId] = volumeId.split(":");
    expect(fs).toBe(efs().fileSystemId);
    expect((await accessPoints()).map((a) => a.AccessPointId)).toEqual([accessPointId]);

    await env.apply(
      pod("writer", `echo "from the writer" > /data/note && sync && ${SLEEP_FOREVER}`, { claim: "shared" }),
      pod("reader", SLEEP_FOREVER, { claim: "shared" }),
    );
    await waitRunning("writer");
    await waitRunning("reader");
    await waitFor(
      "the reader to see the writer's file",
      async () =>
        (await exec("reader", "cat /data/note 2>/dev/null || true")).trim() === "from the writer"
          ? true
          : undefined,
      MINUTE,
    );
    await exec("reader", "echo 'and the reader' >> /data/note");
    expect((await exec("writer", "cat /data/note")).trim().split("\n")).toEqual([
      "from the writer",
      "and the reader",
    ]);
    // Both pods' mounts went through the node plugin's TLS relay: 127.0.0.1 on a relay port, and
    // the mount target saw the file system and access point in the client certificate.
    const mounts = (await efs().mountNfs4.calls()).filter((c) => c.target.includes(pvName));
    expect(mounts).toHaveLength(2);
    for (const m of mounts) {
      expect(m.source).toBe("127.0.0.1:/");
      expect(m.options).toContainEqual(expect.stringMatching(/^port=(2[0-9]{4})$/));
    }
    expect(efs().targets.connections.filter((c) => c.accessPointId === accessPointId && c.path)).toEqual([
      expect.objectContaining({ fileSystemId: fs, serverName: `${fs}.efs.${env.aws.region}.amazonaws.com` }),
      expect.objectContaining({ fileSystemId: fs }),
    ]);

    await env.kubectl(["delete", "pod", "writer", "reader", "--wait=true"]);
    await env.kubectl(["delete", "pvc", "shared", "--wait=true"]);
    await waitGone("pv", pvName);
    await waitFor(
      "the access point to be deleted",
      async () => ((await accessPoints()).length === 0 ? true : undefined),
      MINUTE,
    );
  });

  test("static PV: a pod writes to the file system's root", async () => {
    diagnoseOnFailure();
    await env.apply(
      {
        apiVersion: "v1",
        kind: "PersistentVolume",
        metadata: { name: "efs-static" },
        spec: {
          capacity: { storage: "5Gi" },
          accessModes: ["ReadWriteMany"],
          persistentVolumeReclaimPolicy: "Retain",
          storageClassName: "",
          csi: { driver: EFS, volumeHandle: efs().fileSystemId },
        },
      },
      pvc("static", "", { accessMode: "ReadWriteMany", size: "5Gi", volumeName: "efs-static" }),
    );
    await env.apply(
      pod("static", `echo static-data > /data/static-file && sync && ${SLEEP_FOREVER}`, { claim: "static" }),
    );
    await waitRunning("static");
    // What the pod wrote is in the file system (the directory the mount target serves it from).
    const served = join(efs().root, efs().fileSystemId, "static-file");
    await waitFor(
      "the file in the file system",
      async () =>
        (await readFile(served, "utf8").catch(() => "")).trim() === "static-data" ? true : undefined,
      MINUTE,
    );
    await env.kubectl(["delete", "pod", "static", "--wait=true"]);
    expect(await env.nodeMounts(efs().fileSystemId)).toEqual([]);
    await env.kubectl(["delete", "pvc", "static", "--wait=true"]);
    await env.kubectl(["delete", "pv", "efs-static", "--wait=true"]);
    // Retain, and a static volume besides: the data stays.
    expect((await readFile(served, "utf8")).trim()).toBe("static-data");
  });

  test("nothing is left in the fake AWS", async () => {
    diagnoseOnFailure();
    expect(await accessPoints()).toEqual([]);
  });
});
