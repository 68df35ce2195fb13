import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { describe, expect, it, vi } from "vitest";
import { CSI_JSON_PATH, csiDescriptorJson } from "../../scripts/proto-json.ts";
import { type CsiServiceDefinition, csiServiceDefinitions } from "../../src/csi/proto.ts";

// Structural equivalence between our hand-written proto/csi.proto and the official CSI v1.14.0 csi.proto.

const CSI_VERSION = "v1.14.0";
const PACKAGE = "csi.v1";

const here = path.dirname(fileURLToPath(import.meta.url));
const ourProtoPath = path.resolve(here, "../../proto/csi.proto");

const require = createRequire(import.meta.url);
const protobufGoogleDir = path.join(path.dirname(require.resolve("protobufjs")), "google", "protobuf");

interface OfficialLocation {
  path: string | undefined;
  reason: string | undefined;
}

function locateOfficialProto(): OfficialLocation {
  let modCache: string;
  let how: string;
  try {
    modCache = execFileSync("go", ["env", "GOMODCACHE"], { encoding: "utf8" }).trim();
    how = "`go env GOMODCACHE`";
  } catch (err) {
    modCache =
      process.env["GOMODCACHE"] ||
      path.join(process.env["GOPATH"] || path.join(homedir(), "go"), "pkg", "mod");
    how = `fallback (go env failed: ${(err as Error).message.split("\n")[0]})`;
  }
  const candidate = path.join(
    modCache,
    "github.com",
    "container-storage-interface",
    `spec@${CSI_VERSION}`,
    "csi.proto",
  );
  if (!modCache || !existsSync(candidate)) {
    return {
      path: undefined,
      reason: `official CSI ${CSI_VERSION} csi.proto not found at ${candidate} (module cache from ${how})`,
    };
  }
  return { path: candidate, reason: undefined };
}

const official = locateOfficialProto();
if (official.reason) {
  console.warn(`[proto.test] SKIPPING comparison with the official spec: ${official.reason}`);
}

function loadRoot(file: string): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (target.startsWith("google/protobuf/")) {
      return path.join(protobufGoogleDir, target.slice("google/protobuf/".length));
    }
    return protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(file, { keepCase: true });
  root.resolveAll();
  return root;
}

// ---------------------------------------------------------------------------------------------------------
// Canonical, order-independent description of every definition in the csi.v1 package.

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

// protobufjs keeps the file syntax ("proto2"/"proto3"/edition) and the resolved edition features
// (field presence, packed encoding, open enums, ...) in underscore-prefixed members that are not in its typings.
interface EditionInternals {
  _edition?: string | null;
  _features?: Record<string, unknown>;
}

function edition(obj: protobuf.ReflectionObject): { edition: string | null; features: unknown } {
  const internals = obj as unknown as EditionInternals;
  return { edition: internals._edition ?? null, features: internals._features ?? null };
}

function shortName(obj: protobuf.ReflectionObject): string {
  return obj.fullName.replace(/^\./, "");
}

function sortKeys(value: unknown): Json {
  if (value === undefined || value === null) return null;
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value === "object") {
    const out: { [k: string]: Json } = {};
    for (const key of Object.keys(value as object).sort()) {
      out[key] = sortKeys((value as Record<string, unknown>)[key]);
    }
    return out;
  }
  return value as Json;
}

function typeName(field: protobuf.Field): string {
  // Resolved full name for message/enum references, so ".google.protobuf.X" and "google.protobuf.X" compare equal.
  return field.resolvedType ? shortName(field.resolvedType) : field.type;
}

function describeField(field: protobuf.Field): Json {
  const isMap = field instanceof protobuf.MapField;
  return sortKeys({
    name: field.name,
    id: field.id,
    type: typeName(field),
    rule: (field as unknown as { rule?: string }).rule ?? null,
    repeated: field.repeated,
    map: isMap,
    keyType: isMap ? (field as protobuf.MapField).keyType : null,
    optional: field.optional,
    required: field.required,
    packed: field.repeated && !isMap ? field.packed : null,
    oneof: field.partOf ? field.partOf.name : null,
    options: field.options ?? {},
    extend: field.extend
      ? field.extensionField?.parent
        ? shortName(field.extensionField.parent)
        : field.extend
      : null,
    ...edition(field),
  });
}

