/**
 * npm run demo: one EBS volume through its whole life, over the driver's unix socket, the way
 * external-provisioner, external-attacher, external-resizer and kubelet drive it. AWS is moto
 * behind the fault proxy; the attached disk is a loop device (root only), so the filesystem is
 * real: mkfs, mount, a file written and read, statfs, online growth.
 */

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Reply } from "../test/harness/csi-client.ts";
import { startEbsEnv } from "../test/harness/ebs-env.ts";

const GiB = 1024 ** 3;
const mib = (bytes: number) => `${Math.round(bytes / 1024 ** 2)} MiB`;

/** ext4 needs CAP_SYS_RESOURCE to grow while mounted; some sandboxes drop it even for root. */
function canGrowExt4Online(): Promise<boolean> {
  return readFile("/proc/self/status", "utf8").then((s) => {
    const hex = /^CapBnd:\s*([0-9a-f]+)/m.exec(s)?.[1];
    return hex !== undefined && (BigInt(`0x${hex}`) & (1n << 24n)) !== 0n;
  });
}

async function main(): Promise<void> {
  const root = process.getuid?.() === 0;
  const fsType = (await canGrowExt4Online()) ? "ext4" : "xfs";
  console.log(
    "aws-storage-csi demo: the EBS driver (ebs.csi.aws.com) against a fake AWS (moto + fault proxy)",
  );
  if (!root)
    console.log(
      "  not root: no loop devices here, so the node steps are left out (run as root for all of it)",
    );
  if (fsType === "xfs")
    console.log("  this machine cannot grow a mounted ext4 (no CAP_SYS_RESOURCE): the demo volume uses xfs");

  process.env.DRIVER_LOG_LEVEL ??= "warn";
  const env = await startEbsEnv({ mode: root ? "all" : "controller" });
  console.log(`  fake EC2 instance ${env.instanceId} in ${env.zone}; driver socket ${env.socketPath}\n`);
  let step = 0;
  const call = async (
    service: "Controller" | "Node" | "Identity",
    method: string,
    request: object,
    show: (res: Reply) => string,
  ) => {
    const started = performance.now();
    const res = await env.client.call(service, method, request);
    const ms = (performance.now() - started).toFixed(1).padStart(7);
    console.log(`${String(++step).padStart(2)}. ${method.padEnd(26)} ${ms} ms   ${show(res)}`);
    return res;
  };

  try {
    const capability = { access_mode: { mode: "SINGLE_NODE_WRITER" }, mount: { fs_type: fsType } };
    await call("Identity", "Probe", {}, (r) => `ready: ${JSON.stringify(r.ready?.value ?? true)}`);
    const created = await call(
      "Controller",
      "CreateVolume",
      {
        name: "pvc-2f0c0b4e-demo",
        capacity_range: { required_bytes: 2 * GiB },
        volume_capabilities: [capability],
        parameters: { type: "gp3", iops: "4000", "csi.storage.k8s.io/pvc/name": "data-db-0" },
      },
      (r) =>
        `${r.volume.volume_id}, ${r.volume.capacity_bytes / GiB} GiB in ${Object.values(r.volume.accessible_topology[0].segments)[0]}`,
    );
    const volumeId: string = created.volume.volume_id;
    const published = await call(
      "Controller",
      "ControllerPublishVolume",
      { volume_id: volumeId, node_id: env.instanceId, volume_capability: capability },
      (r) => `attached as ${r.publish_context.devicePath}`,
    );

    if (root) {
      const staging = join(
        env.dir,
        "plugins/kubernetes.io/csi/ebs.csi.aws.com",
        sha256(volumeId),
        "globalmount",
      );
      const target = join(env.dir, "pods/3b1f/volumes/kubernetes.io~csi/pv-demo/mount");
      await mkdir(staging, { recursive: true });
      const node = {
        volume_id: volumeId,
        volume_capability: capability,
        publish_context: published.publish_context,
      };
      await call(
        "Node",
        "NodeStageVolume",
        { ...node, staging_target_path: staging },
        () => `mkfs.${fsType} + mount at .../globalmount`,
      );
      await call(
        "Node",
        "NodePublishVolume",
        { ...node, staging_target_path: staging, target_path: target },
        () => "bind mount into the pod",
      );
      await writeFile(join(target, "hello.txt"), "written through the pod's mount\n");
      console.log(
        `    wrote ${join(target, "hello.txt")}: "${(await readFile(join(target, "hello.txt"), "utf8")).trim()}"`,
      );
      // Snapshot the volume and restore it into a second one: the file comes back.
      execFileSync("sync", ["-f", join(target, "hello.txt")]);
      const snapshot = await call(
        "Controller",
        "CreateSnapshot",
        { name: "snapshot-7d1e-demo", source_volume_id: volumeId },
        (r) =>
          `${r.snapshot.snapshot_id} of ${r.snapshot.source_volume_id}, ready: ${r.snapshot.ready_to_use}`,
      );
      const snapshotId: string = snapshot.snapshot.snapshot_id;
      const restored = await call(
        "Controller",
        "CreateVolume",
        {
          name: "pvc-5a9d-restore-demo",
          capacity_range: { required_bytes: 2 * GiB },
          volume_capabilities: [capability],
          volume_content_source: { snapshot: { snapshot_id: snapshotId } },
        },
        (r) => `${r.volume.volume_id} from ${r.volume.content_source.snapshot.snapshot_id}`,
      );
      const restoredId: string = restored.volume.volume_id;
      const restoredPublished = await call(
        "Controller",
        "ControllerPublishVolume",
        { volume_id: restoredId, node_id: env.instanceId, volume_capability: capability },
        (r) => `attached as ${r.publish_context.devicePath}`,
      );
      const restoredStaging = join(
        env.dir,
        "plugins/kubernetes.io/csi/ebs.csi.aws.com",
        sha256(restoredId),
        "globalmount",
      );
      await mkdir(restoredStaging, { recursive: true });
      await call(
        "Node",
        "NodeStageVolume",
        {
          volume_id: restoredId,
          volume_capability: capability,
          publish_context: restoredPublished.publish_context,
          staging_target_path: restoredStaging,
        },
        () => "mounted, not formatted: it holds the snapshot's filesystem",
      );
      console.log(
        `    restored volume's hello.txt: "${(await readFile(join(restoredStaging, "hello.txt"), "utf8")).trim()}"`,
      );
      await call(
        "Node",
        "NodeUnstageVolume",
        { volume_id: restoredId, staging_target_path: restoredStaging },
        () => "unmounted",
      );
      await call(
        "Controller",
        "ControllerUnpublishVolume",
        { volume_id: restoredId, node_id: env.instanceId },
        () => "detached",
      );
      await call("Controller", "DeleteVolume", { volume_id: restoredId }, () => "deleted");
      await call("Controller", "DeleteSnapshot", { snapshot_id: snapshotId }, () => "deleted");
      const stats = (r: Reply) => {
        const bytes = (r.usage as { unit: string; total: number; used: number }[]).find(
          (u) => u.unit === "BYTES",
        )!;
        return `filesystem ${mib(bytes.total)}, used ${mib(bytes.used)}`;
      };
      await call("Node", "NodeGetVolumeStats", { volume_id: volumeId, volume_path: target }, stats);
      await call(
        "Controller",
        "ControllerExpandVolume",
        { volume_id: volumeId, capacity_range: { required_bytes: 4 * GiB }, volume_capability: capability },
        (r) =>
          `EBS volume now ${r.capacity_bytes / GiB} GiB, node expansion required: ${r.node_expansion_required}`,
      );
      await call(
        "Node",
        "NodeExpandVolume",
        {
          volume_id: volumeId,
          volume_path: target,
          capacity_range: { required_bytes: 4 * GiB },
          volume_capability: capability,
        },
        (r) => `device ${r.capacity_bytes / GiB} GiB, filesystem grown online`,
      );
      await call("Node", "NodeGetVolumeStats", { volume_id: volumeId, volume_path: target }, stats);
      await call(
        "Node",
        "NodeUnpublishVolume",
        { volume_id: volumeId, target_path: target },
        () => "unmounted, target removed",
      );
      await call(
        "Node",
        "NodeUnstageVolume",
        { volume_id: volumeId, staging_target_path: staging },
        () => "unmounted",
      );
    } else {
      await call(
        "Controller",
        "ControllerExpandVolume",
        { volume_id: volumeId, capacity_range: { required_bytes: 4 * GiB }, volume_capability: capability },
        (r) => `EBS volume now ${r.capacity_bytes / GiB} GiB`,
      );
    }
    await call(
      "Controller",
      "ControllerUnpublishVolume",
      { volume_id: volumeId, node_id: env.instanceId },
      () => "detached",
    );
    await call("Controller", "DeleteVolume", { volume_id: volumeId }, () => "deleted");
    const calls = Object.entries(env.aws.proxy.stats())
      .map(([action, n]) => `${action} ${n}`)
      .join(", ");
    console.log(`\nAWS calls made by the driver: ${calls}`);
  } finally {
    await env.stop();
    console.log("cleaned up: driver stopped, mounts and loop devices removed, fake AWS stopped");
  }
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

main().catch((err: unknown) => {
  console.error(`demo failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
