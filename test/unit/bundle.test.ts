// The bundle npm run build makes (scripts/build.ts), as a node plugin loads it: main.js and what it
// imports, then the driver's chunk and the node service's chunk, each with what they import. A
// node plugin runs on every node, so it must not load the AWS SDK or the controller's code.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { build, type Metafile } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDriver, literalSchemaKeys } from "../../scripts/build.ts";

const out = mkdtempSync(join(tmpdir(), "bundle-test-"));
let meta: Metafile;

beforeAll(async () => {
  meta = await buildDriver(out);
}, 120_000);
afterAll(() => rmSync(out, { recursive: true, force: true }));

/** The output file a module's dynamic import() loads, by the module's source path. */
function chunkOf(source: string): string {
  const found = Object.entries(meta.outputs).find(([, o]) => o.entryPoint === source);
  if (!found) throw new Error(`no output file starts at ${source}`);
  return found[0];
}

/** The source modules in these output files and every file they import statically (loaded with them). */
function loadedWith(files: string[]): Set<string> {
  const seen = new Set<string>();
  const pending = [...files];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const i of meta.outputs[file]!.imports)
      if (i.kind === "import-statement" && !i.external) pending.push(i.path);
  }
  return new Set([...seen].flatMap((f) => Object.keys(meta.outputs[f]!.inputs)));
}

const main = () => relative(process.cwd(), join(out, "main.js"));
const FORBIDDEN =
  /@aws-sdk\/|@smithy\/|dataloader|src\/ebs\/(controller|ec2|snapshots|params)\.ts|src\/efs\/(controller|sdk)\.ts/;

