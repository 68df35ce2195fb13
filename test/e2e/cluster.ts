import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdir, readFile, readlink, rmdir, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { run } from "../../src/host/exec.ts";
import { freePort } from "../harness/moto.ts";
import { buildTestImage } from "./image.ts";
import { listChains, removeNewKubeletChains } from "./kubelet-chains.ts";
import { type PodNetwork, startPodNetwork } from "./pod-network.ts";
import { Component, waitFor } from "./processes.ts";

export interface ClusterOptions {
  /** Everything of this cluster lives below it: certificates, etcd's data, kubelet's root, logs. */
  dir: string;
  /** The binaries of scripts/e2e-build.sh. */
  bin: string;
  /**
   * A host directory the node shows at /dev/disk/by-id, where a real node has its disks' links
   * (the official EBS driver looks there; this driver takes --device-dir). Only the node's mount
   * namespace sees it: the host's /dev is left as it was.
   */
  diskLinks?: string;
  /**
   * The node runs the driver as the shipped manifests do, in pods: a pod network (pods that do not
   * use the host's network get an address on a bridge, and reach the apiserver through the
   * `kubernetes` Service), and kubelet's directory a shared mount, as Bidirectional mount
   * propagation needs.
   */
  driverPods?: boolean;
}

/**
 * The node's name is also the address the apiserver reaches kubelet at (for exec and logs):
 * kubelet refuses a loopback node IP, and listens on 127.0.0.1 only, so the apiserver prefers the
 * node's Hostname address, and "localhost" resolves to 127.0.0.1 on any machine.
 */
export const NODE_NAME = "localhost";

const KUBELET_DEFAULT_DIR = "/var/lib/kubelet";

/**
 * A one-node Kubernetes cluster of real components, on 127.0.0.1 only: etcd (Debian's), and
 * kube-apiserver, kube-controller-manager, kube-scheduler and kubelet built from k8s.io/kubernetes,
 * with containerd and runc (Debian's) running the pods. The node's programs (containerd, kubelet,
 * and whatever the test adds: the CSI node plugin, the registrar) share a mount namespace of their
 * own, as a node's programs share the node's: mounts made there are seen by all of them and by the
 * pods, and die with it. In it, kubelet finds the kernel settings it wants already set (bind-mounted
 * copies), so the host's /proc/sys is never written.
 */
