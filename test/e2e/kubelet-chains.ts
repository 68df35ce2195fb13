// kubelet writes iptables chains of its own into the host's tables (KUBE-FIREWALL, which drops
// packets to 127.0.0.0/8 that do not come from it, and the KUBE-KUBELET-CANARY and
// KUBE-IPTABLES-HINT markers), for IPv4 and IPv6, and leaves them when it stops. A real node keeps
// them; a test machine should not: these helpers remove the ones a test's kubelet made.
import { run } from "../../src/host/exec.ts";

const TOOLS = ["iptables", "ip6tables"] as const;
const TABLES = ["filter", "nat", "mangle"] as const;
type Chains = Set<string>;

/** The chains of every table, as "tool table chain". */
export async function listChains(): Promise<Chains> {
  const chains: Chains = new Set();
  for (const tool of TOOLS) {
    for (const table of TABLES) {
      const { stdout } = await run(tool, ["-w", "-t", table, "-S"], { okCodes: [0, 1, 2, 3] });
      for (const m of stdout.matchAll(/^-N (\S+)$/gm)) chains.add(`${tool} ${table} ${m[1]}`);
    }
  }
  return chains;
}

/**
 * Removes the KUBE-* chains that exist now and did not in `before`: first the rules that jump to
 * them, then their rules, then the chains.
 */
export async function removeNewKubeletChains(before: Chains): Promise<string[]> {
  const removed: string[] = [];
  for (const entry of await listChains()) {
    const [tool, table, chain] = entry.split(" ") as [(typeof TOOLS)[number], string, string];
    if (before.has(entry) || !chain.startsWith("KUBE-")) continue;
    const rules = (await run(tool, ["-w", "-t", table, "-S"], { okCodes: [0, 1] })).stdout;
    for (const m of rules.matchAll(new RegExp(`^-A (.+ -j ${chain})$`, "gm"))) {
      await run(tool, ["-w", "-t", table, "-D", ...splitRule(m[1]!)], { okCodes: [0, 1, 2] });
    }
    await run(tool, ["-w", "-t", table, "-F", chain], { okCodes: [0, 1] });
    await run(tool, ["-w", "-t", table, "-X", chain], { okCodes: [0, 1] });
    removed.push(entry);
  }
  return removed;
}

/** An `iptables -S` rule as arguments; quoted comments stay one argument. */
function splitRule(rule: string): string[] {
  return [...rule.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}
