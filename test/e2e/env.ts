import { existsSync } from "node:fs";
import { mkdir, mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "../../src/host/exec.ts";
import { createAttachSim } from "../harness/attach-sim.ts";
import { type Cleanups, DriverProcess, REPO_ROOT, runAll } from "../harness/driver-process.ts";
import { unmountUnder, wireAttachSimulation } from "../harness/ebs-env.ts";
import { type FakeEfsMountHelper, installFakeEfsMountHelper } from "../harness/efs-mount-helper.ts";
import { type FakeAws, startFakeAws } from "../harness/fake-aws.ts";
import { startImds } from "../harness/imds.ts";
import { type Cluster, NODE_NAME, startCluster } from "./cluster.ts";
import { waitFor } from "./processes.ts";

export const BIN = join(REPO_ROOT, ".cache", "e2e", "bin");
export const EBS = "ebs.csi.aws.com";
export const EBS_TOPOLOGY_KEY = "topology.ebs.csi.aws.com/zone";
export const EFS = "efs.csi.aws.com";
/** external-snapshotter's version in test/e2e/build/snapshotter/go.mod: its CRDs come from there. */
const SNAPSHOTTER_VERSION = "v8.7.0";
const BINARIES = [
  "kube-apiserver",
  "kube-controller-manager",
  "kube-scheduler",
  "kubelet",
  "kubectl",
  "registrar",
  "csi-provisioner",
  "csi-attacher",
  "csi-resizer",
  "csi-snapshotter",
  "snapshot-controller",
];

/** Why the e2e test cannot run here, or undefined when it can. */
export function e2eSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root: loop devices, mounts, containerd and kubelet";
  const missing = BINARIES.filter((b) => !existsSync(join(BIN, b)));
  if (missing.length > 0) return `missing ${missing.join(", ")} in ${BIN}: run scripts/e2e-build.sh`;
  for (const tool of ["etcd", "containerd", "runc", "ctr", "unshare", "nsenter", "busybox"]) {
    if (!["/usr/bin", "/usr/sbin", "/bin", "/sbin"].some((d) => existsSync(join(d, tool))))
      return `missing ${tool}: scripts/setup.sh installs it (Debian packages etcd-server containerd runc busybox-static)`;
  }
  return undefined;
}

/**
 * The cluster, the fake AWS behind it (moto behind the fault proxy, a fake IMDS for the node's one
 * instance, the attach simulation), and the driver deployed as on a cluster: the EBS controller
 * with the real sidecars (provisioner, attacher, resizer) talking to the apiserver, the EBS node
 * plugin in the node's mount namespace registered with the real kubelet.
 */
export interface E2eEnv {
  cluster: Cluster;
  aws: FakeAws;
  instanceId: string;
  zone: string;
  ebsController: DriverProcess;
  ebsNode: DriverProcess;
  /** The EFS file system the cluster's StorageClasses and static PVs use. */
  fileSystemId: string;
  efsHelper: FakeEfsMountHelper;
  efsController: DriverProcess;
  efsNode: DriverProcess;
  kubectl: Cluster["kubectl"];
  /** kubectl apply of objects given as JavaScript values. */
  apply(...objects: object[]): Promise<void>;
  /** kubectl get -o json, as kubectl prints it (the scenarios read the fields a user would). */
  // biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects of every kind, read field by field
  get<T = any>(kind: string, name?: string): Promise<T>;
  /**
   * Deletes every workload, snapshot and claim of the test namespace and waits until the volumes
   * they provisioned are gone (PVs of reclaim policy Delete).
   */
  deleteAll(): Promise<void>;
  /** The node's mount table lines (in its mount namespace) that mention `text`. */
  nodeMounts(text: string): Promise<string[]>;
  /** What a person debugging a failure would look at: describe, events, every component's log. */
  diagnostics(): Promise<string>;
  stop(): Promise<void>;
}

