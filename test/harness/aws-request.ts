// Recognises EC2 (AWS Query) and EFS (REST-JSON) calls on the wire and builds AWS-shaped answers.
import { randomUUID } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";

/** An HTTP answer held in memory, as moto gave it or as the proxy made it up. */
export interface WireResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export type AwsCall =
  | { service: "ec2"; action: string; params: URLSearchParams }
  | { service: "efs"; action: string; body: Record<string, unknown> };

const efsRoutes: [method: string, path: RegExp, action: string][] = [
  ["POST", /^\/2015-02-01\/file-systems$/, "CreateFileSystem"],
  ["GET", /^\/2015-02-01\/file-systems$/, "DescribeFileSystems"],
  ["PUT", /^\/2015-02-01\/file-systems\/[^/]+$/, "UpdateFileSystem"],
  ["DELETE", /^\/2015-02-01\/file-systems\/[^/]+$/, "DeleteFileSystem"],
  ["POST", /^\/2015-02-01\/access-points$/, "CreateAccessPoint"],
  ["GET", /^\/2015-02-01\/access-points$/, "DescribeAccessPoints"],
  ["DELETE", /^\/2015-02-01\/access-points\/[^/]+$/, "DeleteAccessPoint"],
  ["POST", /^\/2015-02-01\/mount-targets$/, "CreateMountTarget"],
  ["GET", /^\/2015-02-01\/mount-targets$/, "DescribeMountTargets"],
  ["DELETE", /^\/2015-02-01\/mount-targets\/[^/]+$/, "DeleteMountTarget"],
  ["GET", /^\/2015-02-01\/resource-tags\/[^/]+$/, "ListTagsForResource"],
  ["POST", /^\/2015-02-01\/resource-tags\/[^/]+$/, "TagResource"],
  ["DELETE", /^\/2015-02-01\/resource-tags\/[^/]+$/, "UntagResource"],
];

/** The EC2 or EFS call a request carries, or undefined for anything else (e.g. /moto-api/). */
export function recognizeCall(
  method: string,
  url: string,
  headers: IncomingHttpHeaders,
  body: Buffer,
): AwsCall | undefined {
  const path = url.split("?")[0] ?? "";
  if (path.startsWith("/2015-02-01/")) {
    const route = efsRoutes.find(([m, pattern]) => m === method && pattern.test(path));
    // Operations outside the table are still counted, under a readable name.
    const action = route?.[2] ?? `${method} ${path.replace(/\/(fs|fsap|fsmt)-[0-9a-f]+/g, "/{id}")}`;
    return { service: "efs", action, body: parseJsonObject(body) };
  }
  if (!String(headers["content-type"] ?? "").includes("application/x-www-form-urlencoded")) return undefined;
  const params = new URLSearchParams(body.toString());
  const action = params.get("Action");
  const scope = signingScope(headers);
  if (!action || (scope && scope.service !== "ec2")) return undefined;
  return { service: "ec2", action, params };
}

/** Region and service from the SigV4 credential scope: Credential=AKID/date/region/service/aws4_request. */
export function signingScope(headers: IncomingHttpHeaders): { region: string; service: string } | undefined {
  const match = /Credential=[^/]+\/\d+\/([^/]+)\/([^/]+)\//.exec(String(headers.authorization ?? ""));
  return match ? { region: match[1]!, service: match[2]! } : undefined;
}

function parseJsonObject(body: Buffer): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(body.toString() || "{}");
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** An error as the service itself would send it, so the AWS SDK maps it to an exception of that name. */
export function awsError(
  service: AwsCall["service"],
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
): WireResponse {
  const requestId = randomUUID();
  if (service === "ec2") {
    const xml =
      `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code>` +
      `<Message>${escapeXml(message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`;
    return { status, headers: { "content-type": "text/xml;charset=UTF-8" }, body: Buffer.from(xml) };
  }
  return {
    status,
    headers: {
      "content-type": "application/json",
      "x-amzn-errortype": code,
      "x-amzn-requestid": requestId,
    },
    body: Buffer.from(JSON.stringify({ ErrorCode: code, Message: message, ...extra })),
  };
}

export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export function throttlingError(call: AwsCall): WireResponse {
  return call.service === "ec2"
    ? awsError("ec2", 503, "RequestLimitExceeded", "Request limit exceeded.")
    : awsError("efs", 429, "ThrottlingException", "Rate exceeded");
}

export function internalError(call: AwsCall, detail = "An internal error has occurred."): WireResponse {
  return call.service === "ec2"
    ? awsError("ec2", 500, "InternalError", detail)
    : awsError("efs", 500, "InternalServerError", detail);
}

/** The <item> elements of a set, each whole (nested sets such as tagSet stay inside their item). */
export function topLevelItems(set: string): string[] {
  const items: string[] = [];
  const tag = /<item>|<\/item>|<item\/>/g;
  let depth = 0;
  let start = -1;
  for (const match of set.matchAll(tag)) {
    if (match[0] === "<item/>") continue;
    if (match[0] === "<item>") {
      if (depth === 0) start = match.index;
      depth++;
    } else if (--depth === 0) {
      items.push(set.slice(start, match.index + "</item>".length));
    }
  }
  return items;
}