describe("the bundle, as a node plugin loads it", () => {
  // What main loads once it has asked for instance metadata, whatever the driver.
  const SERVING = [
    "src/cli.ts",
    "src/server/server.ts",
    "src/server/inflight.ts",
    "src/csi/identity.ts",
    "src/csi/proto.ts",
  ];

  it.each([
    ["ebs", ["src/ebs/driver.ts", "src/ebs/node.ts"]],
    ["efs", ["src/efs/driver.ts", "src/efs/node.ts"]],
  ])("%s: no AWS SDK, no controller code", (_driver, dynamic) => {
    const modules = loadedWith([main(), ...[...SERVING, ...dynamic].map(chunkOf)]);
    expect([...modules].filter((m) => m.includes("src/csi/proto.ts"))).toHaveLength(1);
    expect([...modules].filter((m) => FORBIDDEN.test(m))).toEqual([]);
  });

  it("the controller's chunks do hold the EC2 client (the check above can see it)", () => {
    const modules = loadedWith([main(), chunkOf("src/ebs/driver.ts"), chunkOf("src/ebs/ec2-client.ts")]);
    expect([...modules].some((m) => m.includes("@aws-sdk/client-ec2"))).toBe(true);
  });

  it("main.js loads nothing of the driver before it sets V8's flags: Node's modules, then cli.js", () => {
    const text = readFileSync(join(out, "main.js"), "utf8");
    const staticImports = [...text.matchAll(/\bimport\s*(?:[\w{}\s,*]+from\s*)?["']([^"']+)["']/g)].map(
      (m) => m[1],
    );
    expect(staticImports.length).toBeGreaterThan(0);
    expect(staticImports.filter((i) => !i!.startsWith("node:"))).toEqual([]);
    expect(text).toMatch(/import\("\.\/cli\.js"\)/);
    expect(text).toContain('"--no-maglev"');
  });

  it("fills a compile cache per mode that a plugin of that mode accepts", () => {
    const cache = join(out, "compile-cache");
    const env = { ...process.env, CSI_COMPILE_CACHE: cache, NODE_COMPILE_CACHE: "" };
    for (const mode of ["node", "controller"]) {
      const fill = spawnSync(process.execPath, [join(out, "fill-compile-cache.js"), mode], {
        env,
        encoding: "utf8",
      });
      expect(fill.status, fill.stderr).toBe(0);
    }
    // One directory per set of V8 flags.
    expect(readdirSync(cache)).toHaveLength(2);
    for (const mode of ["node", "controller"]) {
      const r = spawnSync(process.execPath, [join(out, "main.js"), "--mode", mode, "--version"], {
        env: { ...env, NODE_DEBUG_NATIVE: "COMPILE_CACHE" },
        encoding: "utf8",
      });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/V8 code cache for ESM file:\S*\/cli\.js was accepted/);
      // Every module it loads is in the cache (none compiled before the cache was on, and missed).
      expect(r.stderr).not.toMatch(/was rejected|not initialized/);
    }
    const wrong = spawnSync(process.execPath, [join(out, "fill-compile-cache.js"), "all"], {
      env,
      encoding: "utf8",
    });
    expect(wrong.status).toBe(2);
    expect(wrong.stderr).toContain('the mode must be node or controller, not "all"');
  });

  it("holds no gRPC library (the driver serves gRPC itself) and no .proto parser", () => {
    const all = Object.keys(meta.inputs);
    expect(all.filter((m) => m.includes("@grpc/") || /protobufjs\/src\/parse\.js/.test(m))).toEqual([]);
    // Nor long.js (scripts/build.ts, noLongJs): every int64 is read as a number.
    expect(all.filter((m) => /node_modules\/long\//.test(m))).toEqual([]);
  });

  it("loads node:http and node:https without undici (fetch), which an ES import of them would load", () => {
    const probe = join(out, "undici-probe.mjs");
    writeFileSync(
      probe,
      'process.on("exit", () => process.stderr.write("undici=" + process.moduleLoadList.some((m) => m.includes("undici")) + "\\n"));\n',
    );
    const r = spawnSync(process.execPath, ["--import", probe, join(out, "main.js"), "--version"], {
      encoding: "utf8",
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("undici=false");
  });
});

describe("the AWS SDK's schemas in the bundle", () => {
  const SCHEMAS = "node_modules/@aws-sdk/client-ec2/dist-es/schemas/schemas_0.js";

  it("keep only the EC2 shapes the driver's calls reach", () => {
    const kept = Object.values(meta.outputs).find((o) => o.inputs[SCHEMAS]);
    expect(kept, "no output file holds the EC2 schemas").toBeDefined();
    // A shape of an action the driver never calls, and a shape of one it does.
    expect(
      Object.keys(meta.outputs).some(
        (f) => f.endsWith(".js") && readOut(f).includes("AcceptAddressTransferRequest$"),
      ),
    ).toBe(false);
    expect(
      Object.keys(meta.outputs).some((f) => f.endsWith(".js") && readOut(f).includes("CreateVolumeRequest$")),
    ).toBe(true);
    // All of them came to about 800 KB.
    expect(kept!.inputs[SCHEMAS]!.bytesInOutput).toBeLessThan(200_000);
  });

  it("are the same values with their keys written out (every schema of EC2 compared)", async () => {
    const bundle = async (plugins: (typeof literalSchemaKeys)[], file: string) => {
      await build({
        absWorkingDir: process.cwd(),
        stdin: { contents: `export * from "./${SCHEMAS}";`, resolveDir: process.cwd() },
        bundle: true,
        format: "esm",
        platform: "node",
        outfile: join(out, file),
        plugins,
        logLevel: "error",
      });
      return (await import(join(out, file))) as Record<string, unknown>;
    };
    const [asIs, written] = await Promise.all([
      bundle([], "schemas-as-is.mjs"),
      bundle([literalSchemaKeys], "schemas-written.mjs"),
    ]);
    const names = Object.keys(asIs);
    expect(names.length).toBeGreaterThan(3000);
    expect(Object.keys(written)).toEqual(names);
    for (const name of names) expect(sameSchema(asIs[name], written[name]), name).toBe(true);
  }, 120_000);
});

function readOut(file: string): string {
  return readFileSync(file, "utf8");
}

/** Deep equality of two schema values; a function (a lazy reference to another schema) is compared by what it returns. */
function sameSchema(a: unknown, b: unknown, seen = new Map<unknown, unknown>()): boolean {
  if (typeof a === "function" && typeof b === "function") {
    if (seen.get(a) === b) return true;
    seen.set(a, b);
    return sameSchema((a as () => unknown)(), (b as () => unknown)(), seen);
  }
  if (typeof a !== "object" || a === null || typeof b !== "object" || b === null) return Object.is(a, b);
  if (seen.get(a) === b) return true;
  seen.set(a, b);
  if (Array.isArray(a) !== Array.isArray(b) || a.constructor?.name !== b.constructor?.name) return false;
  // An instance of the SDK's classes (the error type registry): each bundle has its own copy of
  // the class, and the instance holds no schema of its own.
  if (!Array.isArray(a) && Object.getPrototypeOf(a) !== Object.prototype) return true;
  const keys = Object.keys(a);
  if (keys.join() !== Object.keys(b).join()) return false;
  return keys.every((k) =>
    sameSchema((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], seen),
  );
}
