import { fileURLToPath } from "node:url";
import { type GrpcObject, loadPackageDefinition, type ServiceClientConstructor } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";

/** How requests decode: proto field names, enums as names, int64 as numbers, defaults filled in. */
export const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

export const PROTO_PATH = fileURLToPath(new URL("../../proto/csi.proto", import.meta.url));

export interface CsiServices {
  Identity: ServiceClientConstructor;
  Controller: ServiceClientConstructor;
  Node: ServiceClientConstructor;
  GroupController: ServiceClientConstructor;
}

let loaded: CsiServices | undefined;

/** The csi.v1 services, loaded once from proto/csi.proto (used by the server and by test clients). */
export function csiServices(): CsiServices {
  if (!loaded) {
    const root = loadPackageDefinition(loadSync(PROTO_PATH, LOADER_OPTIONS));
    const v1 = (root.csi as GrpcObject).v1 as GrpcObject;
    loaded = {
      Identity: v1.Identity as ServiceClientConstructor,
      Controller: v1.Controller as ServiceClientConstructor,
      Node: v1.Node as ServiceClientConstructor,
      GroupController: v1.GroupController as ServiceClientConstructor,
    };
  }
  return loaded;
}
