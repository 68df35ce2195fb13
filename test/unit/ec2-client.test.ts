import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { DeleteVolumeCommand, EC2Client } from "@aws-sdk/client-ec2";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { awsClientConfig } from "../../src/aws/sdk.ts";
import { createEc2 } from "../../src/ebs/ec2-client.ts";
import { createLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";

// EKS Pod Identity's agent, played by a local server: the SDK's default chain asks the URL in
// AWS_CONTAINER_CREDENTIALS_FULL_URI once nothing before it (environment, shared files, web
// identity) has credentials.
const POD_KEY = "AKIAPODIDENTITY00001";
let credentialsServer: Server;
let credentialRequests = 0;
let ec2Server: Server;
let ec2Url: string;
/** The access key each EC2 request was signed with. */
let signedWith: string[] = [];

const answerXml = (action: string) =>
  `<${action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId>` +
  `<return>true</return></${action}Response>`;

const listen = async (server: Server) => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
};

const ENV_NAMES = [
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
  "AWS_SESSION_TOKEN",
  "AWS_PROFILE",
  "AWS_WEB_IDENTITY_TOKEN_FILE",
  "AWS_ROLE_ARN",
  "AWS_SHARED_CREDENTIALS_FILE",
  "AWS_CONFIG_FILE",
  "AWS_CONTAINER_CREDENTIALS_FULL_URI",
  "AWS_EC2_METADATA_DISABLED",
];
const savedEnv = new Map(ENV_NAMES.map((name) => [name, process.env[name]]));

beforeAll(async () => {
  credentialsServer = createServer((_req, res) => {
    credentialRequests++;
    const expiration = new Date(Date.now() + 3_600_000).toISOString();
    res.writeHead(200, { "content-type": "application/json" }).end(
      JSON.stringify({
        AccessKeyId: POD_KEY,
        SecretAccessKey: "pod-secret",
        Token: "pod-token",
        Expiration: expiration,
      }),
    );
  });
  const credentialsUrl = await listen(credentialsServer);
  ec2Server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      signedWith.push(/Credential=([^/]+)\//.exec(req.headers.authorization ?? "")?.[1] ?? "unsigned");
      const action = new URLSearchParams(Buffer.concat(chunks).toString()).get("Action") ?? "Unknown";
      res.writeHead(200, { "content-type": "text/xml" }).end(answerXml(action));
    });
  });
  ec2Url = await listen(ec2Server);
  for (const name of ENV_NAMES) delete process.env[name];
  process.env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/aws-credentials";
  process.env["AWS_CONFIG_FILE"] = "/nonexistent/aws-config";
  process.env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = `${credentialsUrl}/v1/credentials`;
  process.env["AWS_EC2_METADATA_DISABLED"] = "true";
});

afterAll(async () => {
  for (const [name, value] of savedEnv) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await Promise.all(
    [credentialsServer, ec2Server].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
  );
});

beforeEach(() => {
  credentialRequests = 0;
  signedWith = [];
});

describe("createEc2: one credential source for the clients of every API action", () => {
  it("fetches credentials once for the first calls of two actions, and signs both with them", async () => {
    const { ec2, close } = createEc2({
      region: "us-east-1",
      endpoint: ec2Url,
      batching: false,
      batchWindowMs: 0,
      metrics: createMetrics("aws_ebs_csi"),
      log: createLogger("silent"),
    });
    try {
      // Two actions, so two SDK clients (one per action), both sending before any credentials came.
      await Promise.all([
        ec2.deleteVolume("vol-0123456789abcdef0"),
        ec2.deleteSnapshot("snap-0123456789abcdef0"),
      ]);
    } finally {
      close();
    }
    expect(signedWith).toEqual([POD_KEY, POD_KEY]);
    expect(credentialRequests).toBe(1);
  });

  it("each client with the SDK's chain of its own would fetch them once per client", async () => {
    const clients = [0, 1].map(
      () => new EC2Client(awsClientConfig({ region: "us-east-1", endpoint: ec2Url })),
    );
    try {
      for (const client of clients)
        await client.send(new DeleteVolumeCommand({ VolumeId: "vol-0123456789abcdef0" }));
    } finally {
      for (const client of clients) client.destroy();
    }
    expect(signedWith).toEqual([POD_KEY, POD_KEY]);
    expect(credentialRequests).toBe(2);
  });
});
