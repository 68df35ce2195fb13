// Checks everything under deploy/ and the Dockerfile with the real tools: kustomize and Helm
// render, the kube-apiserver's own validation code judges every object (test/deploy/validate),
// hadolint lints the Dockerfile. scripts/install-deploy-tools.sh puts the tools in .cache/bin.
// A missing tool skips its tests with the reason printed, never passes them.
import { spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, posix, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it, type TestContext } from "vitest";
import { buildDriver, ENTRY_POINTS } from "../../scripts/build.ts";
import {
  parseCreateParameters,
  parseGroupSnapshotParameters,
  parseModifyParameters,
  parseSnapshotParameters,
} from "../../src/ebs/params.ts";
import { parseVolumeHandle } from "../../src/efs/handle.ts";
import { parseProvisioningParams } from "../../src/efs/params.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CHART = join(ROOT, "deploy/helm/aws-storage-csi");
const OVERLAYS = ["ebs", "efs", "both"] as const;
const OUR_IMAGE = "public.ecr.aws/aws-storage-csi/aws-storage-csi";
const NAMESPACE = "kube-system";
const INSTALL_HINT = "run scripts/install-deploy-tools.sh";

// biome-ignore lint/suspicious/noExplicitAny: rendered Kubernetes objects are free-form JSON
type K8sObject = Record<string, any>;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], options: { cwd?: string; timeoutMs?: number } = {}): Run {
  const r = spawnSync(cmd, args, {
    cwd: options.cwd ?? ROOT,
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
    timeout: options.timeoutMs ?? 120_000,
  });
  if (r.error) return { status: null, stdout: "", stderr: String(r.error) };
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const output = (r: Run) => `${r.stdout}\n${r.stderr}`.trim();

/** A tool from .cache/bin (or DEPLOY_TOOLS_BIN), else from PATH; undefined when neither has it. */
function findTool(name: string): string | undefined {
  const dirs = [
    process.env.DEPLOY_TOOLS_BIN ?? join(ROOT, ".cache/bin"),
    ...(process.env.PATH ?? "").split(delimiter),
  ];
  return dirs.map((d) => join(d, name)).find((p) => existsSync(p));
}

/** kustomize itself, else kubectl's built-in copy. */
function findKustomize(): string[] | undefined {
  const kustomize = findTool("kustomize");
  if (kustomize) return [kustomize, "build"];
  const kubectl = findTool("kubectl");
  return kubectl ? [kubectl, "kustomize"] : undefined;
}

const tools = {
  kustomize: findKustomize(),
  helm: findTool("helm"),
  validate: findTool("k8s-validate"),
  hadolint: findTool("hadolint"),
};
const missing = Object.entries(tools)
  .filter(([, path]) => !path)
  .map(([name]) => name);
if (missing.length > 0) {
  console.warn(`deploy tests: missing ${missing.join(", ")}; their tests are skipped (${INSTALL_HINT})`);
}

/** Skips the running test, with the reason in the report, unless every named tool is installed. */
function need(ctx: TestContext, ...names: (keyof typeof tools)[]): void {
  const absent = names.filter((n) => !tools[n]);
  if (absent.length > 0) ctx.skip(`${absent.join(", ")} not installed: ${INSTALL_HINT}`);
}

const work = mkdtempSync(join(tmpdir(), "deploy-test-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const rendered = new Map<string, string>();

/** Renders once and returns the path of the YAML file. */
function renderOnce(key: string, render: () => Run): string {
  const cached = rendered.get(key);
  if (cached) return cached;
  const r = render();
  if (r.status !== 0) throw new Error(`rendering ${key} failed:\n${output(r)}`);
  const file = join(work, `${key.replace(/[^a-z0-9]+/gi, "-")}.yaml`);
  writeFileSync(file, r.stdout);
  rendered.set(key, file);
  return file;
}

function renderOverlay(overlay: string): string {
  const [cmd, ...args] = tools.kustomize!;
  return renderOnce(`kustomize-${overlay}`, () =>
    run(cmd!, [...args, join(ROOT, "deploy/kubernetes/overlays", overlay)]),
  );
}

const valuesFiles = readdirSync(join(CHART, "ci"))
  .filter((f) => f.endsWith(".yaml"))
  .sort();

function renderChart(valuesFile?: string): string {
  const values = valuesFile ? ["--values", join(CHART, "ci", valuesFile)] : [];
  return renderOnce(`helm-${valuesFile ?? "default"}`, () =>
    run(tools.helm!, ["template", "aws-storage-csi", CHART, "--namespace", NAMESPACE, ...values]),
  );
}

function readObjects(file: string): K8sObject[] {
  const r = run(tools.validate!, ["--to-json", file]);
  if (r.status !== 0) throw new Error(`cannot read ${file}:\n${output(r)}`);
  return JSON.parse(r.stdout) as K8sObject[];
}

function expectValid(file: string): void {
  const r = run(tools.validate!, [file]);
  const problems = r.stdout.split("\n").filter((l) => l.startsWith("INVALID") || l.startsWith("WARNING"));
  expect(problems, output(r)).toEqual([]);
  expect(r.status, output(r)).toBe(0);
  expect(r.stdout).toMatch(/^OK /m);
}

const podSpecOf = (o: K8sObject): K8sObject | undefined => o.spec?.template?.spec;

/** Every container (init ones too) of every workload, with the object it belongs to. */
function containersOf(objects: K8sObject[]): { owner: string; container: K8sObject }[] {
  return objects.flatMap((o) => {
    const spec = podSpecOf(o);
    if (!spec) return [];
    const all = [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
    return all.map((container: K8sObject) => ({ owner: `${o.kind}/${o.metadata.name}`, container }));
  });
}

const isOurs = (container: K8sObject) => String(container.image).startsWith(`${OUR_IMAGE}:`);

describe("kustomize", () => {
  for (const overlay of OVERLAYS) {
    it(`overlays/${overlay} renders objects that kube-apiserver accepts`, (ctx) => {
      need(ctx, "kustomize", "validate");
      expectValid(renderOverlay(overlay));
    });
  }

  it("every overlay runs the image tag of the chart's appVersion, v + package.json version", (ctx) => {
    need(ctx, "kustomize", "validate");
    const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
    const appVersion = /^appVersion:\s*"?([^"\s]+)"?/m.exec(
      readFileSync(join(CHART, "Chart.yaml"), "utf8"),
    )?.[1];
    expect(appVersion).toBe(`v${version}`);
    for (const overlay of OVERLAYS) {
      const images = containersOf(readObjects(renderOverlay(overlay)))
        .filter(({ container }) => isOurs(container))
        .map(({ container }) => container.image);
      expect(images.length).toBeGreaterThan(0);
      expect(new Set(images)).toEqual(new Set([`${OUR_IMAGE}:${appVersion}`]));
    }
  });
});

describe("helm chart", () => {
  it("passes helm lint --strict with the default values and every ci values file", (ctx) => {
    need(ctx, "helm");
    for (const values of [undefined, ...valuesFiles]) {
      const args = ["lint", "--strict", CHART, ...(values ? ["--values", join(CHART, "ci", values)] : [])];
      const r = run(tools.helm!, args);
      expect(r.status, `helm ${args.join(" ")}\n${output(r)}`).toBe(0);
    }
  });

  for (const values of [undefined, ...valuesFiles]) {
    it(`renders objects that kube-apiserver accepts (${values ?? "default values"})`, (ctx) => {
      need(ctx, "helm", "validate");
      expectValid(renderChart(values));
    });
  }

  /** Labels and annotations are where the two may differ (Helm adds its own); nothing else. */
  function comparable(objects: K8sObject[]): Map<string, K8sObject> {
    const byKey = new Map<string, K8sObject>();
    for (const o of objects) {
      const copy = structuredClone(o);
      delete copy.metadata.labels;
      delete copy.metadata.annotations;
      if (copy.spec?.template?.metadata) {
        delete copy.spec.template.metadata.labels;
        delete copy.spec.template.metadata.annotations;
      }
      for (const rule of copy.rules ?? []) {
        // Order of verbs and resources carries no meaning.
        for (const field of ["verbs", "resources", "apiGroups"]) rule[field]?.sort();
      }
      byKey.set(`${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`, copy);
    }
    return byKey;
  }

  const pairs: [string | undefined, (typeof OVERLAYS)[number]][] = [
    [undefined, "ebs"],
    ["efs.yaml", "efs"],
    ["both.yaml", "both"],
  ];
  for (const [values, overlay] of pairs) {
    it(`${values ?? "default values"} render the same objects as overlays/${overlay}, labels aside`, (ctx) => {
      need(ctx, "helm", "kustomize", "validate");
      const fromHelm = comparable(readObjects(renderChart(values)));
      const fromKustomize = comparable(readObjects(renderOverlay(overlay)));
      expect([...fromHelm.keys()].sort()).toEqual([...fromKustomize.keys()].sort());
      for (const [key, object] of fromKustomize) expect(fromHelm.get(key), key).toEqual(object);
    });
  }
});

describe("EBS snapshots", () => {
  const controllerOf = (objects: K8sObject[], driver: string) =>
    objects.find((o) => o.kind === "Deployment" && o.metadata.name === `${driver}-csi-controller`);
  const snapshotterOf = (deployment: K8sObject | undefined) =>
    podSpecOf(deployment ?? {})?.containers.find((c: K8sObject) => c.name === "csi-snapshotter");

  it("the EBS controller runs csi-snapshotter on the plugin's socket, bound to its ClusterRole", (ctx) => {
    need(ctx, "kustomize", "helm", "validate");
    const renderings = [
      renderOverlay("ebs"),
      renderOverlay("both"),
      renderChart(),
      ...valuesFiles.filter((v) => v !== "ebs-snapshots-off.yaml").map((v) => renderChart(v)),
    ];
    let checked = 0;
    for (const file of renderings) {
      const objects = readObjects(file);
      const efs = controllerOf(objects, "efs");
      if (efs) expect(snapshotterOf(efs), `${file}: EFS has no snapshots`).toBeUndefined();
      const ebs = controllerOf(objects, "ebs");
      if (!ebs) continue;
      const sidecar = snapshotterOf(ebs);
      expect(sidecar, file).toBeDefined();
      expect(sidecar.image).toMatch(/^registry\.k8s\.io\/sig-storage\/csi-snapshotter:v\d+\.\d+\.\d+$/);
      expect(sidecar.args).toEqual(
        expect.arrayContaining([
          "--csi-address=/csi/csi.sock",
          "--extra-create-metadata",
          "--leader-election",
        ]),
      );
      // The removed flag (v8.2.0) would stop the sidecar at start; group snapshots need a GroupController.
      expect(sidecar.args.some((a: string) => a.startsWith("--enable-volume-group-snapshots"))).toBe(false);
      expect(sidecar.volumeMounts).toEqual([{ name: "socket-dir", mountPath: "/csi" }]);
      // One RPC timeout for every sidecar that talks to the plugin.
      const timeouts = new Set(
        podSpecOf(ebs)!
          .containers.flatMap((c: K8sObject) => c.args ?? [])
          .filter((a: string) => a.startsWith("--timeout=")),
      );
      expect([...timeouts], file).toEqual(["--timeout=60s"]);
      const binding = objects.find(
        (o) => o.kind === "ClusterRoleBinding" && o.roleRef?.name === "ebs-csi-snapshotter",
      );
      expect(binding?.subjects, file).toEqual([
        {
          kind: "ServiceAccount",
          name: podSpecOf(ebs)!.serviceAccountName,
          namespace: ebs.metadata.namespace,
        },
      ]);
      const role = objects.find((o) => o.kind === "ClusterRole" && o.metadata.name === "ebs-csi-snapshotter");
      const resources = role?.rules.flatMap((r: K8sObject) => r.resources);
      expect(resources, file).toEqual(
        expect.arrayContaining([
          "volumesnapshotcontents",
          "volumesnapshotcontents/status",
          "volumesnapshotclasses",
        ]),
      );
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(4);
  });

  it("ebs.controller.snapshots.enabled=false leaves out the sidecar and its RBAC", (ctx) => {
    need(ctx, "helm", "validate");
    const objects = readObjects(renderChart("ebs-snapshots-off.yaml"));
    const ebs = controllerOf(objects, "ebs");
    expect(ebs).toBeDefined();
    expect(snapshotterOf(ebs)).toBeUndefined();
    expect(objects.filter((o) => o.metadata.name === "ebs-csi-snapshotter")).toEqual([]);
  });
});

describe("our containers' command lines", () => {
  const help = run(process.execPath, [join(ROOT, "src/main.ts"), "--help"]);
  const flags = new Map<string, "value" | "boolean">();
  for (const m of help.stdout.matchAll(/^\s+--([a-z0-9-]+)( VALUE)?/gm))
    flags.set(m[1]!, m[2] ? "value" : "boolean");
  const envNames = new Set([...help.stdout.matchAll(/env ([A-Z0-9_]+)/g)].map((m) => m[1]!));

  function everyRendering(): string[] {
    return [
      ...OVERLAYS.map((o) => renderOverlay(o)),
      renderChart(),
      ...valuesFiles.map((v) => renderChart(v)),
    ];
  }

  it("node src/main.ts --help lists the flags", () => {
    expect(help.status, output(help)).toBe(0);
    expect(flags.get("driver")).toBe("value");
  });

  it("every --flag given to our image is a flag of the binary, in the form it takes", (ctx) => {
    need(ctx, "kustomize", "helm", "validate");
    let checked = 0;
    for (const file of everyRendering()) {
      for (const { owner, container } of containersOf(readObjects(file))) {
        if (!isOurs(container)) continue;
        for (const arg of container.args ?? []) {
          const where = `${relative(work, file)} ${owner} ${container.name}: ${arg}`;
          const m = /^--([a-z0-9-]+)(=.*)?$/.exec(arg);
          expect(m, `${where}: not a --flag[=value] argument`).not.toBeNull();
          const kind = flags.get(m![1]!);
          expect(kind, `${where}: the binary has no such flag`).toBeDefined();
          if (kind === "value") expect(m![2], `${where}: the flag takes a value`).toBeDefined();
          else expect(m![2], `${where}: a boolean flag takes no value`).toBeUndefined();
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(20);
  });

  it("every environment variable set on our image is one the binary reads", (ctx) => {
    need(ctx, "kustomize", "helm", "validate");
    for (const file of everyRendering()) {
      for (const { owner, container } of containersOf(readObjects(file))) {
        if (!isOurs(container)) continue;
        for (const { name } of container.env ?? []) {
          expect(
            envNames.has(name),
            `${owner} ${container.name}: env ${name} is not read by the binary`,
          ).toBe(true);
        }
      }
    }
  });

  it("no manifest overrides the image's ENTRYPOINT", (ctx) => {
    need(ctx, "kustomize", "helm", "validate");
    for (const file of everyRendering()) {
      for (const { owner, container } of containersOf(readObjects(file))) {
        if (isOurs(container)) expect(container.command, `${owner} ${container.name}`).toBeUndefined();
      }
    }
  });
});

describe("examples", () => {
  const dir = join(ROOT, "deploy/examples");
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".yaml"))
    .sort();
  // Kinds served by CRDs, which the apiserver's built-in validation does not know: checked
  // against their CRD schema's required fields below instead.
  const CUSTOM_GROUPS = new Set(["snapshot.storage.k8s.io", "groupsnapshot.storage.k8s.io"]);
  const groupOf = (o: K8sObject) =>
    String(o.apiVersion).includes("/") ? String(o.apiVersion).split("/")[0] : "";
  const isCustom = (o: K8sObject) => CUSTOM_GROUPS.has(groupOf(o)!);

  it("pass kube-apiserver validation (custom resources aside)", (ctx) => {
    need(ctx, "validate");
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const all = readObjects(join(dir, f));
      const custom = all.filter(isCustom);
      if (custom.length === 0) {
        expectValid(join(dir, f));
        continue;
      }
      const names = custom.map((o) => `${o.kind}/${o.metadata?.name}`).join(", ");
      console.info(
        `examples/${f}: ${names} served by CRDs: not judged by k8s-validate, checked structurally`,
      );
      const builtIn = all.filter((o) => !isCustom(o));
      if (builtIn.length === 0) continue;
      // JSON is YAML: one document per object, the custom resources left out.
      const file = join(work, `example-${f}`);
      writeFileSync(file, builtIn.map((o) => JSON.stringify(o)).join("\n---\n"));
      expectValid(file);
    }
  });

  const objects = () => files.flatMap((f) => readObjects(join(dir, f)));
  const provisionerMetadata = {
    "csi.storage.k8s.io/pvc/name": "data",
    "csi.storage.k8s.io/pvc/namespace": "default",
    "csi.storage.k8s.io/pv/name": "pvc-0b4c0c1e",
  };

  it("EBS StorageClasses and VolumeAttributesClasses pass the driver's own parameter rules", (ctx) => {
    need(ctx, "validate");
    const all = objects();
    const classes = all.filter((o) => o.kind === "StorageClass" && o.provisioner === "ebs.csi.aws.com");
    expect(classes.length).toBeGreaterThanOrEqual(4);
    for (const sc of classes) {
      const request = { name: "pvc-0b4c0c1e", requiredBytes: 20 * 2 ** 30, limitBytes: 0, extraTags: {} };
      expect(
        () => parseCreateParameters({ ...sc.parameters, ...provisionerMetadata }, request),
        sc.metadata.name,
      ).not.toThrow();
    }
    const vacs = all.filter((o) => o.kind === "VolumeAttributesClass");
    expect(vacs.map((v) => v.driverName)).toEqual(["ebs.csi.aws.com"]);
    for (const vac of vacs) {
      expect(
        () => parseModifyParameters(vac.parameters, { sizeGiB: 20, type: "gp3" }),
        vac.metadata.name,
      ).not.toThrow();
    }
  });

  /** Every claim of the examples, namespace/name to its spec: PVCs and StatefulSets' claim templates. */
  function claimsOf(all: K8sObject[]): Map<string, { spec: K8sObject; labels: Record<string, string> }> {
    const claims = new Map<string, { spec: K8sObject; labels: Record<string, string> }>();
    for (const pvc of all.filter((o) => o.kind === "PersistentVolumeClaim")) {
      claims.set(`${pvc.metadata.namespace ?? "default"}/${pvc.metadata.name}`, {
        spec: pvc.spec,
        labels: pvc.metadata.labels ?? {},
      });
    }
    for (const sts of all.filter((o) => o.kind === "StatefulSet")) {
      for (const t of sts.spec.volumeClaimTemplates ?? []) {
        for (let i = 0; i < (sts.spec.replicas ?? 1); i++) {
          // The StatefulSet controller labels its claims with the pod selector's labels.
          claims.set(`${sts.metadata.namespace ?? "default"}/${t.metadata.name}-${sts.metadata.name}-${i}`, {
            spec: t.spec,
            labels: { ...t.metadata.labels, ...sts.spec.selector?.matchLabels },
          });
        }
      }
    }
    return claims;
  }

  /** Kubernetes quantity to bytes, for the forms PVC requests use (plain, Ki..Ei, k..E). */
  function bytesOf(quantity: string): number {
    const m = /^(\d+(?:\.\d+)?)([KMGTPE]i|[kMGTPE])?$/.exec(String(quantity));
    if (!m) throw new Error(`not a quantity: ${quantity}`);
    const units = "KMGTPE";
    const suffix = m[2] ?? "";
    const power = suffix === "" ? 0 : units.indexOf(suffix[0]!.toUpperCase()) + 1;
    return Number(m[1]) * (suffix.endsWith("i") ? 1024 : 1000) ** power;
  }

  it("VolumeSnapshotClasses and VolumeSnapshots fit snapshot.storage.k8s.io/v1 and the driver's rules", (ctx) => {
    need(ctx, "validate");
    const all = objects();
    const custom = all.filter((o) => groupOf(o) === "snapshot.storage.k8s.io");
    for (const o of custom) {
      const id = `${o.kind}/${o.metadata?.name}`;
      expect(o.apiVersion, id).toBe("snapshot.storage.k8s.io/v1");
      expect(["VolumeSnapshotClass", "VolumeSnapshot"], id).toContain(o.kind);
      expect(o.metadata?.name, id).toMatch(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/);
    }
    // The required fields and enums of external-snapshotter's client/config/crd schemas, and no others.
    const classes = custom.filter((o) => o.kind === "VolumeSnapshotClass");
    for (const c of classes) {
      const id = `VolumeSnapshotClass/${c.metadata.name}`;
      expect(Object.keys(c).sort(), id).toEqual(
        expect.arrayContaining(["apiVersion", "deletionPolicy", "driver", "kind", "metadata"]),
      );
      for (const key of Object.keys(c)) {
        expect(["apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"], id).toContain(
          key,
        );
      }
      expect(c.metadata.namespace, `${id} is cluster-scoped`).toBeUndefined();
      expect(["Delete", "Retain"], id).toContain(c.deletionPolicy);
      for (const value of Object.values(c.parameters ?? {})) expect(typeof value, id).toBe("string");
    }
    const snapshots = custom.filter((o) => o.kind === "VolumeSnapshot");
    for (const vs of snapshots) {
      const id = `VolumeSnapshot/${vs.metadata.name}`;
      expect(Object.keys(vs).sort(), id).toEqual(["apiVersion", "kind", "metadata", "spec"]);
      const source = vs.spec.source ?? {};
      expect(Object.keys(source), `${id}: exactly one source`).toHaveLength(1);
      expect(["persistentVolumeClaimName", "volumeSnapshotContentName"], id).toContain(
        Object.keys(source)[0],
      );
      for (const key of Object.keys(vs.spec))
        expect(["source", "volumeSnapshotClassName"], id).toContain(key);
    }

    // EBS classes: the parameters the driver gets, with what --extra-create-metadata adds.
    const ebsClasses = classes.filter((c) => c.driver === "ebs.csi.aws.com");
    expect(ebsClasses.length).toBeGreaterThan(0);
    for (const c of ebsClasses) {
      const parameters = {
        ...c.parameters,
        "csi.storage.k8s.io/volumesnapshot/name": "nightly",
        "csi.storage.k8s.io/volumesnapshot/namespace": "shop",
        "csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-0b4c0c1e",
      };
      const parsed = parseSnapshotParameters(parameters, { name: "snapshot-0b4c0c1e", extraTags: {} });
      if (JSON.stringify(c.parameters ?? {}).includes(".VolumeSnapshotNamespace")) {
        expect(Object.values(parsed.tags), c.metadata.name).toContain("shop");
      }
    }

    // References: class, source claim (a PVC or a StatefulSet's claim template), restored claims.
    const claims = new Set(claimsOf(all).keys());
    const classNames = new Set(classes.map((c) => c.metadata.name));
    for (const vs of snapshots) {
      const ns = vs.metadata.namespace ?? "default";
      if (vs.spec.volumeSnapshotClassName) expect(classNames).toContain(vs.spec.volumeSnapshotClassName);
      if (vs.spec.source.persistentVolumeClaimName) {
        expect(claims).toContain(`${ns}/${vs.spec.source.persistentVolumeClaimName}`);
      }
    }
    const snapshotNames = new Set(
      snapshots.map((vs) => `${vs.metadata.namespace ?? "default"}/${vs.metadata.name}`),
    );
    const restores = all.filter(
      (o) => o.kind === "PersistentVolumeClaim" && o.spec.dataSource?.kind === "VolumeSnapshot",
    );
    expect(restores.length).toBeGreaterThan(0);
    for (const pvc of restores) {
      expect(pvc.spec.dataSource.apiGroup, pvc.metadata.name).toBe("snapshot.storage.k8s.io");
      expect(snapshotNames).toContain(`${pvc.metadata.namespace ?? "default"}/${pvc.spec.dataSource.name}`);
    }
  });

  it("VolumeGroupSnapshotClasses and VolumeGroupSnapshots fit groupsnapshot.storage.k8s.io/v1beta2 and the driver's rules", (ctx) => {
    need(ctx, "validate");
    const all = objects();
    const custom = all.filter((o) => groupOf(o) === "groupsnapshot.storage.k8s.io");
    expect(custom.length).toBeGreaterThan(0);
    for (const o of custom) {
      const id = `${o.kind}/${o.metadata?.name}`;
      // v1beta2: the version external-snapshotter's CRDs store (v1 is served too, converted to it).
      expect(o.apiVersion, id).toBe("groupsnapshot.storage.k8s.io/v1beta2");
      expect(["VolumeGroupSnapshotClass", "VolumeGroupSnapshot"], id).toContain(o.kind);
      expect(o.metadata?.name, id).toMatch(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/);
    }
    // The required fields, enums and rules of client/config/crd/groupsnapshot.storage.k8s.io_*.yaml.
    const classes = custom.filter((o) => o.kind === "VolumeGroupSnapshotClass");
    expect(classes.length).toBeGreaterThan(0);
    for (const c of classes) {
      const id = `VolumeGroupSnapshotClass/${c.metadata.name}`;
      expect(Object.keys(c), id).toEqual(
        expect.arrayContaining(["apiVersion", "deletionPolicy", "driver", "kind", "metadata"]),
      );
      for (const key of Object.keys(c)) {
        expect(["apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"], id).toContain(
          key,
        );
      }
      expect(c.metadata.namespace, `${id} is cluster-scoped`).toBeUndefined();
      expect(typeof c.driver, id).toBe("string");
      expect(["Delete", "Retain"], id).toContain(c.deletionPolicy);
      for (const value of Object.values(c.parameters ?? {})) expect(typeof value, id).toBe("string");
    }
    const groups = custom.filter((o) => o.kind === "VolumeGroupSnapshot");
    expect(groups.length).toBeGreaterThan(0);
    for (const g of groups) {
      const id = `VolumeGroupSnapshot/${g.metadata.name}`;
      expect(Object.keys(g).sort(), id).toEqual(["apiVersion", "kind", "metadata", "spec"]);
      for (const key of Object.keys(g.spec))
        expect(["source", "volumeGroupSnapshotClassName"], id).toContain(key);
      const source = g.spec.source ?? {};
      expect(
        Object.keys(source),
        `${id}: exactly one of selector and volumeGroupSnapshotContentName`,
      ).toHaveLength(1);
      expect(["selector", "volumeGroupSnapshotContentName"], id).toContain(Object.keys(source)[0]);
      if (g.spec.volumeGroupSnapshotClassName !== undefined) {
        expect(g.spec.volumeGroupSnapshotClassName, id).not.toBe("");
      }
    }

    // EBS classes: the parameters the driver gets, with what --extra-create-metadata adds; templates render.
    const ebsClasses = classes.filter((c) => c.driver === "ebs.csi.aws.com");
    expect(ebsClasses.length).toBeGreaterThan(0);
    for (const c of ebsClasses) {
      const id = `VolumeGroupSnapshotClass/${c.metadata.name}`;
      const parameters = {
        ...c.parameters,
        "csi.storage.k8s.io/volumegroupsnapshot/name": "nightly",
        "csi.storage.k8s.io/volumegroupsnapshot/namespace": "shop",
        "csi.storage.k8s.io/volumegroupsnapshotcontent/name": "groupsnapcontent-0b4c0c1e",
      };
      let tags: Record<string, string> = {};
      expect(() => {
        tags = parseGroupSnapshotParameters(parameters, {
          name: "x",
          groupId: "groupsnap-0",
          extraTags: {},
        }).tags;
      }, id).not.toThrow();
      for (const value of Object.values(tags)) expect(value, id).not.toContain("{{");
      const rendered = Object.values(tags);
      if (JSON.stringify(c.parameters ?? {}).includes(".VolumeGroupSnapshotNamespace")) {
        expect(rendered, id).toContain("shop");
      }
      if (JSON.stringify(c.parameters ?? {}).includes(".VolumeGroupSnapshotName")) {
        expect(rendered, id).toContain("nightly");
      }
    }

    // References: the class exists; the selector matches claims of the group's namespace, all EBS.
    const classNames = new Set(classes.map((c) => c.metadata.name));
    const claims = claimsOf(all);
    const ebsStorageClasses = new Set(
      all
        .filter((o) => o.kind === "StorageClass" && o.provisioner === "ebs.csi.aws.com")
        .map((o) => o.metadata.name),
    );
    for (const g of groups) {
      const id = `VolumeGroupSnapshot/${g.metadata.name}`;
      const ns = g.metadata.namespace ?? "default";
      if (g.spec.volumeGroupSnapshotClassName) {
        expect(classNames, id).toContain(g.spec.volumeGroupSnapshotClassName);
      }
      const selector = g.spec.source.selector;
      if (!selector) continue;
      expect(Object.keys(selector), `${id}: matchLabels only`).toEqual(["matchLabels"]);
      const wanted = Object.entries(selector.matchLabels as Record<string, string>);
      expect(wanted.length, id).toBeGreaterThan(0);
      const members = [...claims].filter(
        ([key, { labels }]) => key.startsWith(`${ns}/`) && wanted.every(([k, v]) => labels[k] === v),
      );
      expect(members.length, `${id}: selects at least two claims`).toBeGreaterThanOrEqual(2);
      for (const [key, { spec }] of members)
        expect(ebsStorageClasses, `${id}: ${key}`).toContain(spec.storageClassName);
    }
  });

  it("PVC clones name a claim of the examples, in its namespace and StorageClass, at least its size", (ctx) => {
    need(ctx, "validate");
    const all = objects();
    const claims = claimsOf(all);
    const clones = all.filter(
      (o) => o.kind === "PersistentVolumeClaim" && o.spec.dataSource?.kind === "PersistentVolumeClaim",
    );
    expect(clones.length).toBeGreaterThan(0);
    for (const pvc of clones) {
      const ns = pvc.metadata.namespace ?? "default";
      const id = `PersistentVolumeClaim/${ns}/${pvc.metadata.name}`;
      // The core group: no apiGroup, or an empty one.
      expect(pvc.spec.dataSource.apiGroup ?? "", id).toBe("");
      const source = claims.get(`${ns}/${pvc.spec.dataSource.name}`);
      expect(source, `${id}: no claim ${ns}/${pvc.spec.dataSource.name} in the examples`).toBeDefined();
      expect(pvc.spec.storageClassName, id).toBe(source!.spec.storageClassName);
      expect(
        bytesOf(pvc.spec.resources.requests.storage),
        `${id}: smaller than its source`,
      ).toBeGreaterThanOrEqual(bytesOf(source!.spec.resources.requests.storage));
      if (pvc.spec.dataSourceRef) expect(pvc.spec.dataSourceRef.name, id).toBe(pvc.spec.dataSource.name);
    }
  });

  it("EFS StorageClasses and static volume handles pass the driver's own rules", (ctx) => {
    need(ctx, "validate");
    const all = objects();
    const classes = all.filter((o) => o.kind === "StorageClass" && o.provisioner === "efs.csi.aws.com");
    expect(classes.length).toBeGreaterThan(0);
    for (const sc of classes) {
      expect(
        () => parseProvisioningParams({ ...sc.parameters, ...provisionerMetadata }),
        sc.metadata.name,
      ).not.toThrow();
    }
    const volumes = all.filter((o) => o.kind === "PersistentVolume");
    expect(volumes.length).toBeGreaterThan(0);
    for (const pv of volumes) {
      expect(pv.spec.csi.driver).toBe("efs.csi.aws.com");
      expect(() => parseVolumeHandle(pv.spec.csi.volumeHandle), pv.metadata.name).not.toThrow();
    }
  });
});

describe("Dockerfile", () => {
  const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  // Continuation lines joined, comments dropped: one instruction per entry.
  const instructions = dockerfile
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const stages: { name: string | undefined; lines: string[] }[] = [];
  for (const line of instructions) {
    const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) stages.push({ name: from[1], lines: [] });
    else stages.at(-1)?.lines.push(line);
  }
  const runtime = stages.at(-1)!;
  const entrypoint = runtime.lines.filter((l) => /^ENTRYPOINT\s/i.test(l)).at(-1);

  interface Copy {
    from: string | undefined;
    sources: string[];
    dest: string;
  }
  const copiesOf = (lines: string[]): Copy[] =>
    lines
      .filter((l) => /^COPY\s/i.test(l))
      .map((l) => {
        const words = l.split(/\s+/).slice(1);
        const from = words.find((w) => w.startsWith("--from="))?.slice("--from=".length);
        const paths = words.filter((w) => !w.startsWith("--"));
        return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
      });

  it("passes hadolint, and so do the test images' Dockerfiles", (ctx) => {
    need(ctx, "hadolint");
    const testImages = ["moto", "localstack"].map((name) =>
      join(ROOT, "test", "containers", name, "Dockerfile"),
    );
    const r = run(tools.hadolint!, [join(ROOT, "Dockerfile"), ...testImages]);
    expect(r.status, output(r)).toBe(0);
  });

  /** .dockerignore semantics for the patterns this project uses: globs, "!" exceptions, last match wins. */
  function inBuildContext(path: string): boolean {
    const file = join(ROOT, ".dockerignore");
    const patterns = existsSync(file)
      ? readFileSync(file, "utf8")
          .split("\n")
          .map((l) => l.trim())
          .filter((l) => l !== "" && !l.startsWith("#"))
      : [];
    const escapeRegExp = (text: string) => text.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    const toRegExp = (glob: string) => {
      const body = glob
        .replace(/\/+$/, "")
        .split("**")
        .map((part) =>
          part
            .split("*")
            .map((segment) => segment.split("?").map(escapeRegExp).join("[^/]"))
            .join("[^/]*"),
        )
        .join(".*");
      return new RegExp(`^${body}(/.*)?$`);
    };
    let included = true;
    for (const pattern of patterns) {
      const negated = pattern.startsWith("!");
      if (toRegExp(posix.normalize(negated ? pattern.slice(1) : pattern)).test(path)) included = negated;
    }
    return included;
  }

  it("copies only sources that exist and that .dockerignore lets into the build context", () => {
    const local = stages.flatMap((s) => copiesOf(s.lines)).filter((c) => c.from === undefined);
    expect(local.length).toBeGreaterThan(0);
    for (const { sources } of local) {
      for (const source of sources) {
        const path = posix.normalize(source).replace(/\/$/, "");
        expect(existsSync(join(ROOT, path)), `COPY ${source}: no such file`).toBe(true);
        expect(inBuildContext(path), `COPY ${source}: excluded by .dockerignore`).toBe(true);
      }
    }
    expect(inBuildContext("src/main.ts")).toBe(true);
    expect(inBuildContext("node_modules/typescript/package.json")).toBe(false);
    expect(inBuildContext("scripts/build.ts")).toBe(true);
    expect(inBuildContext(".git/HEAD")).toBe(false);
  });

  it("npm ci accepts package.json and package-lock.json, as the build stage runs it and as a production install would", () => {
    const dir = join(work, "npm-ci");
    mkdirSync(dir, { recursive: true });
    for (const f of ["package.json", "package-lock.json"]) cpSync(join(ROOT, f), join(dir, f));
    for (const omit of [[], ["--omit=dev"]]) {
      const r = run("npm", ["ci", "--dry-run", "--ignore-scripts", "--no-audit", "--no-fund", ...omit], {
        cwd: dir,
      });
      expect(r.status, `npm ci ${omit.join(" ")}\n${output(r)}`).toBe(0);
    }
  });

  it("its ENTRYPOINT is node /app/dist/main.js, the file npm run build makes from src/main.ts", () => {
    expect(entrypoint && JSON.parse(entrypoint.replace(/^ENTRYPOINT\s+/i, ""))).toEqual([
      "node",
      "/app/dist/main.js",
    ]);
    expect(ENTRY_POINTS).toContain("src/main.ts");
    expect(existsSync(join(ROOT, "src/main.ts"))).toBe(true);
    expect(JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).bin["aws-storage-csi"]).toBe(
      "dist/main.js",
    );
  });

  it("the runtime stage's files, laid out as its COPY lines say, answer --version without node_modules", async () => {
    // Bundle as the build stage does, into a scratch dir; then follow the runtime stage's COPYs.
    const app = join(work, "image/app");
    mkdirSync(app, { recursive: true });
    await buildDriver(join(work, "image/dist"));
    const stageOutputs: Record<string, string> = { "build:/src/dist/": join(work, "image/dist") };
    const workdir = runtime.lines
      .filter((l) => /^WORKDIR\s/i.test(l))
      .at(-1)
      ?.split(/\s+/)[1];
    expect(workdir).toBe("/app");
    for (const { from, sources, dest } of copiesOf(runtime.lines)) {
      for (const source of sources) {
        // Docker: a directory's contents go to dest; a file goes into dest/ or becomes dest.
        const target = source.endsWith("/")
          ? join(app, dest)
          : join(app, dest, dest.endsWith("/") ? posix.basename(source) : "");
        mkdirSync(dirname(target.replace(/\/$/, "")), { recursive: true });
        if (from) {
          const origin = stageOutputs[`${from}:${source}`];
          expect(
            origin,
            `COPY --from=${from} ${source}: unknown to this test, add it to stageOutputs`,
          ).toBeDefined();
          cpSync(origin!, target, { recursive: true });
        } else {
          cpSync(join(ROOT, source), target, { recursive: true });
        }
      }
    }
    // The bundle must not reach for the repository's node_modules: the image has none.
    expect(existsSync(join(app, "node_modules"))).toBe(false);
    const [command, script] = JSON.parse(entrypoint!.replace(/^ENTRYPOINT\s+/i, "")) as string[];
    expect(command).toBe("node");
    const version = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
    const r = run(process.execPath, [join(app, posix.relative("/app", script!)), "--version"], {
      cwd: tmpdir(),
    });
    expect(r.status, output(r)).toBe(0);
    expect(r.stdout.trim()).toBe(`aws-storage-csi ${version}`);
    // The helper processes the node plugin starts sit beside the chunks that start them.
    for (const entry of ["describe-instance-type.js", "usage-walk-child.js"])
      expect(existsSync(join(app, "dist", entry)), entry).toBe(true);
  });
});

