// The Kubernetes objects the scenarios create, as plain values for `kubectl apply`.
import { TEST_IMAGE } from "./image.ts";

export function storageClass(
  name: string,
  provisioner: string,
  o: {
    parameters?: Record<string, string>;
    reclaimPolicy?: "Delete" | "Retain";
    binding?: "Immediate" | "WaitForFirstConsumer";
    expand?: boolean;
  } = {},
): object {
  return {
    apiVersion: "storage.k8s.io/v1",
    kind: "StorageClass",
    metadata: { name },
    provisioner,
    parameters: o.parameters ?? {},
    reclaimPolicy: o.reclaimPolicy ?? "Delete",
    volumeBindingMode: o.binding ?? "WaitForFirstConsumer",
    allowVolumeExpansion: o.expand ?? true,
  };
}

export function pvc(
  name: string,
  storageClassName: string,
  o: {
    size?: string;
    block?: boolean;
    accessMode?: string;
    volumeName?: string;
    vac?: string;
    dataSource?: { kind: string; name: string; apiGroup?: string };
  } = {},
): object {
  return {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: { name, namespace: "default" },
    spec: {
      storageClassName,
      accessModes: [o.accessMode ?? "ReadWriteOnce"],
      resources: { requests: { storage: o.size ?? "1Gi" } },
      ...(o.block ? { volumeMode: "Block" } : {}),
      ...(o.volumeName ? { volumeName: o.volumeName } : {}),
      ...(o.vac ? { volumeAttributesClassName: o.vac } : {}),
      ...(o.dataSource ? { dataSource: o.dataSource } : {}),
    },
  };
}

/** What every pod here needs on this node: the host's network, no service account, a quick stop. */
export function podSpec(script: string, volume: { claim: string; block?: boolean }): object {
  return {
    hostNetwork: true,
    automountServiceAccountToken: false,
    terminationGracePeriodSeconds: 1,
    containers: [
      {
        name: "app",
        image: TEST_IMAGE,
        imagePullPolicy: "Never",
        command: ["sh", "-c", script],
        ...(volume.block
          ? { volumeDevices: [{ name: "data", devicePath: "/dev/xvda" }] }
          : { volumeMounts: [{ name: "data", mountPath: "/data" }] }),
      },
    ],
    volumes: [{ name: "data", persistentVolumeClaim: { claimName: volume.claim } }],
  };
}

export function pod(name: string, script: string, volume: { claim: string; block?: boolean }): object {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "default" },
    spec: podSpec(script, volume),
  };
}

/** Keeps a container running until it is told to stop, and stops at once when it is. */
export const SLEEP_FOREVER = "trap 'exit 0' TERM; while true; do sleep 1; done";

/**
 * Each replica records the pod name it first ran as, and keeps running. The pods' fsGroup 2000
 * is applied by kubelet to each volume (the CSIDriver's fsGroupPolicy: File).
 */
export function statefulSet(name: string, storageClassName: string, replicas: number): object {
  const spec = podSpec(
    `[ -f /data/first-host ] || echo "$POD_NAME" > /data/first-host; sync; ${SLEEP_FOREVER}`,
    {
      claim: "unused",
    },
  ) as { volumes?: unknown; securityContext?: unknown; containers: { env?: unknown }[] };
  delete spec.volumes;
  spec.securityContext = { fsGroup: 2000 };
  // Under the host's network every pod's host name is the node's: the pod's name comes from the API.
  spec.containers[0]!.env = [{ name: "POD_NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } }];
  return {
    apiVersion: "apps/v1",
    kind: "StatefulSet",
    metadata: { name, namespace: "default" },
    spec: {
      serviceName: name,
      replicas,
      podManagementPolicy: "Parallel",
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } }, spec },
      volumeClaimTemplates: [
        {
          metadata: { name: "data" },
          spec: {
            storageClassName,
            accessModes: ["ReadWriteOnce"],
            resources: { requests: { storage: "1Gi" } },
          },
        },
      ],
    },
  };
}
