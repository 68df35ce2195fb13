import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseCommandLine } from "../../src/config.ts";
import { createEfsDriver } from "../../src/efs/driver.ts";
import { EfsNode } from "../../src/efs/node.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import { type Imds, startImds } from "../harness/imds.ts";

let imds: Imds;
const savedEndpoint = process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;

beforeAll(async () => {
  imds = await startImds({
    instanceId: "i-0123456789abcdef0",
    instanceType: "m5.large",
    zone: "eu-west-1b",
    region: "eu-west-1",
  });
  process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = imds.url;
});

afterAll(async () => {
  if (savedEndpoint === undefined) delete process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT;
  else process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = savedEndpoint;
  await imds?.stop();
});

function deps(...flags: string[]) {
  const command = parseCommandLine(["--driver", "efs", ...flags], {});
  if (command.kind !== "serve") throw new Error("expected serve");
  return { options: command.options, log: createLogger("silent"), metrics: createMetrics("aws_efs_csi") };
}

describe("createEfsDriver", () => {
  it("serves the controller only, without topology, in controller mode", async () => {
    const driver = await createEfsDriver(deps("--mode", "controller", "--region", "us-east-1"));
    expect(Object.keys(driver.controller ?? {}).sort()).toEqual([
      "ControllerExpandVolume",
      "ControllerGetCapabilities",
      "ControllerGetVolumeHealth",
      "CreateVolume",
      "DeleteVolume",
      "ValidateVolumeCapabilities",
    ]);
    expect(driver.node).toBeUndefined();
    expect(driver.accessibilityConstraints).toBe(false);
    await driver.close();
  });

  it("serves the node with the instance metadata, and probes nothing in AWS, in node mode", async () => {
    const driver = await createEfsDriver(deps("--mode", "node"));
    expect(driver.controller).toBeUndefined();
    expect(driver.node).toBeInstanceOf(EfsNode);
    expect(await (driver.node as EfsNode).NodeGetInfo()).toMatchObject({
      node_id: "i-0123456789abcdef0",
      accessible_topology: { segments: { "topology.kubernetes.io/zone": "eu-west-1b" } },
    });
    // No AWS endpoint answers here: a node probe that called AWS would fail.
    await expect(driver.probe()).resolves.toBeUndefined();
    await driver.close();
  });

  it("serves both in all mode, and accepts --delete-access-point-root-dir now that the controller can mount EFS", async () => {
    const driver = await createEfsDriver(deps("--mode", "all", "--delete-access-point-root-dir"));
    expect(driver.controller).toBeDefined();
    expect(driver.node).toBeInstanceOf(EfsNode);
    await driver.close();
  });
});
