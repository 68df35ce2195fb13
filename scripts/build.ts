/**
 * npm run build: the driver as the image runs it, in dist/. esbuild bundles src/ with its
 * dependencies into ES modules: main.js, the two helper processes' entries
 * (describe-instance-type.js, usage-walk-child.js), the image's compile cache filler
 * (fill-compile-cache.js) and the chunks they share, all in one directory
 * (the helpers are found beside the chunk that starts them). Each mode loads only its own chunks:
 * a node plugin never reads the controller's or the AWS SDK's code. Nothing in node_modules is
 * needed at run time.
 *
 *   node scripts/build.ts [outdir]     # default: dist
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type BuildOptions, build, type Metafile, type Plugin } from "esbuild";
import { launchFlagsByMode } from "../src/v8-flags.ts";

const REPO = fileURLToPath(new URL("..", import.meta.url));

/**
 * Entry points built on their own, sharing no chunk: the image's entry point (main.js) and its
 * compile cache filler each set V8's flags before anything of the driver loads (see buildDriver).
 */
export const STANDALONE = ["src/main.ts", "src/fill-compile-cache.ts"];

export const ENTRY_POINTS = [
  ...STANDALONE,
  "src/cli.ts",
  "src/ebs/describe-instance-type.ts",
  "src/efs/usage-walk-child.ts",
];

/**
 * An ES module import of node:http or node:https makes Node read every export of the module, and
 * their WebSocket getters load undici (fetch): about 20 ms and several MiB in every plugin that
 * imports them this way, as the AWS SDK and the driver itself do. The bundle gets them from
 * process.getBuiltinModule instead, with the same named exports, getters left out (static and
 * dynamic imports alike); test/unit/bundle.test.ts checks that no undici is loaded. require()
 * does not make a facade and is left as it is.
 */
const builtinsWithoutUndici: Plugin = {
  name: "builtins-without-undici",
  setup(b) {
    b.onResolve({ filter: /^(node:)?https?$/ }, (args) =>
      args.kind === "import-statement" || args.kind === "dynamic-import"
        ? { path: args.path.replace(/^node:/, ""), namespace: "builtin-facade" }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "builtin-facade" }, (args) => {
      const id = `node:${args.path}`;
      const mod = process.getBuiltinModule(id) as Record<string, unknown>;
      const names = Object.keys(mod).filter(
        (k) =>
          /^[A-Za-z_$][\w$]*$/.test(k) && typeof Object.getOwnPropertyDescriptor(mod, k)?.get !== "function",
      );
      return {
        contents:
          `const m = process.getBuiltinModule(${JSON.stringify(id)});\n` +
          `export default m;\nexport const { ${names.join(", ")} } = m;\n`,
        loader: "js",
      };
    });
  },
};

/**
 * The AWS SDK's clients describe every shape of their service as arrays in one module
 * (dist-es/schemas/schemas_0.js: 2,200 structures of EC2's, most of them for actions the driver
 * never calls). Their traits are objects with computed keys, `{ [_xN]: "Min" }`, where `_xN` is a
 * string constant of the module; esbuild cannot tell a computed key is free of side effects, so it
 * kept every schema with one: 800 KB of source, parsed and built into arrays at start-up in every
 * controller. This writes the constant itself as the key (`{ "xmlName": "Min" }`, the same object),
 * and the schemas no call reaches are left out of the bundle.
 */
