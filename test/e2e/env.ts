import { existsSync } from "node:fs";
import { mkdir, mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OFFICIAL_BINARY } from "../../bench/official.ts";
import { run } from "../../src/host/exec.ts";
import { type AttachSim, createAttachSim } from "../harness/attach-sim.ts";
import { type Cleanups, REPO_ROOT, runAll } from "../harness/driver-process.ts";
import { unmountUnder, wireAttachSimulation } from "../harness/ebs-env.ts";
import { type InstalledHelper, installFakeMountNfs4 } from "../harness/efs-mount-helper.ts";
import { type EfsTlsTargets, startEfsTlsTargets } from "../harness/efs-tls-target.ts";
import { type FakeAws, startFakeAws } from "../harness/fake-aws.ts";
import { startImds } from "../harness/imds.ts";
import { type Cluster, startCluster } from "./cluster.ts";
import { type DeployContext, type Deployment, deployEbs, deployEfs, type EbsFlavor } from "./deploy.ts";
import { waitFor } from "./processes.ts";

export const BIN = join(REPO_ROOT, ".cache", "e2e", "bin");
export { EBS, EFS } from "./deploy.ts";
export const EBS_TOPOLOGY_KEY = "topology.ebs.csi.aws.com/zone";
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
export function e2eSkipReason(o: { official?: boolean } = {}): string | undefined {
  if (process.getuid?.() !== 0) return "needs root: loop devices, mounts, containerd and kubelet";
  const missing = BINARIES.filter((b) => !existsSync(join(BIN, b)));
  if (missing.length > 0) return `missing ${missing.join(", ")} in ${BIN}: run scripts/e2e-build.sh`;
  if (o.official && !existsSync(OFFICIAL_BINARY))
    return `missing ${OFFICIAL_BINARY}: run scripts/e2e-build.sh`;
  for (const tool of ["etcd", "containerd", "runc", "ctr", "unshare", "nsenter", "busybox"]) {
    if (!["/usr/bin", "/usr/sbin", "/bin", "/sbin"].some((d) => existsSync(join(d, tool))))
      return `missing ${tool}: scripts/setup.sh installs it (Debian packages etcd-server containerd runc busybox-static)`;
  }
  return undefined;
}

export interface E2eOptions {
  /** Which EBS driver to install at the start (default: this one), or none. */
  ebs?: EbsFlavor | false;
  /** Install this driver's EFS side (default: true). */
  efs?: boolean;
  /**
   * The test installs the drivers itself, as pods from the image (helm, kubectl apply -k): no
   * driver processes and no CSIDriver objects are made, the node gets a pod network, and the fake
   * AWS is exposed to the pods (podAws). The EFS file system and its mount targets are made.
   */
  driverPods?: boolean;
}

/**
 * The cluster, the fake AWS behind it (moto behind the fault proxy, a fake IMDS for the node's one
 * instance, the attach simulation), and the drivers deployed as on a cluster (test/e2e/deploy.ts):
 * controllers with the real sidecars talking to the apiserver, node plugins in the node's mount
 * namespace registered with the real kubelet.
 */
