// The driver as a user installs it: `helm install` of the chart, later `kubectl apply -k` of an
// overlay, on the real cluster, with the pods running the image built from the shipped Dockerfile
// (npm run images -- driver) and the sidecar images made from the binaries the e2e builds. Only
// documented settings change: the fake AWS endpoint, region and credentials (the chart's
// controller.env / node.env / region values and the aws-secret Secret; a kustomize patch of the
// same env). See test/e2e/README.md.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { DescribeAccessPointsCommand } from "@aws-sdk/client-efs";
import { describe, expect, onTestFailed, onTestFinished, test } from "vitest";
import { run } from "../../src/host/exec.ts";
import { DRIVER_IMAGE } from "../containers/images.ts";
import { podman, podmanMissing } from "../containers/podman.ts";
import { REPO_ROOT } from "../harness/driver-process.ts";
import { NODE_NAME } from "./cluster.ts";
import { BIN, EBS, EFS, e2eSkipReason } from "./env.ts";
import { buildSidecarImages, exportDriverImage } from "./image.ts";
import { pod, pvc, SLEEP_FOREVER, storageClass } from "./objects.ts";
import { MINUTE, useE2e } from "./steps.ts";

const HELM = join(REPO_ROOT, ".cache", "bin", "helm");
const CHART = join(REPO_ROOT, "deploy", "helm", "aws-storage-csi");
const OVERLAY = join(REPO_ROOT, "deploy", "kubernetes", "overlays", "both");
const RELEASE = "aws-storage-csi";
const NAMESPACE = "kube-system";
/** The driver's workloads, as the chart and the overlays name them (their pods' component label). */
const WORKLOADS = [
  "deployment/ebs-csi-controller",
  "deployment/efs-csi-controller",
  "daemonset/ebs-csi-node",
  "daemonset/efs-csi-node",
];
/** The upgrade's image: the same layers under a new configuration (image.ts, exportDriverImage). */
const REBUILT_TAG = `${DRIVER_IMAGE.split(":")[1]}-rebuilt`;
const [IMAGE_REPOSITORY] = DRIVER_IMAGE.split(":") as [string];

async function installSkipReason(): Promise<string | undefined> {
  const e2e = e2eSkipReason();
  if (e2e) return e2e;
  if (!existsSync(HELM)) return `missing ${HELM}: scripts/install-deploy-tools.sh builds it`;
  if (!existsSync(join(BIN, "livenessprobe")))
    return `missing ${join(BIN, "livenessprobe")}: run scripts/e2e-build.sh`;
  const noPodman = await podmanMissing();
  if (noPodman) return noPodman;
  const exists = await podman(["image", "exists", DRIVER_IMAGE]).then(
    () => true,
    () => false,
  );
  if (!exists) return `the driver's image ${DRIVER_IMAGE} is not built: run npm run images -- driver`;
  return undefined;
}

const skip = await installSkipReason();
if (skip) console.warn(`install e2e skipped: ${skip}`);