function describeMessage(type: protobuf.Type): Json {
  // Keyed by field name so a diff points straight at the offending field.
  const fields: Record<string, Json> = {};
  for (const field of type.fieldsArray) {
    fields[field.name] = describeField(field);
  }
  const oneofs: Record<string, string[]> = {};
  for (const oneof of type.oneofsArray) {
    oneofs[oneof.name] = [...oneof.oneof].sort();
  }
  return sortKeys({
    kind: "message",
    ...edition(type),
    options: type.options ?? {},
    reserved: type.reserved ?? [],
    extensions: type.extensions ?? [],
    fields,
    oneofs,
  });
}

function describeEnum(en: protobuf.Enum): Json {
  return sortKeys({
    kind: "enum",
    ...edition(en),
    options: en.options ?? {},
    values: en.values,
    valuesOptions: en.valuesOptions ?? {},
    reserved: en.reserved ?? [],
  });
}

function describeService(service: protobuf.Service): Json {
  const methods: Record<string, unknown> = {};
  for (const method of service.methodsArray) {
    methods[method.name] = {
      type: method.type,
      requestType: method.resolvedRequestType ? shortName(method.resolvedRequestType) : method.requestType,
      responseType: method.resolvedResponseType
        ? shortName(method.resolvedResponseType)
        : method.responseType,
      requestStream: method.requestStream ?? false,
      responseStream: method.responseStream ?? false,
      options: method.options ?? {},
    };
  }
  return sortKeys({ kind: "service", ...edition(service), options: service.options ?? {}, methods });
}

function collect(root: protobuf.Root): Map<string, Json> {
  const pkg = root.lookup(PACKAGE);
  if (!(pkg instanceof protobuf.Namespace)) throw new Error(`package ${PACKAGE} not found`);
  const out = new Map<string, Json>();
  out.set(shortName(pkg), sortKeys({ kind: "package", options: pkg.options ?? {} }));
  const walk = (ns: protobuf.Namespace): void => {
    for (const obj of ns.nestedArray) {
      if (obj instanceof protobuf.Type) {
        out.set(shortName(obj), describeMessage(obj));
        walk(obj);
      } else if (obj instanceof protobuf.Service) {
        out.set(shortName(obj), describeService(obj));
      } else if (obj instanceof protobuf.Enum) {
        out.set(shortName(obj), describeEnum(obj));
      } else if (obj instanceof protobuf.Field) {
        out.set(shortName(obj), sortKeys({ kind: "extension", field: describeField(obj) }));
      } else if (obj instanceof protobuf.Namespace) {
        out.set(shortName(obj), sortKeys({ kind: "namespace", options: obj.options ?? {} }));
        walk(obj);
      } else {
        out.set(shortName(obj), sortKeys({ kind: `unknown:${obj.constructor.name}` }));
      }
    }
  };
  walk(pkg);
  return out;
}

function kindOf(desc: Json | undefined): string | undefined {
  return desc && typeof desc === "object" && !Array.isArray(desc) ? (desc["kind"] as string) : undefined;
}

// ---------------------------------------------------------------------------------------------------------

const ours = collect(loadRoot(ourProtoPath));
const theirs = official.path ? collect(loadRoot(official.path)) : new Map<string, Json>();
const allNames = [...new Set([...ours.keys(), ...theirs.keys()])].sort();

describe(`proto/csi.proto matches the official CSI ${CSI_VERSION} csi.proto`, () => {
  it.skipIf(!official.path)("has the same file header (syntax, package, imports, go_package)", () => {
    const mineSource = readFileSync(ourProtoPath, "utf8");
    const specSource = readFileSync(official.path!, "utf8");
    const syntaxOf = (src: string) => /^\s*syntax\s*=\s*"([^"]+)"\s*;/m.exec(src)?.[1];
    expect(syntaxOf(mineSource)).toBe("proto3");
    expect(syntaxOf(mineSource)).toBe(syntaxOf(specSource));
    const mine = protobuf.parse(mineSource, { keepCase: true });
    const spec = protobuf.parse(specSource, { keepCase: true });
    expect(mine.package).toBe(PACKAGE);
    expect(mine.package).toBe(spec.package);
    expect([...(mine.imports ?? [])].sort()).toEqual([...(spec.imports ?? [])].sort());
    expect([...(mine.imports ?? [])].sort()).toEqual([
      "google/protobuf/descriptor.proto",
      "google/protobuf/timestamp.proto",
      "google/protobuf/wrappers.proto",
    ]);
    expect(mine.weakImports ?? []).toEqual(spec.weakImports ?? []);
    // File-level options (go_package) land on the package namespace.
    expect(ours.get(PACKAGE)).toEqual(theirs.get(PACKAGE));
    expect(ours.get(PACKAGE)).toEqual({
      kind: "package",
      options: { go_package: "github.com/container-storage-interface/spec/lib/go/csi" },
    });
  });

  it.skipIf(!official.path)("declares exactly the same definitions (nothing missing, nothing extra)", () => {
    const missing = [...theirs.keys()].filter((name) => !ours.has(name)).sort();
    const extra = [...ours.keys()].filter((name) => !theirs.has(name)).sort();
    expect({ missing, extra }).toEqual({ missing: [], extra: [] });
    // Sanity: guard against a vacuous comparison.
    const kinds = (m: Map<string, Json>) => {
      const count: Record<string, number> = {};
      for (const d of m.values()) {
        const k = kindOf(d) ?? "?";
        count[k] = (count[k] ?? 0) + 1;
      }
      return count;
    };
    expect(kinds(ours)).toEqual(kinds(theirs));
    expect(kinds(theirs)["service"]).toBe(5);
    expect(kinds(theirs)["extension"]).toBe(7);
    expect(kinds(theirs)["message"]).toBeGreaterThan(90);
  });

  it.skipIf(!official.path)("has the five CSI services", () => {
    for (const svc of ["Identity", "Controller", "GroupController", "SnapshotMetadata", "Node"]) {
      expect(kindOf(ours.get(`${PACKAGE}.${svc}`)), svc).toBe("service");
    }
  });

  it.skipIf(!official.path).each(allNames)("definition %s is identical", (name) => {
    expect(ours.has(name), `${name} missing from proto/csi.proto`).toBe(true);
    expect(theirs.has(name), `${name} is not in the official csi.proto`).toBe(true);
    expect(ours.get(name)).toEqual(theirs.get(name));
  });
});

