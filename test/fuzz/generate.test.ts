// The fuzz generator itself: a failure must be re-runnable from its seed and index, every RPC of
// the three services must come up, and every request must be one the client can encode.
import { describe, expect, it } from "vitest";
import { csiServiceDefinitions } from "../../src/csi/proto.ts";
import { type FuzzTargets, generateCall, RPCS, seedFromEnv } from "./generate.ts";

const targets = (driver: "ebs" | "efs"): FuzzTargets => ({
  driver,
  kubeletDir: "/var/lib/kubelet",
  playground: "/var/lib/kubelet/fuzz",
  escapeLink: "/var/lib/kubelet/fuzz/escape",
  volumeIds: driver === "ebs" ? ["vol-0123456789abcdef0"] : ["fs-01234567::fsap-0123456789abcdef0"],
  nodeId: "i-0123456789abcdef0",
  zone: "us-east-1a",
  fileSystemId: "fs-01234567",
});

describe("fuzz generator", () => {
  it("gives the same request for the same seed and index, whatever was generated before", () => {
    const t = targets("ebs");
    const later = generateCall(t, 42, 977);
    for (let i = 0; i < 977; i++) generateCall(t, 42, i);
    expect(generateCall(t, 42, 977)).toEqual(later);
    expect(generateCall(t, 43, 977)).not.toEqual(later);
  });

  it("takes the seed from FUZZ_SEED, decimal or hex, and refuses anything else", () => {
    expect(seedFromEnv({ FUZZ_SEED: "12345" })).toBe(12345);
    expect(seedFromEnv({ FUZZ_SEED: "0xff" })).toBe(255);
    expect(() => seedFromEnv({ FUZZ_SEED: "abc" })).toThrow(/FUZZ_SEED/);
    expect(seedFromEnv({})).toBeGreaterThanOrEqual(0);
  });

  it.each(["ebs", "efs"] as const)("covers every RPC with requests the %s client can encode", (driver) => {
    const services = csiServiceDefinitions();
    const seen = new Set<string>();
    for (let i = 0; i < 3000; i++) {
      const { service, method, request } = generateCall(targets(driver), 7, i);
      seen.add(method);
      const definition = services[service][method]!;
      expect(() => definition.requestSerialize(request)).not.toThrow();
    }
    expect([...seen].sort()).toEqual(Object.values(RPCS).flat().sort());
  });
});