export const literalSchemaKeys: Plugin = {
  name: "literal-schema-keys",
  setup(b) {
    b.onLoad(
      { filter: /[\\/]@aws-sdk[\\/]client-[^\\/]+[\\/]dist-es[\\/]schemas[\\/][^\\/]+\.js$/ },
      async (args) => {
        const text = await readFile(args.path, "utf8");
        const strings = new Map<string, string>();
        for (const m of text.matchAll(/^const (_\w+) = ("[^"\\\n]*");$/gm)) strings.set(m[1]!, m[2]!);
        const contents = text.replace(/([{,]\s*)\[(_\w+)\]:/g, (all, before: string, name: string) => {
          const value = strings.get(name);
          return value === undefined ? all : `${before}${value}:`;
        });
        return { contents, loader: "js" };
      },
    );
  },
};

/**
 * protobufjs takes long.js when it can find it, for 64-bit integers beyond 2^53. The driver asks
 * for every int64 as a JavaScript number (CONVERSION_OPTIONS in src/csi/proto.ts: `longs: Number`),
 * so long.js only converted to numbers what protobufjs can read as numbers itself (its own LongBits),
 * the same values; and long.js compiles a WebAssembly module as it loads, which cost every plugin
 * V8's WebAssembly compiler in memory. protobufjs is given none (its documented fallback).
 */
export const noLongJs: Plugin = {
  name: "no-long-js",
  setup(b) {
    b.onResolve({ filter: /^long$/ }, (args) =>
      /[\\/]protobufjs[\\/]/.test(args.importer) ? { path: "long", namespace: "no-long-js" } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "no-long-js" }, () => ({
      contents: "module.exports = null;\n",
      loader: "js",
    }));
  },
};

/** Builds the bundle; returns esbuild's metafile (which module went into which file, and their imports). */
export async function buildDriver(outdir = path.join(REPO, "dist")): Promise<Metafile> {
  const { version } = JSON.parse(readFileSync(path.join(REPO, "package.json"), "utf8")) as {
    version: string;
  };
  rmSync(outdir, { recursive: true, force: true });
  const common: BuildOptions & { metafile: true } = {
    absWorkingDir: REPO,
    metafile: true,
    outdir,
    entryNames: "[name]",
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node24",
    // ES module builds of the dependencies, where they have them: unused exports are left out.
    mainFields: ["module", "main"],
    // CommonJS dependencies (gRPC) call require() for Node's own modules.
    banner: {
      js: 'import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);',
    },
    define: {
      BUILD_VERSION: JSON.stringify(version),
      // main.js sets them before it loads anything of the driver (src/main.ts). A string: esbuild
      // would make an object its own module, shared with the chunks that use it.
      BUILD_LAUNCH_FLAGS: JSON.stringify(JSON.stringify(launchFlagsByMode())),
    },
    minifySyntax: true,
    minifyWhitespace: true,
    sourcemap: "linked",
    legalComments: "linked",
    logLevel: "warning",
  };
  const result = await build({
    ...common,
    entryPoints: ENTRY_POINTS.filter((e) => !STANDALONE.includes(e)),
    chunkNames: "[name]-[hash]",
    splitting: true,
    plugins: [builtinsWithoutUndici, literalSchemaKeys, noLongJs],
  });
  // main.js and fill-compile-cache.js each on its own, sharing no chunk (not even esbuild's
  // helpers): they set V8's flags before anything of the driver loads. Code loaded before them
  // kept V8's Maglev compiler in use (about 2 MiB more of the node binary in an idle controller),
  // and was compiled before the compile cache was on, so it never went into it.
  const launcher = await build({
    ...common,
    entryPoints: STANDALONE,
    splitting: false,
    plugins: [
      {
        name: "cli-beside",
        setup(b) {
          b.onResolve({ filter: /^\.\/cli\.ts$/ }, () => ({ path: "./cli.js", external: true }));
        },
      },
    ],
  });
  const metafile: Metafile = {
    inputs: { ...result.metafile.inputs, ...launcher.metafile.inputs },
    outputs: { ...result.metafile.outputs, ...launcher.metafile.outputs },
  };
  // Says the chunks are ES modules: without it (the image has no package.json) Node would find out
  // by parsing each one as CommonJS first, about 10 ms of every plugin's start-up.
  writeFileSync(path.join(outdir, "package.json"), '{ "type": "module" }\n');
  return metafile;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildDriver(process.argv[2] ? path.resolve(process.argv[2]) : undefined);
}