describe("proto/csi.proto loads with @grpc/proto-loader and @grpc/grpc-js", () => {
  it("exposes the Identity, Controller and Node service constructors", () => {
    const definition = protoLoader.loadSync(ourProtoPath, {
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition);
    const csi = loaded["csi"] as grpc.GrpcObject;
    const v1 = csi["v1"] as grpc.GrpcObject;

    const expected: Record<string, string[]> = {
      Identity: ["GetPluginInfo", "GetPluginCapabilities", "Probe"],
      Controller: ["CreateVolume", "DeleteVolume", "ControllerPublishVolume", "ControllerModifyVolume"],
      Node: ["NodeStageVolume", "NodePublishVolume", "NodeGetInfo", "NodeExpandVolume"],
    };
    for (const [svc, methods] of Object.entries(expected)) {
      const ctor = v1[svc] as grpc.ServiceClientConstructor;
      expect(typeof ctor, svc).toBe("function");
      expect(ctor.serviceName).toBe(svc);
      for (const m of methods) {
        expect(ctor.service[m]?.path).toBe(`/${PACKAGE}.${svc}/${m}`);
      }
    }
    const streaming = (v1["SnapshotMetadata"] as grpc.ServiceClientConstructor).service;
    expect(streaming["GetMetadataDelta"]?.responseStream).toBe(true);
    expect(streaming["GetMetadataDelta"]?.requestStream).toBe(false);
  });
});

describe("proto/csi.json: the descriptor the driver loads instead of parsing proto/csi.proto", () => {
  it("is what scripts/proto-json.ts writes from proto/csi.proto (run it after editing the .proto)", () => {
    expect(readFileSync(CSI_JSON_PATH, "utf8")).toBe(csiDescriptorJson());
  });

  it("serves every method of proto-loader's services, on the same paths", () => {
    const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(ourProtoPath, { keepCase: true }));
    const v1 = (loaded["csi"] as grpc.GrpcObject)["v1"] as grpc.GrpcObject;
    const services = csiServiceDefinitions();
    for (const name of ["Identity", "Controller", "Node", "GroupController"] as const) {
      const theirs = (v1[name] as grpc.ServiceClientConstructor).service;
      const mine = services[name];
      expect(Object.keys(mine).sort(), name).toEqual(Object.keys(theirs).sort());
      for (const [method, def] of Object.entries(theirs)) {
        expect(mine[method]!.path).toBe(def.path);
        expect(mine[method]!.originalName).toBe(def.originalName);
      }
    }
  });

  it("encodes and decodes as proto-loader does with the driver's options (enums as names, int64 as numbers, defaults, oneofs)", () => {
    const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
    const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(ourProtoPath, options));
    const theirs = ((loaded["csi"] as grpc.GrpcObject)["v1"] as grpc.GrpcObject)[
      "Controller"
    ] as grpc.ServiceClientConstructor;
    const mine = csiServiceDefinitions().Controller;
    const request = {
      name: "pvc-1",
      capacity_range: { required_bytes: 5 * 1024 ** 4 + 1 },
      volume_capabilities: [{ access_mode: { mode: "MULTI_NODE_MULTI_WRITER" }, block: {} }],
      parameters: { type: "gp3" },
      volume_content_source: { snapshot: { snapshot_id: "snap-1" } },
      accessibility_requirements: {
        preferred: [{ segments: { "topology.kubernetes.io/zone": "us-east-1a" } }],
      },
    };
    const bytes = mine["CreateVolume"]!.requestSerialize(request);
    expect(bytes.equals(theirs.service["CreateVolume"]!.requestSerialize(request))).toBe(true);
    const decoded = mine["CreateVolume"]!.requestDeserialize(bytes);
    expect(decoded).toEqual(theirs.service["CreateVolume"]!.requestDeserialize(bytes));
    expect(decoded).toMatchObject({ ...request, volume_content_source: { type: "snapshot" } });
    const reply = {
      volume: { volume_id: "vol-1", capacity_bytes: 2 ** 40, accessible_topology: [], content_source: null },
    };
    const replyBytes = mine["CreateVolume"]!.responseSerialize(reply);
    expect(replyBytes.equals(theirs.service["CreateVolume"]!.responseSerialize(reply))).toBe(true);
    expect(mine["CreateVolume"]!.responseDeserialize(replyBytes)).toEqual(
      theirs.service["CreateVolume"]!.responseDeserialize(replyBytes),
    );
  });
});

