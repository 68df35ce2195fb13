// biome-ignore-all lint/suspicious/noTemplateCurlyInString: subPathPattern syntax, not templates
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";
import {
  clientTokenFor,
  DEFAULT_GID_RANGE,
  matchesRootDirectory,
  PARAMETERS,
  PV_NAME,
  PVC_NAME,
  PVC_NAMESPACE,
  parseProvisioningParams,
  planRootDirectory,
  rootDirectoryPath,
} from "../../src/efs/params.ts";

const FS = "fs-0123456789abcdef0";
const BASE = { provisioningMode: "efs-ap", fileSystemId: FS, directoryPerms: "700" };
const UUID = "3f2a8c1e-1b2c-4d5e-8f90-a1b2c3d4e5f6";

function invalid(params: Record<string, string>, extraTags?: Record<string, string>): string {
  try {
    parseProvisioningParams(params, extraTags);
  } catch (err) {
    expect(err).toBeInstanceOf(CsiError);
    expect((err as CsiError).code).toBe(status.INVALID_ARGUMENT);
    return (err as CsiError).message;
  }
  throw new Error("expected INVALID_ARGUMENT");
}

function planError(params: Record<string, string>, name = "pvc-1"): string {
  try {
    planRootDirectory(parseProvisioningParams(params), name);
  } catch (err) {
    expect((err as CsiError).code).toBe(status.INVALID_ARGUMENT);
    return (err as CsiError).message;
  }
  throw new Error("expected INVALID_ARGUMENT");
}

describe("parseProvisioningParams", () => {
  it("applies the defaults of the official driver's code", () => {
    const p = parseProvisioningParams(BASE);
    expect(p).toMatchObject({
      fileSystemId: FS,
      directoryPerms: "700",
      uid: undefined,
      gid: undefined,
      gidRange: { start: 50000, end: 60000 },
      basePath: "/",
      subPathPattern: undefined,
      ensureUniqueDirectory: true,
      reuseAccessPoint: false,
      tagging: true,
    });
    expect(DEFAULT_GID_RANGE).toEqual({ start: 50000, end: 60000 });
  });

  it("reads every parameter and the provisioner's PVC/PV metadata", () => {
    const p = parseProvisioningParams({
      ...BASE,
      directoryPerms: "0750",
      uid: "1000",
      gid: "2000",
      gidRangeStart: "1000",
      gidRangeEnd: "2000",
      basePath: "dynamic/",
      subPathPattern: "${.PVC.namespace}/${.PVC.name}",
      ensureUniqueDirectory: "false",
      reuseAccessPoint: "True",
      enableTagging: "1",
      az: "us-east-1a",
      enforceZoneAffinity: "false",
      [PVC_NAME]: "data",
      [PVC_NAMESPACE]: "team",
      [PV_NAME]: "pvc-1",
      "csi.storage.k8s.io/fstype": "",
    });
    expect(p).toMatchObject({
      directoryPerms: "0750",
      uid: 1000,
      gid: 2000,
      gidRange: { start: 1000, end: 2000 },
      basePath: "/dynamic",
      ensureUniqueDirectory: false,
      reuseAccessPoint: true,
      pvcName: "data",
      pvcNamespace: "team",
      pvName: "pvc-1",
    });
  });

  it.each([
    [{ fileSystemId: FS, directoryPerms: "700" }, "parameter provisioningMode: required"],
    [{ ...BASE, provisioningMode: "efs-dir" }, 'parameter provisioningMode: "efs-dir" is not supported'],
    [{ ...BASE, fileSystemId: " " }, "parameter fileSystemId: required"],
    [{ ...BASE, fileSystemId: "arn:aws:elasticfilesystem:x" }, "parameter fileSystemId"],
    [{ provisioningMode: "efs-ap", fileSystemId: FS }, "parameter directoryPerms: required"],
    [{ ...BASE, directoryPerms: "800" }, "parameter directoryPerms"],
    [{ ...BASE, directoryPerms: "rwx" }, "parameter directoryPerms"],
    [{ ...BASE, uid: "-1" }, "parameter uid"],
    [{ ...BASE, gid: "abc" }, "parameter gid"],
    [{ ...BASE, gid: "4294967296" }, "parameter gid"],
    [{ ...BASE, gidRangeStart: "1000" }, "set both or neither"],
    [{ ...BASE, gidRangeEnd: "2000" }, "set both or neither"],
    [{ ...BASE, gidRangeStart: "0", gidRangeEnd: "10" }, "parameter gidRangeStart"],
    [{ ...BASE, gidRangeStart: "2000", gidRangeEnd: "2000" }, "must be greater than gidRangeStart"],
    [{ ...BASE, ensureUniqueDirectory: "yes" }, "parameter ensureUniqueDirectory"],
    [{ ...BASE, reuseAccessPoint: "true" }, "--extra-create-metadata"],
    [{ ...BASE, enforceZoneAffinity: "true" }, "parameter enforceZoneAffinity"],
    [{ ...BASE, fileSystemIdConfigRef: "ns/cm/key" }, "parameter fileSystemIdConfigRef"],
    [{ ...BASE, fileSystemID: FS }, "did you mean fileSystemId?"],
    [{ ...BASE, type: "gp3" }, "parameter type: unknown parameter"],
  ])("refuses %j", (params, message) => {
    expect(invalid(params as Record<string, string>)).toContain(message);
  });

  it("refuses enableTagging=false with controller tags, as the official driver does", () => {
    expect(invalid({ ...BASE, enableTagging: "false" }, { team: "a" })).toContain("--extra-tags");
    expect(parseProvisioningParams({ ...BASE, enableTagging: "false" }).tagging).toBe(false);
  });

  it("documents every parameter it accepts", () => {
    for (const spec of Object.values(PARAMETERS)) expect(spec.help).not.toBe("");
  });
});

