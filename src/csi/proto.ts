import protobuf from "protobufjs/light.js";
import descriptor from "../../proto/csi.json" with { type: "json" };

/** How requests decode: proto field names, enums as names, int64 as numbers, defaults filled in. */
export const CONVERSION_OPTIONS = { longs: Number, enums: String, defaults: true, oneofs: true };

export type CsiServiceName = "Identity" | "Controller" | "Node" | "GroupController";

/**
 * One method of a csi.v1 service: its gRPC path and how its messages go to and from bytes. The
 * shape of @grpc/grpc-js's MethodDefinition, so test clients can be made from it; the driver's
 * own server (src/server/grpc.ts) needs no gRPC library.
 */
export interface CsiMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize: (value: object) => Buffer;
  requestDeserialize: (bytes: Buffer) => object;
  responseSerialize: (value: object) => Buffer;
  responseDeserialize: (bytes: Buffer) => object;
  originalName: string;
}

export type CsiServiceDefinition = Record<string, CsiMethod>;

let loaded: Record<CsiServiceName, CsiServiceDefinition> | undefined;

interface MethodJson {
  requestType: string;
  responseType: string;
  requestStream?: boolean;
  responseStream?: boolean;
}

/**
 * A csi.v1 entry of the descriptor, as JSON: a message or enum (fields with their type names,
 * nested types, values) or a service (methods).
 */
interface TypeJson {
  fields?: Record<string, { type: string; keyType?: string }>;
  nested?: Record<string, TypeJson>;
  values?: object;
  methods?: Record<string, MethodJson>;
}

const V1_JSON = descriptor.nested.csi.nested.v1.nested as unknown as Record<string, TypeJson>;

/**
 * The csi.v1 services by name, each a table of its methods, from proto/csi.json: the descriptor
 * scripts/proto-json.ts prepares from proto/csi.proto, so no .proto is parsed here. Messages
 * decode and encode as @grpc/proto-loader would with keepCase and CONVERSION_OPTIONS. Each message
 * type is set up at its first use: a plugin serves before it has built any.
 */
export function csiServiceDefinitions(): Record<CsiServiceName, CsiServiceDefinition> {
  if (!loaded) {
    const service = (name: CsiServiceName) => serviceDefinition(name, V1_JSON[name]!.methods!);
    loaded = {
      Identity: service("Identity"),
      Controller: service("Controller"),
      Node: service("Node"),
      GroupController: service("GroupController"),
    };
  }
  return loaded;
}

let root: protobuf.Root | undefined;
let v1: protobuf.Namespace | undefined;
const added = new Set<string>();

/**
 * Builds the message types the first calls use (Identity's) now rather than at the first call:
 * main runs this while it waits for instance metadata.
 */
export function prepareCsiMessages(): void {
  for (const name of [
    "ProbeRequest",
    "ProbeResponse",
    "GetPluginInfoResponse",
    "GetPluginCapabilitiesResponse",
  ])
    messageType(name).setup();
}

/**
 * The Controller calls of every volume's life. A provisioner sends them in bursts (its 100
 * workers at once), and the first call of a burst builds its message types (about 1 ms for
 * DeleteVolume's, 2 ms for CreateVolume's) before its request to EC2 leaves: every call of the
 * burst waits behind it.
 */
const CONTROLLER_VOLUME_CALLS = [
  "CreateVolume",
  "DeleteVolume",
  "ControllerPublishVolume",
  "ControllerUnpublishVolume",
];

/**
 * Builds the request and response types of the Controller calls every volume makes, with every
 * type their fields reach (protobufjs builds a type's code at its first use, its fields' types
 * at theirs): a controller runs this once it serves and has nothing else to do.
 */
export function prepareControllerMessages(): void {
  const methods = V1_JSON["Controller"]!.methods!;
  const done = new Set<protobuf.Type>();
  const setUp = (type: protobuf.Type) => {
    if (done.has(type)) return;
    done.add(type);
    type.setup(); // which resolves the fields' types
    for (const field of type.fieldsArray) {
      if (field.resolvedType instanceof protobuf.Type) setUp(field.resolvedType);
    }
  };
  for (const name of CONTROLLER_VOLUME_CALLS) {
    const method = methods[name]!;
    setUp(messageType(method.requestType));
    setUp(messageType(method.responseType));
  }
}

/**
 * A method's message type by its name relative to csi.v1. Types enter the root at their first use,
 * with the csi.v1 types their fields name: building all 97 from the descriptor took about 10 ms
 * of every plugin's start-up, and a node plugin never uses most of them.
 */
function messageType(name: string): protobuf.Type {
  if (!root || !v1) {
    root = protobuf.Root.fromJSON({ nested: { google: descriptor.nested.google } } as protobuf.INamespace);
    v1 = root.define("csi.v1");
  }
  addV1Type(name);
  return root.lookupType(`csi.v1.${name}`);
}

function addV1Type(name: string): void {
  if (added.has(name)) return;
  const json = V1_JSON[name];
  if (!json) return;
  added.add(name);
  v1!.add(
    json.values ? protobuf.Enum.fromJSON(name, json as never) : protobuf.Type.fromJSON(name, json as never),
  );
  // A field's type is a sibling in csi.v1 (or nested in one: its first part names the sibling),
  // a type nested in this one, or google.protobuf's: only siblings need adding.
  const walk = (t: TypeJson) => {
    for (const field of Object.values(t.fields ?? {})) addV1Type(field.type.split(".")[0] as string);
    for (const nested of Object.values(t.nested ?? {})) walk(nested);
  };
  walk(json);
}

function serviceDefinition(service: string, methods: Record<string, MethodJson>): CsiServiceDefinition {
  const definition: CsiServiceDefinition = {};
  for (const [name, method] of Object.entries(methods)) {
    definition[name] = {
      path: `/csi.v1.${service}/${name}`,
      requestStream: !!method.requestStream,
      responseStream: !!method.responseStream,
      requestSerialize: encoder(method.requestType),
      requestDeserialize: decoder(method.requestType),
      responseSerialize: encoder(method.responseType),
      responseDeserialize: decoder(method.responseType),
      originalName: name.charAt(0).toLowerCase() + name.slice(1),
    };
  }
  return definition;
}

function encoder(typeName: string): (value: object) => Buffer {
  let type: protobuf.Type | undefined;
  return (value) => {
    type ??= messageType(typeName);
    const bytes = type.encode(type.fromObject(value as Record<string, unknown>)).finish();
    // protobufjs writes a Buffer under Node: no copy then.
    return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function decoder(typeName: string): (bytes: Buffer) => object {
  let type: protobuf.Type | undefined;
  return (bytes) => {
    type ??= messageType(typeName);
    return type.toObject(type.decode(bytes), CONVERSION_OPTIONS);
  };
}