export interface E2eEnv {
  cluster: Cluster;
  aws: FakeAws;
  instanceId: string;
  zone: string;
  sim: AttachSim;
  /** What deployEbs and deployEfs need, to install a driver while the cluster runs. */
  deployContext: DeployContext;
  /** The EBS driver installed now, if any. */
  ebs: Deployment | undefined;
  efs: Deployment | undefined;
  /**
   * With driverPods: what the drivers' pods are given to reach the fake AWS and the fake IMDS
   * (relays on the pod network's gateway), the region, and the fake credentials.
   */
  podAws:
    | { endpoint: string; imdsEndpoint: string; region: string; accessKeyId: string; secretAccessKey: string }
    | undefined;
  /** With EFS: the file system the cluster's StorageClasses and static PVs use. */
  fileSystemId: string | undefined;
  /**
   * With EFS: the edge of the node's TLS mounts (this driver's relay, as the image runs it): the
   * test's mount.nfs4, the mount targets' TLS stand-ins, and where they serve file system fs-x
   * from (`${root}/fs-x`).
   */
  efsEdge: { mountNfs4: InstalledHelper; targets: EfsTlsTargets; root: string } | undefined;
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

export async function startE2e(options: E2eOptions = {}): Promise<E2eEnv> {
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

    // EFS: a file system with mount targets. The node mounts it through this driver's TLS relay (no
    // efs-utils, as in the image); what the machine lacks is simulated at the edge: the test's
    // mount.nfs4 and TLS stand-ins for the mount targets (test/harness/efs-tls-target.ts).
    const withEfs = options.efs !== false;
    const driverPods = options.driverPods === true;
    const fileSystemId = withEfs ? await aws.createFileSystem() : undefined;
    let efsEdge: E2eEnv["efsEdge"];
    if (fileSystemId) {
      const root = join(dir, "efs", "file-systems");
      await mkdir(root, { recursive: true });
      const targets = await startEfsTlsTargets({ aws, fileSystemId, root, dir: join(dir, "efs") });
      cleanups.unshift(() => targets.stop());
      const mountNfs4 = await installFakeMountNfs4(join(dir, "efs"));
      cleanups.unshift(() => mountNfs4.uninstall());
      efsEdge = { mountNfs4, targets, root };
    }

    // The official driver finds disks under /dev/disk/by-id: the node shows the simulation's links there.
    const cluster = await startCluster({
      dir: join(dir, "cluster"),
      bin: BIN,
      diskLinks: byIdDir,
      driverPods,
    });
    // The node's mounts die with its namespace; these unmount what the host may still hold.
    cleanups.unshift(
      () => unmountUnder(dir),
      () => cluster.stop(),
    );
    const kubectl = cluster.kubectl;
    const apply = async (...objects: object[]) => {
      await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: objects }));
    };
    for (const driver of driverPods ? [] : ["ebs", "efs"]) {
      await kubectl(["apply", "-f", join(REPO_ROOT, "deploy/kubernetes/base", driver, "csidriver.yaml")]);
    }
    const network = cluster.podNetwork;
    const podAws: E2eEnv["podAws"] = network
      ? {
          endpoint: await network.expose(aws.endpoint),
          imdsEndpoint: await network.expose(imds.url),
          region: aws.region,
          accessKeyId: aws.env.AWS_ACCESS_KEY_ID!,
          secretAccessKey: aws.env.AWS_SECRET_ACCESS_KEY!,
        }
      : undefined;

    const awsEnv = { ...aws.env, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url };
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

    const deployContext: DeployContext = {
      cluster,
      dir,
      awsEnv,
      instanceId,
      byIdDir,
      ...(existsSync(OFFICIAL_BINARY) ? { officialBinary: OFFICIAL_BINARY } : {}),
      ...(efsEdge
        ? { efsArgs: ["--efs-mount-helper=none", `--efs-tls-ca-file=${efsEdge.targets.caFile}`] }
        : {}),
    };
    const ebs =
      options.ebs === false || driverPods ? undefined : await deployEbs(deployContext, options.ebs ?? "ours");
    const efs = withEfs && !driverPods ? await deployEfs(deployContext) : undefined;

    const env: E2eEnv = {
      cluster,
      aws,
      instanceId,
      zone,
      sim,
      deployContext,
      ebs,
      efs,
      podAws,
      fileSystemId,
      efsEdge,
      kubectl,
      apply,
      get: async (kind, name) =>
        JSON.parse(await kubectl(["get", kind, ...(name ? [name] : []), "-o", "json"])),
      deleteAll: async () => {
        // Without a controller (crashed), deletions never finish: then fail at once.
        const crash = cluster.crashed();
        const abandon = new AbortController();
        crash.catch(() => abandon.abort());
        await Promise.race([
          kubectl(
            [
              "delete",
              "statefulsets,pods,volumesnapshots,pvc",
              "--all",
              "--namespace=default",
              "--wait=true",
              "--timeout=180s",
            ],
            undefined,
            { timeoutMs: 200_000, signal: abandon.signal },
          ),
          crash,
        ]);
        await waitFor(
          "provisioned PVs to be deleted",
          async () => {
            const pvs = JSON.parse(await kubectl(["get", "pv", "-o", "json"])).items as {
              spec: { persistentVolumeReclaimPolicy: string };
            }[];
            return pvs.every((pv) => pv.spec.persistentVolumeReclaimPolicy !== "Delete") || undefined;
          },
          180_000,
          crash,
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
        // The drivers' logs are among the components' (ebs-controller, ebs-node, ...).
        parts.push(cluster.logs(30));
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
