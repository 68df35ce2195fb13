/**
 * Writes proto/csi.json, the CSI descriptor the driver loads at start-up (protobufjs's JSON form
 * of proto/csi.proto), so that no .proto file is parsed on a node: parsing took tens of
 * milliseconds and the parser's memory. Only what encoding needs is kept: the csi.v1 messages,
 * enums and services, and the two google.protobuf messages they use; the field options CSI
 * declares (csi_secret, alpha_field, ...) are annotations that encoding never reads.
 * test/unit/proto.test.ts fails when proto/csi.json is not what this script writes.
 *
 *   node scripts/proto-json.ts          # rewrite proto/csi.json
 *   node scripts/proto-json.ts --print  # print it instead
 */
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const protobuf = require("protobufjs") as typeof import("protobufjs");

const REPO = fileURLToPath(new URL("..", import.meta.url));
export const CSI_JSON_PATH = path.join(REPO, "proto/csi.json");

type Namespace = { nested?: Record<string, Namespace>; fields?: Record<string, unknown>; options?: unknown };

/** The descriptor as proto/csi.json should hold it, as text. */
export function csiDescriptorJson(): string {
  const root = new protobuf.Root();
  const googleDir = path.dirname(require.resolve("protobufjs"));
  root.resolvePath = (origin, target) =>
    target.startsWith("google/") ? path.join(googleDir, target) : path.resolve(path.dirname(origin), target);
  root.loadSync(path.join(REPO, "proto/csi.proto"), { keepCase: true });
  const json = root.toJSON() as Namespace;
  const nested = json.nested!;
  const google = nested.google!.nested!.protobuf!.nested!;
  const keep = ["Timestamp", "BoolValue", "Int64Value", "StringValue"].filter((n) => google[n]);
  nested.google = { nested: { protobuf: { nested: Object.fromEntries(keep.map((n) => [n, google[n]!])) } } };
  const v1 = nested.csi!.nested!.v1!;
  v1.nested = Object.fromEntries(Object.entries(v1.nested!).filter(([, t]) => !("extend" in t)));
  delete v1.options;
  return `${JSON.stringify(strip(json))}\n`;
}

/** Drops every `options` (annotations): what is left is what encoding needs. */
function strip(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(strip);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value)
      .filter(([k]) => k !== "options" && k !== "comment")
      .map(([k, v]) => [k, strip(v)]),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = csiDescriptorJson();
  if (process.argv.includes("--print")) process.stdout.write(text);
  else writeFileSync(CSI_JSON_PATH, text);
}