/** Each volume Controller call's request and response, every message field set, to and from bytes. */
function volumeCallsRoundTrip(controller: CsiServiceDefinition): void {
  const topology = [{ segments: { "topology.kubernetes.io/zone": "us-east-1a" } }];
  const capability = {
    access_mode: { mode: "SINGLE_NODE_WRITER" },
    mount: { fs_type: "ext4", mount_flags: ["noatime"] },
  };
  const calls: Record<string, [object, object]> = {
    CreateVolume: [
      {
        name: "pvc-1",
        capacity_range: { required_bytes: 1, limit_bytes: 2 },
        volume_capabilities: [capability, { access_mode: { mode: "MULTI_NODE_MULTI_WRITER" }, block: {} }],
        parameters: { type: "gp3" },
        secrets: { a: "b" },
        volume_content_source: { volume: { volume_id: "vol-2" } },
        accessibility_requirements: { requisite: topology, preferred: topology },
        mutable_parameters: { iops: "3000" },
      },
      {
        volume: {
          volume_id: "vol-1",
          capacity_bytes: 1,
          volume_context: { a: "b" },
          accessible_topology: topology,
          content_source: { snapshot: { snapshot_id: "snap-1" } },
        },
      },
    ],
    DeleteVolume: [{ volume_id: "vol-1", secrets: { a: "b" } }, {}],
    ControllerPublishVolume: [
      {
        volume_id: "vol-1",
        node_id: "i-1",
        volume_capability: capability,
        readonly: false,
        secrets: {},
        volume_context: { a: "b" },
      },
      { publish_context: { devicePath: "/dev/xvdaa" } },
    ],
    ControllerUnpublishVolume: [{ volume_id: "vol-1", node_id: "i-1", secrets: {} }, {}],
  };
  for (const [method, [request, response]] of Object.entries(calls)) {
    const m = controller[method]!;
    m.requestDeserialize(m.requestSerialize(request));
    m.responseDeserialize(m.responseSerialize(response));
  }
}

describe("prepareControllerMessages: a controller's first volume calls build no message types", () => {
  it("builds, when asked, every type the volume calls' messages reach; the calls then build none", async () => {
    vi.resetModules();
    const proto = await import("../../src/csi/proto.ts");
    const setup = vi.spyOn(protobuf.Type.prototype, "setup");
    try {
      proto.prepareControllerMessages();
      // Requests, responses and the types their fields name: capabilities, topology, sources...
      expect(setup.mock.calls.length).toBeGreaterThanOrEqual(15);
      setup.mockClear();
      volumeCallsRoundTrip(proto.csiServiceDefinitions().Controller);
      expect(setup).not.toHaveBeenCalled();
    } finally {
      setup.mockRestore();
    }
  });

  it("without it, the first calls build their types themselves (what the preparation saves them)", async () => {
    vi.resetModules();
    const proto = await import("../../src/csi/proto.ts");
    const setup = vi.spyOn(protobuf.Type.prototype, "setup");
    try {
      volumeCallsRoundTrip(proto.csiServiceDefinitions().Controller);
      expect(setup.mock.calls.length).toBeGreaterThanOrEqual(15);
    } finally {
      setup.mockRestore();
    }
  });
});