export async function startE2e(): Promise<E2eEnv> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), "e2e-")));
  const cleanups: Cleanups = [() => rm(dir, { recursive: true, force: true })];
  try {
    const aws = await startFakeAws();
    cleanups.unshift(() => aws.stop());
    const zone = `${aws.region}a`;
    const instanceId = await aws.createInstance({ zone, instanceType: "m5.large" });
    const imds = await startImds({ instanceId, instanceType: "m5.large", zone, region: aws.region });
    cleanups.unshift(() => imds.stop());
    const byIdDir = join(dir, "by-id");
    await mkdir(byIdDir);
    const sim = createAttachSim({ byIdDir, stateDir: join(dir, "volumes") });
    cleanups.unshift(() => sim.cleanup());
    wireAttachSimulation(aws, sim, instanceId);

    // EFS: a file system with mount targets, and the test-only mount.efs (the one simulated piece:
    // it bind-mounts a directory standing in for the NFS export, see test/harness/fake-mount-efs.ts).
    const fileSystemId = await aws.createFileSystem();
    const efsHelper = await installFakeEfsMountHelper({
      endpoint: aws.endpoint,
      region: aws.region,
      dir: join(dir, "efs"),
    });
    cleanups.unshift(() => efsHelper.uninstall());

    const cluster = await startCluster({ dir: join(dir, "cluster"), bin: BIN });
    // The node's mounts die with its namespace; these unmount what the host may still hold.
    cleanups.unshift(
      () => unmountUnder(dir),
      () => cluster.stop(),
    );
    const kubectl = cluster.kubectl;
    const apply = async (...objects: object[]) => {
      await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: objects }));
    };
    for (const driver of ["ebs", "efs"]) {
      await kubectl(["apply", "-f", join(REPO_ROOT, "deploy/kubernetes/base", driver, "csidriver.yaml")]);
    }

    const awsEnv = { ...aws.env, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url };
    const logLevel = process.env.DRIVER_LOG_LEVEL ?? "info";

    /** A controller Deployment's pod: the driver and its sidecars, with the flags of deploy/kubernetes/base. */
    const startController = async (driver: "ebs" | "efs", sidecars: Record<string, string[]>) => {
      const socketDir = join(dir, `${driver}-controller`);
      await mkdir(join(socketDir, "tmp"), { recursive: true });
      const socketPath = join(socketDir, "csi.sock");
      const controller = new DriverProcess({
        socketPath,
        args: ["--driver", driver, "--mode", "controller", "--log-level", logLevel],
        // The EFS controller's temporary mounts (to make and remove access point directories) go here.
        env: { ...awsEnv, TMPDIR: join(socketDir, "tmp") },
      });
      cleanups.unshift(() => controller.stop("SIGTERM"));
      await controller.start();
      for (const [name, extra] of Object.entries(sidecars)) {
        // One replica: no leader election.
        cluster.add(`${driver}-${name}`, [
          join(BIN, `csi-${name}`),
          `--csi-address=${socketPath}`,
          `--kubeconfig=${cluster.kubeconfig}`,
          "--timeout=60s",
          "--leader-election=false",
          "--v=2",
          ...extra,
        ]);
      }
      return controller;
    };

    /** A node DaemonSet's pod: the driver in the node's mount namespace and its registrar. */
    const startNode = async (driver: "ebs" | "efs", name: string, nodeId: string, args: string[]) => {
      const pluginDir = join(cluster.kubeletDir, "plugins", name);
      await mkdir(pluginDir, { recursive: true });
      const socketPath = join(pluginDir, "csi.sock");
      const node = new DriverProcess({
        socketPath,
        launcher: cluster.onNode,
        args: [
          "--driver",
          driver,
          "--mode",
          "node",
          "--log-level",
          logLevel,
          "--kubelet-dir",
          cluster.kubeletDir,
          ...args,
        ],
        env: awsEnv,
      });
      cleanups.unshift(() => node.stop("SIGTERM"));
      await node.start();
      cluster.add(`${driver}-registrar`, [
        ...cluster.onNode,
        join(BIN, "registrar"),
        `--driver=${name}`,
        `--csi-address=${socketPath}`,
        `--registration-socket=${join(cluster.kubeletDir, "plugins_registry", `${name}-reg.sock`)}`,
      ]);
      await waitFor(
        `kubelet to register ${name} (CSINode ${NODE_NAME})`,
        async () => {
          const out = await kubectl(["get", "csinode", NODE_NAME, "-o", "json"]);
          const drivers = (JSON.parse(out).spec?.drivers ?? []) as { name: string; nodeID: string }[];
          return drivers.find((d) => d.name === name && d.nodeID === nodeId);
        },
        60_000,
      );
      return node;
    };

    // Snapshots: the CRDs and the snapshot-controller of external-snapshotter, the version built.
    const crdDir = join(
      (await run("go", ["env", "GOMODCACHE"])).stdout.trim(),
      `github.com/kubernetes-csi/external-snapshotter/client/v8@${SNAPSHOTTER_VERSION}/config/crd`,
    );
    for (const kind of ["volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"]) {
      await kubectl(["apply", "-f", join(crdDir, `snapshot.storage.k8s.io_${kind}.yaml`)]);
      await kubectl([
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        `crd/${kind}.snapshot.storage.k8s.io`,
      ]);
    }
    cluster.add("snapshot-controller", [
      join(BIN, "snapshot-controller"),
      `--kubeconfig=${cluster.kubeconfig}`,
      "--leader-election=false",
      "--v=2",
    ]);

    const ebsController = await startController("ebs", {
      provisioner: ["--extra-create-metadata", "--feature-gates=Topology=true", "--default-fstype=ext4"],
      attacher: [],
      resizer: ["--handle-volume-inuse-error=false"],
      snapshotter: ["--extra-create-metadata"],
    });
    const ebsNode = await startNode("ebs", EBS, instanceId, ["--device-dir", byIdDir]);
    const efsController = await startController("efs", {
      provisioner: ["--extra-create-metadata", "--feature-gates=Topology=true"],
    });
    const efsNode = await startNode("efs", EFS, instanceId, []);

    const env: E2eEnv = {
      cluster,
      aws,
      instanceId,
      zone,
      ebsController,
      ebsNode,
      fileSystemId,
      efsHelper,
      efsController,
      efsNode,
      kubectl,
      apply,
      get: async (kind, name) =>
        JSON.parse(await kubectl(["get", kind, ...(name ? [name] : []), "-o", "json"])),
      deleteAll: async () => {
        await kubectl(
          [
            "delete",
            "statefulsets,pods,volumesnapshots,pvc",
            "--all",
            "--namespace=default",
            "--wait=true",
            "--timeout=180s",
          ],
          undefined,
          200_000,
        );
        await waitFor(
          "provisioned PVs to be deleted",
          async () => {
            const pvs = JSON.parse(await kubectl(["get", "pv", "-o", "json"])).items as {
              spec: { persistentVolumeReclaimPolicy: string };
            }[];
            return pvs.every((pv) => pv.spec.persistentVolumeReclaimPolicy !== "Delete") || undefined;
          },
          180_000,
        );
      },
      nodeMounts: async (text) => {
        const { stdout } = await run(cluster.onNode[0]!, [
          ...cluster.onNode.slice(1),
          "cat",
          "/proc/self/mountinfo",
        ]);
        return stdout.split("\n").filter((line) => line.includes(text));
      },
      diagnostics: async () => {
        const parts: string[] = [];
        for (const args of [
          ["get", "pods,pvc,pv,volumeattachments,storageclass", "-o", "wide"],
          ["describe", "pods,pvc"],
          ["get", "events", "--sort-by=.lastTimestamp"],
        ]) {
          parts.push(`$ kubectl ${args.join(" ")}\n${await kubectl(args).catch((err) => String(err))}`);
        }
        for (const [name, driver] of Object.entries({ ebsController, ebsNode, efsController, efsNode })) {
          parts.push(`----- ${name}\n${tailOf(driver.stderr)}`);
        }
        parts.push(cluster.logs(15));
        return parts.join("\n");
      },
      stop: () => runAll(cleanups),
    };
    return env;
  } catch (err) {
    await runAll(cleanups).catch(() => undefined);
    throw err;
  }
}

function tailOf(text: string, lines = 30): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