describe("IAM policies", () => {
  interface Statement {
    Sid?: string;
    Effect: string;
    Action: string | string[];
    Resource: string | string[];
    Condition?: Record<string, Record<string, string | string[]>>;
  }
  const policy = (name: string) =>
    JSON.parse(readFileSync(join(ROOT, "deploy/iam", name), "utf8")) as {
      Version: string;
      Statement: Statement[];
    };
  const actionsOf = (statements: Statement[]) => new Set(statements.flatMap((s) => [s.Action].flat()));

  /** IAM actions of the AWS SDK commands each driver's source sends, by the directory it lives in. */
  function actionsCalled(dir: string): Set<string> {
    const actions = new Set<string>();
    const walk = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)],
      );
    for (const file of walk(join(ROOT, dir)).filter((f) => f.endsWith(".ts"))) {
      const source = readFileSync(file, "utf8");
      for (const m of source.matchAll(/import\s*\{([^}]*)\}\s*from\s*"@aws-sdk\/client-(ec2|efs)"/g)) {
        const service = m[2] === "ec2" ? "ec2" : "elasticfilesystem";
        for (const name of m[1]!.split(",").map((s) => s.trim().replace(/^type\s+/, ""))) {
          const command = /^(\w+)Command$/.exec(name)?.[1] ?? /^paginate(\w+)$/.exec(name)?.[1];
          if (command) actions.add(`${service}:${command}`);
        }
      }
    }
    return actions;
  }

  for (const [driver, file] of [
    ["ebs", "ebs-policy.json"],
    ["efs", "efs-policy.json"],
  ] as const) {
    it(`${file} allows every AWS call src/${driver} makes, and nothing it does not`, () => {
      const doc = policy(file);
      expect(doc.Version).toBe("2012-10-17");
      for (const s of doc.Statement) {
        expect(s.Effect, s.Sid).toBe("Allow");
        expect(s.Resource, s.Sid).toBeDefined();
      }
      const granted = actionsOf(doc.Statement);
      const called = actionsCalled(`src/${driver}`);
      expect(called.size).toBeGreaterThan(3);
      for (const action of called) expect(granted.has(action), `${file} lacks ${action}`).toBe(true);
      for (const action of granted) {
        expect(called.has(action), `${file} grants ${action}, which src/${driver} never calls`).toBe(true);
      }
    });
  }

  it("create and delete only resources tagged for the driver, and tag only while creating or own resources", () => {
    // Statements of an action, on resources of one kind (volume/*, snapshot/*) when given.
    const conditionsFor = (doc: { Statement: Statement[] }, action: string, resource?: string) =>
      doc.Statement.filter(
        (s) =>
          [s.Action].flat().includes(action) &&
          (resource === undefined || JSON.stringify(s.Resource ?? "").includes(resource)),
      ).map((s) => JSON.stringify(s.Condition ?? null));
    const ebs = policy("ebs-policy.json");
    // What is created carries the driver's tag in the creating call: volumes, and snapshots.
    for (const [action, resource] of [
      ["ec2:CreateVolume", ":volume/"],
      ["ec2:CreateSnapshot", ":snapshot/"],
      ["ec2:CreateSnapshots", ":snapshot/"],
    ] as const) {
      const conditions = conditionsFor(ebs, action, resource);
      expect(conditions.length, action).toBeGreaterThan(0);
      expect(
        conditions.every((c) => c.includes("aws:RequestTag/ebs.csi.aws.com/cluster")),
        action,
      ).toBe(true);
    }
    for (const action of ["ec2:DeleteVolume", "ec2:DeleteSnapshot", "ec2:LockSnapshot"]) {
      const conditions = conditionsFor(ebs, action);
      expect(conditions.length, action).toBeGreaterThan(0);
      expect(
        conditions.every((c) => c.includes("ec2:ResourceTag/")),
        action,
      ).toBe(true);
    }
    expect(
      conditionsFor(ebs, "ec2:CreateTags").every(
        (c) =>
          c.includes('"ec2:CreateAction":["CreateVolume","CopyVolumes"]') ||
          c.includes('"ec2:CreateAction":["CreateSnapshot","CreateSnapshots"]') ||
          c.includes("ec2:ResourceTag/ebs.csi.aws.com/cluster"),
      ),
    ).toBe(true);
    const efs = policy("efs-policy.json");
    expect(conditionsFor(efs, "elasticfilesystem:CreateAccessPoint")).toEqual([
      expect.stringContaining("aws:RequestTag/efs.csi.aws.com/cluster"),
    ]);
    expect(conditionsFor(efs, "elasticfilesystem:DeleteAccessPoint")).toEqual([
      expect.stringContaining("aws:ResourceTag/efs.csi.aws.com/cluster"),
    ]);
    // Tags at creation, and later only the capacity tag of the driver's own access points (expansion).
    expect(conditionsFor(efs, "elasticfilesystem:TagResource")).toEqual([
      expect.stringContaining('"elasticfilesystem:CreateAction":"CreateAccessPoint"'),
      expect.stringMatching(
        /aws:ResourceTag\/efs\.csi\.aws\.com\/cluster.*"aws:TagKeys":\["efs\.csi\.aws\.com\/capacity-bytes"\]/,
      ),
    ]);
    // The EFS node reads an access point's capacity for volume stats, and a file system's mount
    // targets when the file system's DNS name does not resolve (its TLS relay), and nothing else.
    expect(actionsOf(policy("efs-node-policy.json").Statement)).toEqual(
      new Set(["elasticfilesystem:DescribeAccessPoints", "elasticfilesystem:DescribeMountTargets"]),
    );
  });
});