export interface Cluster {
  dir: string;
  /** The binaries of scripts/e2e-build.sh. */
  bin: string;
  kubeconfig: string;
  /**
   * kubelet's --root-dir, as the node's programs see it: a directory of the cluster's, or with
   * driverPods /var/lib/kubelet (that directory, shown there in the node's mount namespace).
   */
  kubeletDir: string;
  /** The command prefix that runs a program in the node's mount namespace. */
  onNode: string[];
  /** With driverPods: the pods' network. */
  podNetwork: PodNetwork | undefined;
  components: Component[];
  /** Imports an image archive (OCI or docker) into the node's containerd, for kubelet to run. */
  importImage(tarball: string): Promise<void>;
  /** Starts a program as part of the cluster (stopped by stop(), its log listed by logs()). */
  add(name: string, command: string[], env?: Record<string, string>): Component;
  kubectl(
    args: string[],
    input?: string,
    options?: { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<string>;
  /** Rejects as soon as one of the components exits without being stopped; never settles otherwise. */
  crashed(): Promise<never>;
  /** Every component's last log lines, for failure messages. */
  logs(lines?: number): string;
  stop(): Promise<void>;
}

/** The values kubelet would write into /proc/sys (pkg/kubelet/cm: setupKernelTunables). */
const KERNEL_TUNABLES: Record<string, string> = {
  "vm/overcommit_memory": "1",
  "vm/panic_on_oom": "0",
  "kernel/panic": "10",
  "kernel/panic_on_oops": "1",
  "kernel/keys/root_maxkeys": "1000000",
  "kernel/keys/root_maxbytes": "25000000",
};

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const { dir, bin } = options;
  const logDir = join(dir, "logs");
  await mkdir(logDir, { recursive: true });
  const components: Component[] = [];
  const add = (name: string, command: string[], env?: Record<string, string>) => {
    const c = new Component(name, command, join(logDir, `${name}.log`), env);
    components.push(c);
    c.start();
    return c;
  };
  const containerdSock = join(dir, "containerd", "containerd.sock");
  /** What must wait until the node's namespace is gone. */
  const cleanupsAfterStop: (() => Promise<unknown>)[] = [];
  const stop = async () => {
    // Last started first: the test's programs, kubelet, containerd, the control plane, the
    // namespace holder (its end unmounts whatever the node still had mounted).
    for (const c of [...components].reverse()) {
      // containerd leaves its shims, and so the pods, running when it stops: end them first.
      if (c.name === "containerd" && c.running) await killAllContainers(containerdSock);
      await c.stop().catch(() => undefined);
    }
    for (const cleanup of cleanupsAfterStop.splice(0)) await cleanup().catch(() => undefined);
  };
  const logs = (lines = 25) =>
    components.map((c) => `----- ${c.name} (${c.logFile})\n${c.tail(lines)}`).join("\n");

  /**
   * Starts a program that listens on loopback ports and waits until `ready` says it serves. The
   * ports are freePort's: free a moment before the program binds them, so an outgoing connection
   * may take one meanwhile (CI once saw kube-controller-manager exit so, and the scenarios then wait
   * on a cluster without controllers). A program that exits with "address already in use" is
   * started again on fresh ports.
   */
  const serve = async (
    name: string,
    portCount: number,
    command: (ports: number[]) => string[],
    ready: (ports: number[]) => Promise<boolean>,
    timeoutMs: number,
  ): Promise<number[]> => {
    for (let attempt = 1; ; attempt++) {
      const ports: number[] = [];
      while (ports.length < portCount) {
        const port = await freePort();
        if (!ports.includes(port)) ports.push(port);
      }
      const component = add(name, command(ports));
      try {
        await waitFor(
          `${name} to serve`,
          async () => (await ready(ports)) || undefined,
          timeoutMs,
          component.exited(),
        );
        return ports;
      } catch (err) {
        if (attempt === 3 || component.running || !/address already in use/.test(component.tail(5)))
          throw err;
        components.splice(components.indexOf(component), 1);
        console.warn(
          `${name}: a port was taken before it could listen (${ports.join(", ")}), starting it again`,
        );
      }
    }
  };

  try {
    const podNetwork = options.driverPods ? await startPodNetwork() : undefined;
    if (podNetwork) cleanupsAfterStop.push(() => podNetwork.stop());
    const pki = await makePki(join(dir, "pki"));
    const [etcdPort] = await serve(
      "etcd",
      2,
      ([client, peer]) => [
        "etcd",
        "--name=e2e",
        `--data-dir=${join(dir, "etcd")}`,
        `--listen-client-urls=http://127.0.0.1:${client}`,
        `--advertise-client-urls=http://127.0.0.1:${client}`,
        `--listen-peer-urls=http://127.0.0.1:${peer}`,
        "--log-level=warn",
      ],
      async ([client]) => (await get(`http://127.0.0.1:${client}/health`)) === 200,
      60_000,
    );
    const [apiPort] = await serve(
      "kube-apiserver",
      1,
      ([port]) => [
        join(bin, "kube-apiserver"),
        `--etcd-servers=http://127.0.0.1:${etcdPort}`,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        `--secure-port=${port}`,
        "--endpoint-reconciler-type=none",
        `--tls-cert-file=${pki.serverCert}`,
        `--tls-private-key-file=${pki.serverKey}`,
        `--client-ca-file=${pki.caCert}`,
        `--kubelet-client-certificate=${pki.adminCert}`,
        `--kubelet-client-key=${pki.adminKey}`,
        `--service-account-key-file=${pki.saPub}`,
        `--service-account-signing-key-file=${pki.saKey}`,
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        "--v=1",
      ],
      async ([port]) => (await get(`https://127.0.0.1:${port}/readyz`, pki)) === 200,
      60_000,
    );
    await podNetwork?.routeKubernetesService(apiPort!);
    const kubeconfig = join(dir, "admin.kubeconfig");
    await writeFile(kubeconfig, kubeconfigFor(`https://127.0.0.1:${apiPort}`, pki));

    const cluster: Cluster = {
      dir,
      bin,
      kubeconfig,
      kubeletDir: options.driverPods ? KUBELET_DEFAULT_DIR : join(dir, "kubelet"),
      onNode: [],
      podNetwork,
      components,
      add,
      importImage: async (tarball) => {
        await run(
          "ctr",
          ["--address", containerdSock, "--namespace", "k8s.io", "images", "import", tarball],
          {
            timeoutMs: 300_000,
          },
        );
      },
      kubectl: async (args, input, { timeoutMs = 60_000, signal } = {}) => {
        const out = await run(join(bin, "kubectl"), ["--kubeconfig", kubeconfig, ...args], {
          ...(input !== undefined ? { input } : {}),
          timeoutMs,
          signal,
        });
        return out.stdout;
      },
      crashed: () => Promise.race(components.map((c) => c.crashed())),
      logs,
      stop,
    };

    // The controllers: the admin's credentials, 127.0.0.1 only, one replica (no leader election).
    // Their /healthz answers anyone (their self-signed serving certificate is not checked).
    const controlPlane = (name: string, flags: string[]) =>
      serve(
        name,
        1,
        ([port]) => [
          join(bin, name),
          `--kubeconfig=${kubeconfig}`,
          "--bind-address=127.0.0.1",
          `--secure-port=${port}`,
          "--leader-elect=false",
          ...flags,
        ],
        async ([port]) => (await get(`https://127.0.0.1:${port}/healthz`)) === 200,
        60_000,
      );
    await controlPlane("kube-controller-manager", [
      `--service-account-private-key-file=${pki.saKey}`,
      `--root-ca-file=${pki.caCert}`,
      "--controllers=*",
      "--v=2",
    ]);
    await controlPlane("kube-scheduler", ["--v=1"]);

    // The node: a mount namespace held open by a sleeping process.
    const holder = add("node-namespace", [
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "sleep",
      "infinity",
    ]);
    await waitFor("the node's mount namespace", async () => (await nsReady(holder.pid)) || undefined, 10_000);
    cluster.onNode = ["nsenter", `--target=${holder.pid}`, "--mount", "--"];
    const sysDir = join(dir, "node-sysctl");
    await mkdir(sysDir, { recursive: true });
    for (const [key, value] of Object.entries(KERNEL_TUNABLES)) {
      const copy = join(sysDir, key.replaceAll("/", "."));
      await writeFile(copy, `${value}\n`);
      await run(cluster.onNode[0]!, [
        ...cluster.onNode.slice(1),
        "mount",
        "--bind",
        copy,
        `/proc/sys/${key}`,
      ]);
    }

    if (options.diskLinks) await showDiskLinks(cluster.onNode, options.diskLinks, cleanupsAfterStop);
    // kubelet's default directory, /var/lib/kubelet, shows a directory of this cluster's on the
    // node: kubelet puts its device-plugin socket there whatever its --root-dir, and the manifests
    // mount it (with driverPods it is the --root-dir). The host's, made empty if missing, is left
    // as it was. A node plugin pod mounts volumes in it with Bidirectional propagation, which
    // containerd allows only on a shared mount (on a real node, / is one).
    const kubeletHostDir = join(dir, "kubelet");
    const kubeletDefaultDir = options.driverPods ? kubeletHostDir : join(dir, "kubelet-default");
    await mkdir(kubeletHostDir, { recursive: true });
    await mkdir(kubeletDefaultDir, { recursive: true });
    if (!existsSync(KUBELET_DEFAULT_DIR)) {
      await mkdir(KUBELET_DEFAULT_DIR);
      cleanupsAfterStop.push(() => rmdir(KUBELET_DEFAULT_DIR));
    }
    const node = (args: string[]) => run(cluster.onNode[0]!, [...cluster.onNode.slice(1), ...args]);
    await node(["mount", "--bind", kubeletDefaultDir, KUBELET_DEFAULT_DIR]);
    await node(["mount", "--make-rshared", KUBELET_DEFAULT_DIR]);

    const containerdDir = join(dir, "containerd");
    await writeContainerdConfig(dir, containerdDir, podNetwork);
    const containerd = add("containerd", [
      ...cluster.onNode,
      "containerd",
      "--config",
      join(containerdDir, "config.toml"),
    ]);
    await waitFor(
      "containerd",
      async () =>
        (await run("ctr", ["--address", containerdSock, "version"], { okCodes: [0, 1] })).code === 0 ||
        undefined,
      30_000,
      containerd.exited(),
    );
    await cluster.importImage(await buildTestImage(join(dir, "image")));

    // kubelet's own iptables chains, removed after it stops unless they were there before.
    const chainsBefore = await listChains();
    cleanupsAfterStop.push(() => removeNewKubeletChains(chainsBefore));
    const kubeletConfig = join(dir, "kubelet.yaml");
    await serve(
      "kubelet",
      2,
      ([port, healthzPort]) => {
        writeFileSync(kubeletConfig, kubeletConfigFor(containerdSock, port!, healthzPort!));
        return [
          ...cluster.onNode,
          join(bin, "kubelet"),
          `--config=${kubeletConfig}`,
          `--kubeconfig=${kubeconfig}`,
          `--root-dir=${cluster.kubeletDir}`,
          `--cert-dir=${join(dir, "kubelet-pki")}`,
          `--hostname-override=${NODE_NAME}`,
          "--v=2",
        ];
      },
      async () => {
        const ready = await cluster.kubectl([
          "get",
          "node",
          NODE_NAME,
          "-o",
          "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ]);
        return ready === "True";
      },
      120_000,
    );
    return cluster;
  } catch (err) {
    const detail = logs();
    await stop();
    throw new Error(`starting the cluster failed: ${String(err)}\n${detail}`);
  }
}

/**
 * Makes `links` appear at /dev/disk/by-id in the node's mount namespace: a tmpfs over /dev/disk
 * there, holding a bind mount of the directory. /dev/disk is made on the host's /dev only if it is
 * missing (an empty directory, removed again after the node stops).
 */
async function showDiskLinks(
  onNode: string[],
  links: string,
  after: (() => Promise<unknown>)[],
): Promise<void> {
  if (!existsSync("/dev/disk")) {
    await mkdir("/dev/disk");
    after.push(() => rmdir("/dev/disk"));
  }
  const node = (args: string[]) => run(onNode[0]!, [...onNode.slice(1), ...args]);
  await node(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "e2e-disk-links", "/dev/disk"]);
  await node(["mkdir", "/dev/disk/by-id"]);
  await node(["mount", "--bind", links, "/dev/disk/by-id"]);
}

/** SIGKILLs every container containerd runs for Kubernetes and deletes its task. */
async function killAllContainers(sock: string): Promise<void> {
  const ctr = (args: string[]) =>
    run("ctr", ["--address", sock, "--namespace", "k8s.io", "tasks", ...args], {
      okCodes: [0, 1],
      timeoutMs: 20_000,
    });
  const ids = (await ctr(["ls", "--quiet"]).catch(() => ({ stdout: "" }))).stdout.split("\n").filter(Boolean);
  for (const id of ids) await ctr(["kill", "--signal", "SIGKILL", id]).catch(() => undefined);
  for (const id of ids) {
    await waitFor(
      `container ${id} to stop`,
      async () => {
        if ((await ctr(["delete", id])).code === 0) return true;
        // Gone already: its shim exited and containerd removed it.
        const left = (await ctr(["ls", "--quiet"])).stdout.split("\n");
        return left.includes(id) ? undefined : true;
      },
      10_000,
    ).catch(() => undefined);
  }
}

/** Whether unshare has made the namespace: the sleeping process has a mount namespace of its own. */
async function nsReady(pid: number | undefined): Promise<boolean> {
  if (!pid) return false;
  const [theirs, ours, comm] = await Promise.all([
    readlink(`/proc/${pid}/ns/mnt`),
    readlink("/proc/self/ns/mnt"),
    readFile(`/proc/${pid}/comm`, "utf8"),
  ]).catch(() => []);
  return comm?.trim() === "sleep" && theirs !== ours;
}

interface Pki {
  caCert: string;
  serverCert: string;
  serverKey: string;
  adminCert: string;
  adminKey: string;
  saKey: string;
  saPub: string;
}

/** A CA, the apiserver's serving certificate, an admin client certificate and a service-account key. */
async function makePki(dir: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const p = (name: string) => join(dir, name);
  const openssl = (args: string[]) => run("openssl", args);
  await openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.crt"),
    "-days",
    "2",
    "-subj",
    "/CN=e2e-ca",
  ]);
  const issue = async (name: string, subject: string, ext: string) => {
    await openssl([
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      p(`${name}.key`),
      "-out",
      p(`${name}.csr`),
      "-subj",
      subject,
    ]);
    await writeFile(p(`${name}.ext`), ext);
    await openssl([
      "x509",
      "-req",
      "-in",
      p(`${name}.csr`),
      "-CA",
      p("ca.crt"),
      "-CAkey",
      p("ca.key"),
      "-CAcreateserial",
      "-out",
      p(`${name}.crt`),
      "-days",
      "2",
      "-extfile",
      p(`${name}.ext`),
    ]);
  };
  await issue(
    "apiserver",
    "/CN=kube-apiserver",
    "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
  );
  await issue("admin", "/O=system:masters/CN=e2e-admin", "extendedKeyUsage=clientAuth\n");
  await openssl(["genrsa", "-out", p("sa.key"), "2048"]);
  await openssl(["rsa", "-in", p("sa.key"), "-pubout", "-out", p("sa.pub")]);
  return {
    caCert: p("ca.crt"),
    serverCert: p("apiserver.crt"),
    serverKey: p("apiserver.key"),
    adminCert: p("admin.crt"),
    adminKey: p("admin.key"),
    saKey: p("sa.key"),
    saPub: p("sa.pub"),
  };
}

