import { type Client, credentials, makeClientConstructor, type ServiceError } from "@grpc/grpc-js";
import { csiServiceDefinitions } from "../../src/csi/proto.ts";

type Service = "Identity" | "Controller" | "GroupController" | "Node";
// biome-ignore lint/suspicious/noExplicitAny: responses are plain decoded protobuf objects.
export type Reply = any;

/** A CSI client over the driver's unix socket, as the sidecars and kubelet talk to it. */
export class CsiClient {
  readonly #clients: Record<Service, Client>;

  constructor(socketPath: string) {
    const definitions = csiServiceDefinitions();
    const address = `unix://${socketPath}`;
    const make = (s: Service) =>
      new (makeClientConstructor(definitions[s], s))(address, credentials.createInsecure());
    this.#clients = {
      Identity: make("Identity"),
      Controller: make("Controller"),
      GroupController: make("GroupController"),
      Node: make("Node"),
    };
  }

  /** Calls `service.method`; rejects with the gRPC ServiceError (code, details) on failure. */
  call(service: Service, method: string, request: object, timeoutMs = 120_000): Promise<Reply> {
    const client = this.#clients[service] as unknown as Record<
      string,
      (req: object, opts: object, cb: (err: ServiceError | null, res: Reply) => void) => void
    >;
    const fn = client[method];
    if (!fn) throw new Error(`${service} has no method ${method}`);
    return new Promise((resolve, reject) => {
      fn.call(client, request, { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(err) : resolve(res),
      );
    });
  }

  close(): void {
    for (const client of Object.values(this.#clients)) client.close();
  }
}

/** The gRPC error of a call that must fail; throws when it succeeds. */
export async function callFailure(promise: Promise<unknown>): Promise<ServiceError> {
  try {
    await promise;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error("expected the call to fail, it succeeded");
}
