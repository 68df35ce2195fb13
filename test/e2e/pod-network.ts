// A pod network for the e2e node, so that pods which do not use the host's network (the shipped
// controller Deployment and EBS node DaemonSet) run as on a real cluster: a Linux bridge with the
// CNI bridge plugin, the `kubernetes` Service's address routed to the apiserver, and whatever the
// test serves on 127.0.0.1 (the fake AWS, the fake IMDS) reachable from the pods.
import { existsSync } from "node:fs";
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { run } from "../../src/host/exec.ts";
import { processAlive } from "../harness/moto.ts";

/**
 * The `kubernetes` Service (the apiserver's --service-cluster-ip-range starts at 10.0.0.0/24, and
 * the Service takes its first address), which in-cluster clients reach through
 * KUBERNETES_SERVICE_HOST and _PORT.
 */
export const KUBERNETES_SERVICE = { ip: "10.0.0.1", port: 443 };

/** Bridges and iptables chains carry the pid of the test process that made them. */
const PREFIX = "e2e-br";
const CHAIN_PREFIX = "E2E-SVC-";

export interface PodNetwork {
  bridge: string;
  /** The bridge's own address: the pods' gateway, and where the test's servers are exposed. */
  gateway: string;
  subnet: string;
  /** The CNI configuration list for containerd's conf_dir. */
  cniConfig(dataDir: string): object;
  /**
   * Makes a server that listens on 127.0.0.1 reachable from the pods: a relay on the gateway's
   * address (the same port when it is free). Returns the URL the pods use.
   */
  expose(url: string): Promise<string>;
  /** Sends what pods and the node send to the `kubernetes` Service to the apiserver on `port`. */
  routeKubernetesService(apiserverPort: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Makes the bridge and its address. Whatever a test process that has died left behind (its
 * bridge, its iptables chain) is removed first; nothing of the host's network is changed but what
 * carries this process's pid.
 */
export async function startPodNetwork(): Promise<PodNetwork> {
  if (!existsSync("/usr/lib/cni/bridge")) {
    throw new Error(
      "the CNI bridge plugin is missing: scripts/setup.sh installs containernetworking-plugins",
    );
  }
  await removeLeftovers();
  const bridge = `${PREFIX}${process.pid}`;
  const chain = `${CHAIN_PREFIX}${process.pid}`;
  const octet = await freeOctet();
  const subnet = `10.244.${octet}.0/24`;
  const gateway = `10.244.${octet}.1`;
  const relays: Server[] = [];
  /** Open relayed connections: a watch never ends by itself, and close() waits for them. */
  const open = new Set<Socket>();
  let chainMade = false;

  const stop = async () => {
    const closed = relays.splice(0).map((s) => new Promise((r) => s.close(r)));
    for (const socket of open) socket.destroy();
    await Promise.all(closed);
    if (chainMade) await removeChain(chain);
    chainMade = false;
    await ip(["link", "del", bridge], true);
  };

  try {
    await ip(["link", "add", bridge, "type", "bridge"]);
    await ip(["addr", "add", `${gateway}/24`, "dev", bridge]);
    await ip(["link", "set", bridge, "up"]);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    bridge,
    gateway,
    subnet,
    cniConfig: (dataDir) => ({
      cniVersion: "0.4.0",
      name: "e2e-pods",
      plugins: [
        {
          type: "bridge",
          bridge,
          // The bridge has its address already; pods only need a route to it. Not a gateway for
          // the host: the plugin would turn on IP forwarding and masquerading, host-wide settings.
          isGateway: false,
          ipMasq: false,
          ipam: {
            type: "host-local",
            dataDir,
            ranges: [[{ subnet, gateway, rangeStart: `10.244.${octet}.10` }]],
            routes: [{ dst: "0.0.0.0/0", gw: gateway }],
          },
        },
      ],
    }),
    expose: async (url) => {
      const target = new URL(url);
      const port = await relay(target.hostname, Number(target.port));
      target.hostname = gateway;
      target.port = String(port);
      // URL keeps a lone "/" path: give back the form the caller gave.
      return url.endsWith("/") ? target.toString() : target.toString().replace(/\/$/, "");
    },
    routeKubernetesService: async (apiserverPort) => {
      const port = await relay("127.0.0.1", apiserverPort);
      await iptables(["-t", "nat", "-N", chain]);
      chainMade = true;
      await iptables([
        "-t",
        "nat",
        "-A",
        chain,
        "-d",
        `${KUBERNETES_SERVICE.ip}/32`,
        "-p",
        "tcp",
        "--dport",
        String(KUBERNETES_SERVICE.port),
        "-j",
        "DNAT",
        "--to-destination",
        `${gateway}:${port}`,
      ]);
      // PREROUTING: from the pods; OUTPUT: from the node's own (host-network) programs.
      for (const hook of ["PREROUTING", "OUTPUT"]) await iptables(["-t", "nat", "-I", hook, "-j", chain]);
    },
    stop,
  };

  /**
   * A TCP relay on the gateway's address to host:port, on the same port number when it is free
   * there. Returns the port it listens on.
   */
  async function relay(host: string, port: number): Promise<number> {
    const server = createServer((client) => {
      const upstream = tcpConnect(port, host);
      client.pipe(upstream).pipe(client);
      const end = () => {
        client.destroy();
        upstream.destroy();
        open.delete(client);
        open.delete(upstream);
      };
      for (const s of [client, upstream]) {
        open.add(s);
        s.on("error", end);
        s.on("close", end);
      }
    });
    const listen = (p: number) =>
      new Promise<number>((resolve, reject) => {
        server.once("error", reject);
        server.listen(p, gateway, () => {
          server.off("error", reject);
          const address = server.address();
          resolve(typeof address === "object" && address ? address.port : p);
        });
      });
    const bound = await listen(port).catch(() => listen(0));
    relays.push(server);
    return bound;
  }
}

/** A 10.244.N.0/24 no interface of this host has an address in. */
async function freeOctet(): Promise<number> {
  const { stdout } = await run("ip", ["-o", "-4", "addr", "show"]);
  const used = new Set([...stdout.matchAll(/inet 10\.244\.(\d+)\./g)].map((m) => Number(m[1])));
  for (let n = process.pid % 200; n < (process.pid % 200) + 250; n++) {
    if (!used.has(n % 250)) return n % 250;
  }
  throw new Error("no free 10.244.N.0/24 for the pod network");
}

/** Bridges and chains of test processes that are gone (a crash, a SIGKILL of the runner). */
async function removeLeftovers(): Promise<void> {
  const { stdout } = await run("ip", ["-o", "link", "show", "type", "bridge"]);
  for (const m of stdout.matchAll(new RegExp(`^\\d+: (${PREFIX}(\\d+))[:@]`, "gm"))) {
    if (!processAlive(Number(m[2]))) {
      console.warn(`pod network: removing ${m[1]}, left by process ${m[2]} which is gone`);
      await ip(["link", "del", m[1]!], true);
    }
  }
  const rules = await run("iptables", ["-t", "nat", "-S"], { okCodes: [0, 1] });
  for (const m of rules.stdout.matchAll(new RegExp(`^-N (${CHAIN_PREFIX}(\\d+))$`, "gm"))) {
    if (!processAlive(Number(m[2]))) await removeChain(m[1]!);
  }
}

async function removeChain(chain: string): Promise<void> {
  for (const hook of ["PREROUTING", "OUTPUT"]) {
    // Once per jump: -D removes one.
    while (
      (await run("iptables", ["-t", "nat", "-D", hook, "-j", chain], { okCodes: [0, 1, 2] })).code === 0
    );
  }
  await run("iptables", ["-t", "nat", "-F", chain], { okCodes: [0, 1] });
  await run("iptables", ["-t", "nat", "-X", chain], { okCodes: [0, 1] });
}

async function ip(args: string[], mayFail = false): Promise<void> {
  await run("ip", args, mayFail ? { okCodes: [0, 1, 2] } : {});
}

async function iptables(args: string[]): Promise<void> {
  await run("iptables", ["-w", ...args]);
}