function kubeconfigFor(server: string, pki: Pki): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "e2e", cluster: { server, "certificate-authority": pki.caCert } }],
    users: [{ name: "admin", user: { "client-certificate": pki.adminCert, "client-key": pki.adminKey } }],
    contexts: [{ name: "e2e", context: { cluster: "e2e", user: "admin" } }],
    "current-context": "e2e",
  });
}

/**
 * The status of a GET. With `pki`, over TLS as the admin, checking the server against the CA;
 * without, a self-signed server's certificate is not checked.
 */
function get(url: string, pki?: Pki): Promise<number> {
  const tls = pki
    ? { ca: readFileSync(pki.caCert), cert: readFileSync(pki.adminCert), key: readFileSync(pki.adminKey) }
    : { rejectUnauthorized: false };
  return new Promise((resolve, reject) => {
    const req = (url.startsWith("https:") ? httpsRequest : httpRequest)(
      url,
      { ...tls, timeout: 2000 },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.end();
  });
}

async function writeContainerdConfig(
  dir: string,
  containerdDir: string,
  podNetwork: PodNetwork | undefined,
): Promise<void> {
  const cniDir = join(dir, "cni");
  await mkdir(cniDir, { recursive: true });
  await mkdir(containerdDir, { recursive: true });
  // Without a pod network, pods use the host's network (containerd 1.6 wants an eth0 address from
  // a pod network), but the runtime reports the network ready only once a CNI configuration exists.
  await writeFile(
    join(cniDir, "10-e2e.conflist"),
    JSON.stringify(
      podNetwork
        ? podNetwork.cniConfig(join(dir, "cni-ipam"))
        : { cniVersion: "0.4.0", name: "e2e", plugins: [{ type: "loopback" }] },
    ),
  );
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  await writeFile(
    join(containerdDir, "config.toml"),
    `version = 2
root = "${join(containerdDir, "root")}"
state = "${join(containerdDir, "state")}"

[grpc]
  address = "${join(containerdDir, "containerd.sock")}"

[ttrpc]
  address = "${join(containerdDir, "containerd.sock.ttrpc")}"

[${cri}]
  sandbox_image = "e2e.local/busybox:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: lowering oom_score_adj is all runc may do.
  restrict_oom_score_adj = true
  # Pod network namespaces are pinned under the state directory, not in the host's /run/netns,
  # where each left an empty file behind once the node's mount namespace was gone.
  netns_mounts_under_state_dir = true

[${cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "${cniDir}"

[plugins."io.containerd.internal.v1.opt"]
  path = "${join(containerdDir, "opt")}"
`,
  );
}

function kubeletConfigFor(containerdSock: string, port: number, healthzPort: number): string {
  return JSON.stringify({
    apiVersion: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    address: "127.0.0.1",
    port,
    readOnlyPort: 0,
    healthzBindAddress: "127.0.0.1",
    healthzPort,
    containerRuntimeEndpoint: `unix://${containerdSock}`,
    // The test node is not isolated: anything on 127.0.0.1 may talk to it (the apiserver does).
    authentication: { anonymous: { enabled: true }, webhook: { enabled: false } },
    authorization: { mode: "AlwaysAllow" },
    cgroupDriver: "cgroupfs",
    cgroupsPerQOS: false,
    enforceNodeAllocatable: [],
    // This machine has cgroup v1 (hybrid) and swap: neither matters to the test.
    failCgroupV1: false,
    failSwapOn: false,
    // A shared machine's disk and memory are not the test's business: never evict, never collect.
    evictionHard: { "memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    localStorageCapacityIsolation: false,
    serializeImagePulls: false,
    // Volume stats (kubelet_volume_stats_*) every 10 s instead of every minute.
    volumeStatsAggPeriod: "10s",
    resolvConf: "/etc/resolv.conf",
  });
}
