import {
  AccessPointAlreadyExists,
  AccessPointNotFound,
  BadRequest,
  FileSystemNotFound,
  IncorrectFileSystemLifeCycleState,
  InternalServerError,
  ThrottlingException,
} from "@aws-sdk/client-efs";
import { describe, expect, it } from "vitest";
import { mayHaveTakenEffect } from "../../src/efs/cloud.ts";
import { toEfsError } from "../../src/efs/sdk.ts";

const meta = (httpStatusCode: number) => ({ $metadata: { httpStatusCode } });

describe("toEfsError", () => {
  it.each([
    [
      new FileSystemNotFound({ ...meta(404), ErrorCode: "FileSystemNotFound", message: "no" }),
      "FileSystemNotFound",
    ],
    [
      new AccessPointNotFound({ ...meta(404), ErrorCode: "AccessPointNotFound", message: "no" }),
      "AccessPointNotFound",
    ],
    [new BadRequest({ ...meta(400), ErrorCode: "BadRequest", message: "bad" }), "InvalidParameter"],
    [
      new IncorrectFileSystemLifeCycleState({ ...meta(409), ErrorCode: "Incorrect", message: "creating" }),
      "FileSystemNotReady",
    ],
    [
      new ThrottlingException({ ...meta(429), ErrorCode: "ThrottlingException", message: "slow" }),
      "Throttled",
    ],
    [
      new InternalServerError({ ...meta(500), ErrorCode: "InternalServerError", message: "oops" }),
      "Unavailable",
    ],
    [Object.assign(new Error("denied"), { name: "AccessDeniedException", ...meta(403) }), "AccessDenied"],
    [Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }), "Unavailable"],
    [Object.assign(new Error("teapot"), { name: "Teapot", ...meta(418) }), "Other"],
  ])("maps %s to %s", (err, kind) => {
    const mapped = toEfsError("create access point on fs-1", err);
    expect(mapped.kind).toBe(kind);
    expect(mapped.message).toContain("create access point on fs-1");
  });

  it("keeps the access point that holds a reused client token", () => {
    const err = new AccessPointAlreadyExists({
      ...meta(409),
      ErrorCode: "AccessPointAlreadyExists",
      AccessPointId: "fsap-0123456789abcdef0",
      message: "exists",
    });
    const mapped = toEfsError("create", err);
    expect(mapped.kind).toBe("AccessPointAlreadyExists");
    expect(mapped.accessPointId).toBe("fsap-0123456789abcdef0");
  });

  it("tells failures AWS refused from ones that may have been carried out", () => {
    expect(
      mayHaveTakenEffect(toEfsError("x", new BadRequest({ ...meta(400), ErrorCode: "B", message: "" }))),
    ).toBe(false);
    expect(
      mayHaveTakenEffect(
        toEfsError("x", new ThrottlingException({ ...meta(429), ErrorCode: "T", message: "" })),
      ),
    ).toBe(false);
    expect(
      mayHaveTakenEffect(
        toEfsError("x", new InternalServerError({ ...meta(500), ErrorCode: "I", message: "" })),
      ),
    ).toBe(true);
    expect(mayHaveTakenEffect(new Error("unknown"))).toBe(true);
  });
});
