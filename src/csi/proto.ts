import protobuf from "protobufjs/light.js";
import descriptor from "../../proto/csi.json" with { type: "json" };

/** How requests decode: proto field names, enums as names, int64 as numbers, defaults filled in. */
export const CONVERSION_OPTIONS = { longs: Number, enums: String, defaults: true, oneofs: true };

export type CsiServiceName = "Identity" | "Controller" | "Node" | "GroupController";
export const CSI_SERVICE_NAMES: readonly CsiServiceName[] = [
  "Identity",
  "Controller",
  "Node",
  "GroupController",
];

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
 * The csi.v1 services by name, each a table of its methods, from proto/csi.json: the descriptor
 * scripts/proto-json.ts prepares from proto/csi.proto, so no .proto is parsed here. Messages
 * decode and encode as @grpc/proto-loader would with keepCase and CONVERSION_OPTIONS. Each message
 * type is set up at its first use: a plugin serves before it has built any.
 */
export function csiServiceDefinitions(): Record<CsiServiceName, CsiServiceDefinition> {
  if (!loaded) {
    const v1 = descriptor.nested.csi.nested.v1.nested as unknown as Record<
      string,
      { methods?: Record<string, MethodJson> }
    >;
    const service = (name: CsiServiceName) => serviceDefinition(name, v1[name]!.methods!);
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

/**
 * Builds the message types now rather than at the first call (about 15 ms): main runs this while
 * it waits for instance metadata, so the first Probe is answered without the wait.
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
/** A method's message type by its name in the descriptor: relative to csi.v1, or fully qualified. */
function messageType(name: string): protobuf.Type {
  root ??= protobuf.Root.fromJSON(descriptor as protobuf.INamespace);
  return root.lookupType(name.includes(".") ? name.replace(/^\./, "") : `csi.v1.${name}`);
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