describe("root directories", () => {
  it("is basePath plus the volume name by default", () => {
    const plan = planRootDirectory(parseProvisioningParams({ ...BASE, basePath: "/dyn" }), "pvc-1");
    expect(plan).toEqual({ stem: "/dyn/pvc-1", unique: false });
    expect(rootDirectoryPath(plan, UUID)).toBe("/dyn/pvc-1");
    expect(planRootDirectory(parseProvisioningParams(BASE), "pvc-1").stem).toBe("/pvc-1");
  });

  it("fits a 128-character volume name into EFS's 100 characters with a hash", () => {
    const name = "n".repeat(128);
    const plan = planRootDirectory(parseProvisioningParams({ ...BASE, basePath: "/dyn" }), name);
    expect(plan.stem.length).toBeLessThanOrEqual(100);
    expect(plan.stem.startsWith("/dyn/nnnn")).toBe(true);
    const other = planRootDirectory(
      parseProvisioningParams({ ...BASE, basePath: "/dyn" }),
      `${"n".repeat(127)}m`,
    );
    expect(other.stem).not.toBe(plan.stem);
  });

  it("interpolates subPathPattern and appends a UUID unless ensureUniqueDirectory=false", () => {
    const meta = { [PVC_NAME]: "data", [PVC_NAMESPACE]: "team", [PV_NAME]: "pvc-1" };
    const params = { ...BASE, ...meta, basePath: "/k8s", subPathPattern: "${.PVC.namespace}/${.PVC.name}" };
    const unique = planRootDirectory(parseProvisioningParams(params), "pvc-1");
    expect(unique).toEqual({ stem: "/k8s/team/data", unique: true });
    expect(rootDirectoryPath(unique, UUID)).toBe(`/k8s/team/data-${UUID}`);
    expect(matchesRootDirectory(`/k8s/team/data-${UUID}`, unique)).toBe(true);
    expect(matchesRootDirectory("/k8s/team/data-other", unique)).toBe(false);
    expect(matchesRootDirectory("/k8s/team/other", unique)).toBe(false);

    const shared = planRootDirectory(
      parseProvisioningParams({ ...params, ensureUniqueDirectory: "false" }),
      "x",
    );
    expect(rootDirectoryPath(shared, UUID)).toBe("/k8s/team/data");
    expect(matchesRootDirectory(`/k8s/team/data-${UUID}`, shared)).toBe(false);
  });

  it.each([
    [{ subPathPattern: "${.PVC.labels.app}" }, "may only use"],
    [{ subPathPattern: "${.PVC.name}" }, "--extra-create-metadata"],
    [{ subPathPattern: "../../etc", basePath: "/k8s", [PVC_NAME]: "x" }, "below basePath"],
    [{ subPathPattern: "a/b/c/d/e", ensureUniqueDirectory: "false" }, "5 directory levels; EFS allows 4"],
    [{ basePath: "/a/b/c/d" }, "5 directory levels"],
    [{ basePath: `/${"x".repeat(99)}` }, "characters long; EFS allows 100"],
    [{ subPathPattern: "x".repeat(70) }, "characters long"],
    [{ subPathPattern: ".hidden", ensureUniqueDirectory: "false" }, 'starting with "."'],
    [{ basePath: "/a;b" }, "the character"],
  ])("refuses %j with the EFS rule it breaks", (params, message) => {
    expect(planError({ ...BASE, ...(params as Record<string, string>) })).toContain(message);
  });
});

describe("clientTokenFor", () => {
  it("is the volume name, as the official driver sends it", () => {
    expect(clientTokenFor("pvc-1234", parseProvisioningParams(BASE))).toBe("pvc-1234");
  });

  it("hashes names longer than EFS's 64 characters", () => {
    const token = clientTokenFor("n".repeat(128), parseProvisioningParams(BASE));
    expect(token).toMatch(/^[0-9a-f]{64}$/);
  });

  it("is the SHA-256 of the PVC name with reuseAccessPoint", () => {
    const p = parseProvisioningParams({ ...BASE, reuseAccessPoint: "true", [PVC_NAME]: "data" });
    expect(clientTokenFor("pvc-1", p)).toBe(
      "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7",
    );
    expect(clientTokenFor("pvc-2", p)).toBe(clientTokenFor("pvc-1", p));
  });
});
