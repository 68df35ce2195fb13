// The drivers as a cluster runs them: a controller "pod" (the driver and its sidecars) and a node
// "pod" (the node plugin in the node's mount namespace and its registrar). This driver or the
// official EBS driver, each installable and removable while the cluster runs (the migration
// scenario swaps one for the other).
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { CsiClient } from "../harness/csi-client.ts";
import { MAIN } from "../harness/driver-process.ts";
import { type Cluster, NODE_NAME } from "./cluster.ts";
import { type Component, waitFor } from "./processes.ts";

export const EBS = "ebs.csi.aws.com";
export const EFS = "efs.csi.aws.com";

/** What the drivers need of the test environment. */
export interface DeployContext {
  cluster: Cluster;
  /** Where the controllers' sockets (and the EFS controller's temporary mounts) go. */
  dir: string;
  /** The fake AWS endpoint, region and credentials, and the fake IMDS. */
  awsEnv: Record<string, string>;
  /** The node's instance: kubelet must register the node plugin under this id. */
  instanceId: string;
  /** Where the attach simulation links disks (this driver's --device-dir). */
  byIdDir: string;
  /** The official EBS driver's binary (scripts/e2e-build.sh), for flavor "official". */
  officialBinary?: string;
  /** More flags for this driver's EFS processes (the test's mount targets' CA). */
  efsArgs?: string[];
}

/** One installed driver: its processes, in the order they started. */
export interface Deployment {
  driver: string;
  controller: Component;
  node: Component;
  /** Kills the node plugin (SIGKILL by default, as a crash) and starts it again, ready. */
  restartNode(signal?: NodeJS.Signals): Promise<void>;
  /** Stops every process and waits until kubelet has dropped the driver from the node. */
  remove(): Promise<void>;
}

export type EbsFlavor = "ours" | "official";

/** The sidecars' flags, as deploy/kubernetes/base runs them (one replica: no leader election). */
const EBS_SIDECARS: Record<string, string[]> = {
  provisioner: ["--extra-create-metadata", "--feature-gates=Topology=true", "--default-fstype=ext4"],
  attacher: [],
  resizer: ["--handle-volume-inuse-error=false"],
  snapshotter: ["--extra-create-metadata"],
};
const EFS_SIDECARS: Record<string, string[]> = {
  provisioner: ["--extra-create-metadata", "--feature-gates=Topology=true"],
};

export async function deployEbs(ctx: DeployContext, flavor: EbsFlavor = "ours"): Promise<Deployment> {
  const official = ctx.officialBinary;
  if (flavor === "official" && !official) throw new Error("the official driver's binary is not built");
  const officialArgs = ["--logging-format=text", "--v=2"];
  return deploy(ctx, {
    driver: EBS,
    label: flavor === "ours" ? "ebs" : "official-ebs",
    sidecars: EBS_SIDECARS,
    controller: (socket) =>
      flavor === "ours"
        ? ours(ctx, "ebs", "controller", socket)
        : [official!, "controller", `--endpoint=unix://${socket}`, "--batching=true", ...officialArgs],
    node: (socket) =>
      flavor === "ours"
        ? ours(ctx, "ebs", "node", socket, ["--device-dir", ctx.byIdDir])
        : // It finds disks under /dev/disk/by-id, where the node's namespace shows the simulation's links.
          [official!, "node", `--endpoint=unix://${socket}`, ...officialArgs],
  });
}

export async function deployEfs(ctx: DeployContext): Promise<Deployment> {
  return deploy(ctx, {
    driver: EFS,
    label: "efs",
    sidecars: EFS_SIDECARS,
    controller: (socket) => ours(ctx, "efs", "controller", socket, ctx.efsArgs),
    node: (socket) => ours(ctx, "efs", "node", socket, ctx.efsArgs),
  });
}

/** This driver's command line, from the sources (or DRIVER_MAIN, e.g. the bundle). */
function ours(
  ctx: DeployContext,
  driver: "ebs" | "efs",
  mode: "controller" | "node",
  socket: string,
  extra: string[] = [],
): string[] {
  return [
    process.execPath,
    process.env.DRIVER_MAIN ?? MAIN,
    ...["--driver", driver, "--mode", mode, "--log-level", process.env.DRIVER_LOG_LEVEL ?? "info"],
    ...(mode === "node" ? ["--kubelet-dir", ctx.cluster.kubeletDir] : []),
    ...extra,
    ...["--endpoint", `unix://${socket}`],
  ];
}

