import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import { identityService } from "../../src/csi/identity.ts";

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
