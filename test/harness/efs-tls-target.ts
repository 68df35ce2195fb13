// Stand-ins for a file system's EFS mount targets, for the driver's TLS relay: a TLS server on each
// mount target's address and port 2049, as DescribeMountTargets gives them, with a certificate for
// *.efs.<region>.amazonaws.com from a test CA (the driver trusts it through --efs-tls-ca-file).
//
// The EC2 network is the part simulated: each mount target's address is put on the loopback
// interface (`ip addr add <ip>/32 dev lo`, removed again by stop), so the relay reaches it by the
// address AWS gave. What arrives through the relay is a line from fake-mount-nfs4.ts, `MOUNT
// <path>`, standing in for the NFS client's first requests; the target reads who the client is
// from its certificate (efs-utils' extensions: file system, access point, iam) and answers `OK
// <local directory>` or `ERR <what mount.nfs4 would print>`.

import { createServer as createTcpServer, type Server as NetServer } from "node:net";
import type { TLSSocket } from "node:tls";
import { createServer as createTlsServer } from "node:tls";
import { DescribeMountTargetsCommand, EFSClient } from "@aws-sdk/client-efs";
import { EFS_EXTENSION } from "../../src/efs/tls/client-certificate.ts";
import { run } from "../../src/host/exec.ts";
import type { FakeAws } from "./fake-aws.ts";
import { exportedDirectory, MountFailure } from "./fake-efs-server.ts";
import { extensionText, hasExtension, makeCa, type TestCa } from "./test-ca.ts";

/** One connection a mount target accepted: who the client certificate says it is. */
export interface TargetConnection {
  address: string;
  fileSystemId: string | undefined;
  accessPointId: string | undefined;
  /** The certificate carried efs-utils' iam client authentication. */
  iam: boolean;
  /** The TLS server name the client asked for (SNI). */
  serverName: string | undefined;
  /** The client certificate's serial number (hex): a renewed certificate has another. */
  certificateSerial: string | undefined;
  /** The MOUNT request's path, if one came. */
  path?: string;
}

export interface EfsTlsTargets {
  /** The CA the targets' certificates chain to, PEM: give it to the driver (--efs-tls-ca-file). */
  caFile: string;
  ca: TestCa;
  /** The mount targets' addresses, now on the loopback interface. */
  addresses: string[];
  connections: TargetConnection[];
  stop(): Promise<void>;
}

export interface EfsTlsTargetsOptions {
  aws: FakeAws;
  fileSystemId: string;
  /** Served file systems: ROOT/<fs-id> (the fake mount helpers' root). */
  root: string;
  /** For the CA's files. */
  dir: string;
  /** A certificate for another name than the file system's (to see it refused). */
  certificateName?: string;
  /** Plain TCP servers that close what they cannot read, as an NFS server without TLS would. */
  plain?: boolean;
}

export async function startEfsTlsTargets(o: EfsTlsTargetsOptions): Promise<EfsTlsTargets> {
  const ca = await makeCa(o.dir, "efs-targets");
  const pem = await ca.sign(o.certificateName ?? `*.efs.${o.aws.region}.amazonaws.com`);
  const mountTargets =
    (await o.aws.efs.send(new DescribeMountTargetsCommand({ FileSystemId: o.fileSystemId }))).MountTargets ??
    [];
  const efs = new EFSClient({
    region: o.aws.region,
    endpoint: o.aws.endpoint,
    credentials: { accessKeyId: "testing", secretAccessKey: "testing" },
  });
  const connections: TargetConnection[] = [];
  const servers: NetServer[] = [];
  const open = new Set<TLSSocket>();
  const addresses: string[] = [];
  const stop = async () => {
    for (const server of servers) server.close();
    for (const socket of open) socket.destroy();
    for (const address of addresses.splice(0)) {
      await run("ip", ["addr", "del", `${address}/32`, "dev", "lo"]).catch(() => undefined);
    }
    efs.destroy();
  };
  try {
    for (const target of mountTargets) {
      const address = target.IpAddress;
      if (!address) continue;
      const shown = (await run("ip", ["-o", "addr", "show", "dev", "lo"])).stdout;
      if (shown.includes(` ${address}/`)) {
        throw new Error(`${address} is on the loopback interface already (another test's mount target?)`);
      }
      await run("ip", ["addr", "add", `${address}/32`, "dev", "lo"]);
      addresses.push(address);
      const server = o.plain
        ? createTcpServer((socket) => {
            socket.on("error", () => {});
            socket.once("data", () => socket.destroy());
          })
        : createTlsServer({ ...pem, requestCert: true, rejectUnauthorized: false }, (socket) =>
            serve(socket, address),
          );
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(2049, address, () => resolve());
      });
    }
  } catch (err) {
    await stop();
    throw err;
  }

  function serve(socket: TLSSocket, address: string): void {
    const peer = socket.getPeerX509Certificate();
    const seen: TargetConnection = {
      address,
      fileSystemId: peer && extensionText(peer.raw, EFS_EXTENSION.fileSystemId),
      accessPointId: peer && extensionText(peer.raw, EFS_EXTENSION.accessPoint),
      iam: peer !== undefined && hasExtension(peer.raw, EFS_EXTENSION.clientAuth),
      serverName: (socket as TLSSocket & { servername?: string | false }).servername || undefined,
      certificateSerial: peer?.serialNumber,
    };
    connections.push(seen);
    open.add(socket);
    socket.on("close", () => open.delete(socket));
    socket.on("error", () => {});
    let buffered = "";
    socket.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const end = buffered.indexOf("\n");
      if (end < 0) return;
      const request = /^MOUNT (\/.*)$/.exec(buffered.slice(0, end));
      buffered = "";
      if (!request) {
        socket.end("ERR mount.nfs4: the stand-in mount target understands only MOUNT <path>\n");
        return;
      }
      seen.path = request[1]!;
      answer(seen, request[1]!).then((line) => socket.write(`${line}\n`));
    });
  }

  async function answer(seen: TargetConnection, path: string): Promise<string> {
    if (seen.fileSystemId !== o.fileSystemId) {
      return `ERR mount.nfs4: access denied by server while mounting 127.0.0.1:${path} (certificate names ${seen.fileSystemId ?? "no file system"})`;
    }
    try {
      const dir = await exportedDirectory({
        root: o.root,
        efs,
        fileSystemId: seen.fileSystemId,
        accessPointId: seen.accessPointId,
        path,
        server: "127.0.0.1",
      });
      return `OK ${dir}`;
    } catch (err) {
      return `ERR ${err instanceof MountFailure ? err.message : String(err)}`;
    }
  }

  const caFile = `${o.dir}/efs-targets-ca.pem`;
  return { caFile, ca, addresses, connections, stop };
}