interface Recipe {
  driver: string;
  /** Prefix of the processes' names (and log files). */
  label: string;
  sidecars: Record<string, string[]>;
  controller(socket: string): string[];
  node(socket: string): string[];
}

async function deploy(ctx: DeployContext, recipe: Recipe): Promise<Deployment> {
  const { cluster } = ctx;
  const started: Component[] = [];
  const remove = async () => {
    for (const c of started.reverse()) await c.stop();
    started.length = 0;
    await waitFor(
      `kubelet to drop ${recipe.driver} from node ${NODE_NAME}`,
      async () => ((await registeredId(cluster, recipe.driver)) === undefined ? true : undefined),
      60_000,
    );
  };
  try {
    const controllerDir = join(ctx.dir, `${recipe.label}-controller`);
    await mkdir(join(controllerDir, "tmp"), { recursive: true });
    const controllerSocket = join(controllerDir, "csi.sock");
    // The EFS controller's temporary mounts (to make and remove access point directories) go in TMPDIR.
    const controllerEnv = { ...ctx.awsEnv, TMPDIR: join(controllerDir, "tmp") };
    const controller = cluster.add(
      `${recipe.label}-controller`,
      recipe.controller(controllerSocket),
      controllerEnv,
    );
    started.push(controller);
    await untilServing(controller, controllerSocket);
    for (const [name, extra] of Object.entries(recipe.sidecars)) {
      started.push(
        cluster.add(`${recipe.label}-${name}`, [
          join(cluster.bin, `csi-${name}`),
          `--csi-address=${controllerSocket}`,
          `--kubeconfig=${cluster.kubeconfig}`,
          "--timeout=60s",
          "--leader-election=false",
          "--v=2",
          ...extra,
        ]),
      );
    }

    const pluginDir = join(cluster.kubeletDir, "plugins", recipe.driver);
    await mkdir(pluginDir, { recursive: true });
    const nodeSocket = join(pluginDir, "csi.sock");
    const node = cluster.add(
      `${recipe.label}-node`,
      [...cluster.onNode, ...recipe.node(nodeSocket)],
      ctx.awsEnv,
    );
    started.push(node);
    await untilServing(node, nodeSocket);
    started.push(
      cluster.add(`${recipe.label}-registrar`, [
        ...cluster.onNode,
        join(cluster.bin, "registrar"),
        `--driver=${recipe.driver}`,
        `--csi-address=${nodeSocket}`,
        `--registration-socket=${join(cluster.kubeletDir, "plugins_registry", `${recipe.driver}-reg.sock`)}`,
      ]),
    );
    await waitFor(
      `kubelet to register ${recipe.driver} on node ${NODE_NAME} as ${ctx.instanceId}`,
      async () => ((await registeredId(cluster, recipe.driver)) === ctx.instanceId ? true : undefined),
      60_000,
    );
    return {
      driver: recipe.driver,
      controller,
      node,
      async restartNode(signal = "SIGKILL") {
        await node.stop(signal);
        node.start();
        await untilServing(node, nodeSocket);
      },
      remove,
    };
  } catch (err) {
    await remove().catch(() => undefined);
    throw err;
  }
}

/** The node id kubelet registered for the driver (CSINode), or undefined. */
async function registeredId(cluster: Cluster, driver: string): Promise<string | undefined> {
  const out = await cluster.kubectl(["get", "csinode", NODE_NAME, "-o", "json", "--ignore-not-found"]);
  if (out.trim() === "") return undefined;
  const drivers = (JSON.parse(out).spec?.drivers ?? []) as { name: string; nodeID: string }[];
  return drivers.find((d) => d.name === driver)?.nodeID;
}

/** Waits until the plugin answers GetPluginInfo on its socket, as the sidecars' first call. */
async function untilServing(plugin: Component, socket: string): Promise<void> {
  await waitFor(
    `${plugin.name} to serve ${socket}`,
    async () => {
      const client = new CsiClient(socket);
      try {
        await client.call("Identity", "GetPluginInfo", {}, 2000);
        return true;
      } finally {
        client.close();
      }
    },
    60_000,
    plugin.exited(),
  );
}