describe.skipIf(skip)("the chart and an overlay installed on a real cluster, pods from the image", () => {
  const { env, diagnoseOnFailure, waitFor, waitRunning, exec, waitGone, volumeOf, ec2Volume } = useE2e({
    driverPods: true,
  });
  const kubectl = (args: string[], input?: string) => env.kubectl(args, input, { timeoutMs: 5 * MINUTE });
  const helm = async (args: string[]) =>
    (
      await run(HELM, [...args, "--kubeconfig", env.cluster.kubeconfig, "--namespace", NAMESPACE], {
        timeoutMs: 10 * MINUTE,
      })
    ).stdout;
  /** Logs a step with the time since the scenario started, so each step's duration shows. */
  let started = Date.now();
  const step = (what: string) =>
    console.log(`install e2e: at ${((Date.now() - started) / 1000).toFixed(0)} s: ${what}`);
  /** kubectl get -o json in the driver's namespace. */
  // biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects, read field by field
  const getInNamespace = async (kind: string, ...flags: string[]): Promise<any> =>
    JSON.parse(await kubectl(["get", kind, `--namespace=${NAMESPACE}`, ...flags, "-o", "json"]));

  /** The release's pods, by component label (e.g. ebs-csi-controller). */
  const podsOf = async (component: string) =>
    (
      await getInNamespace(
        "pods",
        `--selector=app.kubernetes.io/name=aws-storage-csi,app.kubernetes.io/component=${component}`,
      )
    ).items as {
      metadata: { name: string; uid: string; deletionTimestamp?: string };
      spec: { containers: { name: string; image: string }[] };
      status: {
        phase: string;
        podIP?: string;
        containerStatuses?: { name: string; ready: boolean; restartCount: number; imageID: string }[];
      };
    }[];

  /** Waits until the Deployments and DaemonSets have rolled out: every pod of the new spec ready. */
  const rolledOut = async () => {
    for (const workload of WORKLOADS) {
      await kubectl(["rollout", "status", `--namespace=${NAMESPACE}`, "--timeout=300s", workload]);
    }
  };

  /**
   * Every pod of the driver runs `image` in its plugin container. A rollout is done once the new
   * pods are ready, while the old ones may still be terminating: those are waited for.
   */
  const onlyImage = (image: string) =>
    waitFor(
      `every pod of the driver to run ${image}`,
      async () => {
        const components = WORKLOADS.map((w) => w.slice(w.indexOf("/") + 1));
        const pods = (await Promise.all(components.map(podsOf))).flat();
        const other = pods.filter(
          (p) => p.spec.containers.find((c) => c.name.endsWith("-plugin"))?.image !== image,
        );
        // 2 + 1 per driver: the controllers' replicas and the one node's DaemonSet pod.
        return other.length === 0 && pods.length === 6 ? true : undefined;
      },
      3 * MINUTE,
    );

  /** kubelet has the drivers registered (through the registrar sidecars) under the node's instance id. */
  const registered = () =>
    waitFor(
      "kubelet to register ebs.csi.aws.com and efs.csi.aws.com",
      async () => {
        const node = await env.get("csinode", NODE_NAME).catch(() => undefined);
        const drivers = (node?.spec?.drivers ?? []) as { name: string; nodeID: string }[];
        const ids = [EBS, EFS].map((d) => drivers.find((x) => x.name === d)?.nodeID);
        return ids.every((id) => id === env.instanceId) ? true : undefined;
      },
      3 * MINUTE,
    );

  /** Each sidecar that elects a leader holds its Lease from one of the driver's controller pods. */
  const checkLeaders = async () => {
    for (const [driver, sidecars] of [
      ["ebs", 4],
      ["efs", 2],
    ] as const) {
      const pods = (await podsOf(`${driver}-csi-controller`)).map((p) => p.metadata.name);
      expect(pods).toHaveLength(2);
      await waitFor(
        `${sidecars} leases of the ${driver} controller's sidecars held by its pods`,
        async () => {
          const leases = (await getInNamespace("leases")).items as {
            metadata: { name: string };
            spec: { holderIdentity?: string };
          }[];
          const held = leases.filter(
            (l) =>
              l.metadata.name.includes(`${driver}-csi-aws-com`) &&
              pods.some((p) => l.spec.holderIdentity?.startsWith(p)),
          );
          return held.length === sidecars ? held : undefined;
        },
        3 * MINUTE,
      );
    }
  };

  /** The liveness endpoints answer, from where kubelet probes them, and no container restarted. */
  const checkLiveness = async () => {
    for (const component of ["ebs-csi-controller", "ebs-csi-node", "efs-csi-controller"]) {
      for (const p of await podsOf(component)) {
        const url = `http://${p.status.podIP}:9808/healthz`;
        const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
        expect(res.status, `${p.metadata.name}: GET ${url}`).toBe(200);
      }
    }
    // The EFS node pod shares the node's network: its endpoints are on the node's loopback.
    const efs = await fetch("http://127.0.0.1:9810/healthz", { signal: AbortSignal.timeout(5000) });
    expect(efs.status, "efs-csi-node: GET http://127.0.0.1:9810/healthz").toBe(200);
    const events = (await getInNamespace("events")).items as {
      reason: string;
      message: string;
      involvedObject: { name: string };
    }[];
    expect(
      events
        .filter((e) => e.reason === "Unhealthy" || e.reason === "BackOff")
        .map((e) => `${e.involvedObject.name}: ${e.message}`),
    ).toEqual([]);
  };

  /**
   * After an uninstall: none of the objects it had made (a multi-document manifest), and no pod
   * of the driver, is left.
   */
  const allGone = async (what: string, manifest: string) => {
    const count = (manifest.match(/^kind: /gm) ?? []).length;
    expect(count, `objects in the manifest of ${what}`).toBeGreaterThan(15);
    await waitFor(
      `every object of ${what} to be gone`,
      async () => {
        const left = await kubectl(["get", "--ignore-not-found", "-o", "name", "-f", "-"], manifest);
        const pods = await kubectl([
          "get",
          "pods",
          `--namespace=${NAMESPACE}`,
          "--selector=app.kubernetes.io/name=aws-storage-csi",
          "-o",
          "name",
        ]);
        const all = `${left}\n${pods}`.split("\n").filter(Boolean);
        if (all.length > 0) console.log(`${what}: still there: ${all.join(", ")}`);
        return all.length === 0 ? true : undefined;
      },
      3 * MINUTE,
    );
  };

  /** A claim and a pod that writes to it, through whichever installation serves EBS now. */
  const ebsPod = async (name: string, storageClassName: string, text: string) => {
    await env.apply(
      pvc(name, storageClassName),
      pod(name, `echo ${text} > /data/file && sync && ${SLEEP_FOREVER}`, { claim: name }),
    );
    await waitRunning(name);
    expect((await exec(name, "cat /data/file")).trim()).toBe(text);
  };

  test("helm install, volumes through the pods, helm upgrade under a mounted volume, helm uninstall; then kubectl apply -k takes over", async () => {
    diagnoseOnFailure();
    // The drivers run in pods here: their logs are the pods', not the cluster components'.
    onTestFailed(async () => {
      const logs = await kubectl([
        "logs",
        `--namespace=${NAMESPACE}`,
        "--selector=app.kubernetes.io/name=aws-storage-csi",
        "--all-containers",
        "--prefix",
        "--tail=20",
        "--max-log-requests=40",
      ]).catch((err: unknown) => String(err));
      console.error(`$ kubectl logs (the drivers' pods, every container)\n${logs}`);
    });
    started = Date.now();
    const dir = await mkdtemp(join(tmpdir(), "install-e2e-"));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const aws = env.podAws!;

    step("images: the driver's (from the project's podman store) and the sidecars' (from .cache/e2e/bin)");
    const rendered = await run(HELM, ["template", RELEASE, CHART, "--set", "efs.enabled=true"]);
    const references = [
      ...new Set([...rendered.stdout.matchAll(/^\s+image: "?([^"\s]+)"?$/gm)].map((m) => m[1]!)),
    ];
    expect(references).toContain(DRIVER_IMAGE);
    await env.cluster.importImage(
      await buildSidecarImages(
        dir,
        BIN,
        references.filter((r) => r !== DRIVER_IMAGE),
      ),
    );
    await env.cluster.importImage(
      await exportDriverImage(dir, DRIVER_IMAGE, `${IMAGE_REPOSITORY}:${REBUILT_TAG}`, (args) =>
        podman(args, { timeoutMs: 5 * MINUTE }),
      ),
    );

    step("helm install, with the fake AWS's endpoint, region and credentials");
    // The official drivers' convention for static credentials (README: AWS credentials).
    await kubectl([
      "create",
      "secret",
      "generic",
      "aws-secret",
      `--namespace=${NAMESPACE}`,
      `--from-literal=key_id=${aws.accessKeyId}`,
      `--from-literal=access_key=${aws.secretAccessKey}`,
    ]);
    const values = join(dir, "values.json");
    await writeFile(
      values,
      JSON.stringify({
        efs: { enabled: true },
        region: aws.region,
        controller: { env: [{ name: "AWS_ENDPOINT_URL", value: aws.endpoint }] },
        node: {
          env: [
            { name: "AWS_ENDPOINT_URL", value: aws.endpoint },
            { name: "AWS_EC2_METADATA_SERVICE_ENDPOINT", value: aws.imdsEndpoint },
          ],
        },
      }),
    );
    await helm(["install", RELEASE, CHART, "--values", values, "--wait", "--timeout=5m"]);
    const manifest = await helm(["get", "manifest", RELEASE]);
    await rolledOut();
    await registered();
    await onlyImage(DRIVER_IMAGE);
    await checkLeaders();
    await checkLiveness();

    step("EBS through the installed pods: provision, attach, mount, snapshot, restore, expand");
    await env.apply(
      storageClass("helm-ebs", EBS, { parameters: { type: "gp3", "csi.storage.k8s.io/fstype": "xfs" } }),
      {
        apiVersion: "snapshot.storage.k8s.io/v1",
        kind: "VolumeSnapshotClass",
        metadata: { name: "helm-ebs-snap" },
        driver: EBS,
        deletionPolicy: "Delete",
      },
    );
    await ebsPod("kept", "helm-ebs", "before-upgrade");
    const kept = await volumeOf("kept");
    expect((await ec2Volume(kept.volumeId))?.Attachments?.[0]?.InstanceId).toBe(env.instanceId);
    await env.apply({
      apiVersion: "snapshot.storage.k8s.io/v1",
      kind: "VolumeSnapshot",
      metadata: { name: "kept-snap", namespace: "default" },
      spec: { volumeSnapshotClassName: "helm-ebs-snap", source: { persistentVolumeClaimName: "kept" } },
    });
    await waitFor(
      "VolumeSnapshot kept-snap readyToUse",
      async () =>
        (await env.get("volumesnapshot", "kept-snap")).status?.readyToUse === true ? true : undefined,
      3 * MINUTE,
    );
    await env.apply(
      pvc("restored", "helm-ebs", {
        dataSource: { apiGroup: "snapshot.storage.k8s.io", kind: "VolumeSnapshot", name: "kept-snap" },
      }),
      pod("restored", SLEEP_FOREVER, { claim: "restored" }),
    );
    await waitRunning("restored");
    expect((await exec("restored", "cat /data/file")).trim()).toBe("before-upgrade");
    await kubectl([
      "patch",
      "pvc",
      "restored",
      "--type=merge",
      "-p",
      '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}',
    ]);
    await waitFor(
      "the restored volume grown to 2 GiB in the pod",
      async () => {
        const kib = Number((await exec("restored", "df -k /data | tail -1")).trim().split(/\s+/)[1]);
        return kib > 1.5 * 2 ** 20 ? true : undefined;
      },
      3 * MINUTE,
    );
    await kubectl(["delete", "pod", "restored", "--wait=true"]);
    await kubectl(["delete", "volumesnapshot", "kept-snap", "--wait=true"]);
    await kubectl(["delete", "pvc", "restored", "--wait=true"]);

    step("EFS through the installed controller: a dynamic access point");
    await env.apply(
      storageClass("helm-efs", EFS, {
        binding: "Immediate",
        parameters: {
          provisioningMode: "efs-ap",
          fileSystemId: env.fileSystemId!,
          directoryPerms: "700",
        },
      }),
      pvc("shared", "helm-efs", { accessMode: "ReadWriteMany" }),
    );
    const shared = await waitFor(
      "claim shared Bound",
      async () =>
        (await env.get("pvc", "shared")).status?.phase === "Bound" ? volumeOf("shared") : undefined,
      3 * MINUTE,
    );
    const accessPoint = shared.volumeId.split("::")[1]!;
    expect(shared.volumeId).toBe(`${env.fileSystemId}::${accessPoint}`);
    const points = await env.aws.efs.send(
      new DescribeAccessPointsCommand({ FileSystemId: env.fileSystemId }),
    );
    expect(points.AccessPoints?.map((p) => p.AccessPointId)).toContain(accessPoint);

    step("helm upgrade to a rebuilt image while pod kept has its volume mounted");
    const podUid = (await env.get("pod", "kept")).metadata.uid;
    const nodePodsBefore = (await podsOf("ebs-csi-node")).map((p) => p.metadata.uid);
    await helm([
      "upgrade",
      RELEASE,
      CHART,
      "--reuse-values",
      "--set",
      `image.tag=${REBUILT_TAG}`,
      "--wait",
      "--timeout=5m",
    ]);
    await rolledOut();
    await waitFor(
      "the old EBS node plugin pod to be gone",
      async () => {
        const now = await podsOf("ebs-csi-node");
        return now.length === 1 && !nodePodsBefore.includes(now[0]!.metadata.uid) ? true : undefined;
      },
      3 * MINUTE,
    );
    await onlyImage(`${IMAGE_REPOSITORY}:${REBUILT_TAG}`);
    await registered();
    const keptNow = await env.get("pod", "kept");
    expect(keptNow.metadata.uid).toBe(podUid);
    expect(keptNow.status.containerStatuses[0].restartCount).toBe(0);
    expect((await exec("kept", "cat /data/file")).trim()).toBe("before-upgrade");
    await exec("kept", "echo after-upgrade > /data/file && sync");
    expect((await exec("kept", "cat /data/file")).trim()).toBe("after-upgrade");
    await ebsPod("fresh", "helm-ebs", "new-mount-after-upgrade");
    await checkLiveness();

    step("helm uninstall: no object of the release is left; the mounted volume stays mounted");
    await helm(["uninstall", RELEASE, "--wait", "--timeout=5m"]);
    await allGone("helm uninstall", manifest);
    for (const claim of ["kept", "fresh"]) {
      const { pvName } = await volumeOf(claim);
      expect((await env.nodeMounts(pvName)).length, `${claim}'s volume on the node`).toBeGreaterThan(0);
    }
    expect((await exec("kept", "cat /data/file")).trim()).toBe("after-upgrade");

    step("kubectl apply -k of a user's overlay over overlays/both: it takes over the mounted volumes");
    const overlay = join(dir, "overlay");
    await mkdir(overlay);
    const envPatch = (
      kind: string,
      name: string,
      container: string,
      extra: { name: string; value: string }[],
    ) => ({
      patch: JSON.stringify({
        apiVersion: "apps/v1",
        kind,
        metadata: { name, namespace: NAMESPACE },
        spec: {
          template: {
            spec: {
              containers: [{ name: container, env: [{ name: "AWS_REGION", value: aws.region }, ...extra] }],
            },
          },
        },
      }),
    });
    const endpoint = { name: "AWS_ENDPOINT_URL", value: aws.endpoint };
    const imds = { name: "AWS_EC2_METADATA_SERVICE_ENDPOINT", value: aws.imdsEndpoint };
    await writeFile(
      join(overlay, "kustomization.yaml"),
      JSON.stringify({
        apiVersion: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: [relative(overlay, OVERLAY)],
        images: [{ name: IMAGE_REPOSITORY, newTag: DRIVER_IMAGE.split(":")[1] }],
        patches: [
          envPatch("Deployment", "ebs-csi-controller", "ebs-plugin", [endpoint]),
          envPatch("Deployment", "efs-csi-controller", "efs-plugin", [endpoint]),
          envPatch("DaemonSet", "ebs-csi-node", "ebs-plugin", [endpoint, imds]),
          envPatch("DaemonSet", "efs-csi-node", "efs-plugin", [endpoint, imds]),
        ],
      }),
    );
    await kubectl(["apply", "-k", overlay]);
    await rolledOut();
    await registered();
    await checkLeaders();
    await checkLiveness();
    // Pod kept's volume was mounted by the uninstalled release: this installation unmounts it.
    const keptVolume = await volumeOf("kept");
    await kubectl(["delete", "pod", "kept", "fresh", "--wait=true"]);
    expect(await env.nodeMounts(keptVolume.pvName)).toEqual([]);
    await waitFor(
      `volume ${keptVolume.volumeId} detached`,
      async () => ((await ec2Volume(keptVolume.volumeId))?.State === "available" ? true : undefined),
      3 * MINUTE,
    );
    await ebsPod("kustomized", "helm-ebs", "through-the-overlay");
    await kubectl(["delete", "pod", "kustomized", "--wait=true"]);
    const claims = ["kept", "fresh", "kustomized", "shared"];
    const pvs = await Promise.all(claims.map(async (c) => (await volumeOf(c)).pvName));
    await kubectl(["delete", "pvc", ...claims, "--wait=true"]);
    for (const pv of pvs) await waitGone("pv", pv);
    const after = await env.aws.efs.send(new DescribeAccessPointsCommand({ FileSystemId: env.fileSystemId }));
    expect(after.AccessPoints?.map((p) => p.AccessPointId)).not.toContain(accessPoint);

    step("kubectl delete -k: nothing of the overlay is left");
    const objects = await kubectl(["kustomize", overlay]);
    await kubectl(["delete", "-k", overlay, "--wait=true"]);
    await allGone("kubectl delete -k", objects);
    step("done");
  });
});
