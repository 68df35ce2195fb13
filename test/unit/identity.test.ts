import { status } from "@grpc/grpc-js";
import { describe, expect, it, vi } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { identityService } from "../../src/csi/identity.ts";
import { firstAnsweredEarly } from "../../src/driver.ts";

const base = { name: "ebs.csi.aws.com", version: "1.2.3", controller: true, accessibilityConstraints: true };

async function failure(promise: Promise<unknown>): Promise<CsiError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CsiError);
  return err as CsiError;
}

describe("Identity", () => {
  it("names the plugin and advertises the controller and topology", async () => {
    const identity = identityService({ ...base, probe: async () => undefined });
    expect(await identity.GetPluginInfo()).toEqual({
      name: "ebs.csi.aws.com",
      vendor_version: "1.2.3",
      manifest: {},
    });
    expect(await identity.GetPluginCapabilities()).toEqual({
      capabilities: [
        { service: { type: "CONTROLLER_SERVICE" } },
        { service: { type: "VOLUME_ACCESSIBILITY_CONSTRAINTS" } },
        { volume_expansion: { type: "ONLINE" } },
      ],
    });
  });

  it("asks the backend once for a burst of livenessprobe calls", async () => {
    let asked = 0;
    const identity = identityService({ ...base, probe: async () => void asked++ });
    for (let i = 0; i < 5; i++) expect(await identity.Probe()).toEqual({ ready: { value: true } });
    expect(asked).toBe(1);
  });

  it("answers FAILED_PRECONDITION with the reason when the backend fails or does not answer in time", async () => {
    const failing = identityService({
      ...base,
      probe: async () => Promise.reject(new Error("UnauthorizedOperation")),
    });
    const err = await failure(failing.Probe());
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.message).toContain("UnauthorizedOperation");

    const hanging = identityService({ ...base, probe: () => new Promise(() => undefined) });
    const late = await failure(hanging.Probe());
    expect(late.code).toBe(status.FAILED_PRECONDITION);
    expect(late.message).toMatch(/no answer within/);
  });
});

describe("firstAnsweredEarly (the controller's Probe at start-up)", () => {
  it("asks at once, gives that answer to the first Probe, and asks anew for every later one", async () => {
    let asked = 0;
    const probe = firstAnsweredEarly(async () => {
      asked++;
    });
    expect(asked).toBe(1);
    await probe();
    expect(asked).toBe(1);
    await probe();
    await probe();
    expect(asked).toBe(3);
  });

  it("a failed early answer is the first Probe's failure, not an unhandled rejection", async () => {
    let asked = 0;
    const probe = firstAnsweredEarly(async () => {
      asked++;
      if (asked === 1) throw new Error("EC2 unreachable");
    });
    await new Promise((r) => setTimeout(r, 10));
    await expect(probe()).rejects.toThrow("EC2 unreachable");
    await expect(probe()).resolves.toBeUndefined();
  });

  it("an early answer older than 5 s is not used: the first Probe asks anew", async () => {
    vi.useFakeTimers({ toFake: ["performance"] });
    try {
      let asked = 0;
      const probe = firstAnsweredEarly(async () => {
        asked++;
      });
      vi.advanceTimersByTime(6000);
      await probe();
      expect(asked).toBe(2);
    } finally {
      vi.useRealTimers();
    }
  });
});
