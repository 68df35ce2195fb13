/**
 * StorageClass parameters of dynamically provisioned EFS volumes (an access point per volume):
 * parsing, validation, and the root directory and client token they lead to. Pure functions.
 * PARAMETERS is the one table of keys; code and docs follow it.
 */
import { createHash } from "node:crypto";
import { posix } from "node:path";
import { invalidArgument } from "../csi/errors.ts";
import type { GidRange } from "./gid.ts";
import { hasControlCharacter, isFileSystemId } from "./handle.ts";

export interface ParameterSpec {
  default?: string;
  help: string;
  /** Accepted for compatibility with StorageClasses of the official driver, but refused with this message. */
  unsupported?: string;
}

/** The StorageClass parameters, as the official driver names them. Keys are case-sensitive. */
export const PARAMETERS: Record<string, ParameterSpec> = {
  provisioningMode: { help: "required: efs-ap, an EFS access point per volume" },
  fileSystemId: { help: "required: the file system (fs-...) the access points are created on" },
  directoryPerms: { help: "required: octal mode EFS gives the access point's root directory, e.g. 700" },
  uid: { help: "POSIX user id of the access point (default: the allocated GID)" },
  gid: { help: "POSIX group id of the access point (default: allocated from the GID range)" },
  gidRangeStart: { default: "50000", help: "first GID to allocate; set with gidRangeEnd" },
  gidRangeEnd: { default: "60000", help: "last GID to allocate (included); set with gidRangeStart" },
  basePath: { default: "/", help: "directory under which the access points' root directories are made" },
  subPathPattern: {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the pattern syntax, not a template
    default: "${.PV.name}",
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the pattern syntax, not a template
    help: "root directory below basePath, from ${.PVC.name}, ${.PVC.namespace} and ${.PV.name}",
  },
  ensureUniqueDirectory: { default: "true", help: "append a UUID to the subPathPattern directory" },
  reuseAccessPoint: {
    default: "false",
    help: "client token from the PVC name, so that another cluster finds the same access point",
  },
  enableTagging: { default: "true", help: "tag the access points (false: no tags at all)" },
  az: { help: "zone of the mount target for cross-account mounts (ignored without them)" },
  enforceZoneAffinity: {
    default: "false",
    help: "topology of One Zone file systems (true: not supported yet)",
  },
  fileSystemIdConfigRef: {
    help: "file system id from a ConfigMap",
    unsupported: "is not supported by this driver; set fileSystemId",
  },
  fileSystemIdSecretRef: {
    help: "file system id from a Secret",
    unsupported: "is not supported by this driver; set fileSystemId",
  },
};

/** Keys the external-provisioner adds (--extra-create-metadata) or reserves; any key with this prefix is let through. */
const PROVISIONER_PREFIX = "csi.storage.k8s.io/";
export const PVC_NAME = "csi.storage.k8s.io/pvc/name";
export const PVC_NAMESPACE = "csi.storage.k8s.io/pvc/namespace";
export const PV_NAME = "csi.storage.k8s.io/pv/name";

/** The official driver's code default (its docs still say 7000000): 50000 plus the 10,000 access point quota. */
export const DEFAULT_GID_RANGE: GidRange = { start: 50000, end: 60000 };
/** POSIX ids EFS accepts. */
const MAX_ID = 4294967295;

const SUBPATH_VARIABLES: Record<string, string> = {
  "${.PVC.name}": PVC_NAME,
  "${.PVC.namespace}": PVC_NAMESPACE,
  "${.PV.name}": PV_NAME,
};

export interface ProvisioningParams {
  fileSystemId: string;
  /** Octal, 3 or 4 digits, as given. */
  directoryPerms: string;
  uid: number | undefined;
  gid: number | undefined;
  gidRange: GidRange;
  /** Absolute and normalized; "/" when not given. */
  basePath: string;
  subPathPattern: string | undefined;
  ensureUniqueDirectory: boolean;
  reuseAccessPoint: boolean;
  tagging: boolean;
  pvcName: string | undefined;
  pvcNamespace: string | undefined;
  pvName: string | undefined;
}

/** Throws INVALID_ARGUMENT naming the parameter and the rule. */
export function parseProvisioningParams(
  params: Record<string, string>,
  extraTags: Record<string, string> = {},
): ProvisioningParams {
  for (const key of Object.keys(params)) {
    if (key.startsWith(PROVISIONER_PREFIX)) continue;
    const spec = PARAMETERS[key];
    if (!spec) {
      const hint = Object.keys(PARAMETERS).find((k) => k.toLowerCase() === key.toLowerCase());
      throw invalidArgument(
        `parameter ${key}`,
        hint
          ? `unknown parameter (did you mean ${hint}?)`
          : `unknown parameter; known: ${Object.keys(PARAMETERS).join(", ")}`,
      );
    }
    if (spec.unsupported) throw invalidArgument(`parameter ${key}`, spec.unsupported);
  }
  if (optionalBoolean(params, "enforceZoneAffinity")) {
    throw invalidArgument("parameter enforceZoneAffinity", "true is not supported by this driver yet");
  }

  const mode = params["provisioningMode"];
  if (mode === undefined) throw invalidArgument("parameter provisioningMode", "required: set it to efs-ap");
  if (mode !== "efs-ap")
    throw invalidArgument("parameter provisioningMode", `"${mode}" is not supported: only efs-ap`);

  const fileSystemId = (params["fileSystemId"] ?? "").trim();
  if (fileSystemId === "")
    throw invalidArgument("parameter fileSystemId", "required: the id of an EFS file system");
  if (!isFileSystemId(fileSystemId)) {
    throw invalidArgument("parameter fileSystemId", `"${fileSystemId}" is not fs- and 8 to 40 hex digits`);
  }

  const directoryPerms = params["directoryPerms"];
  if (directoryPerms === undefined) {
    throw invalidArgument(
      "parameter directoryPerms",
      "required: the octal mode of the root directory, e.g. 700",
    );
  }
  if (!/^[0-7]{3,4}$/.test(directoryPerms)) {
    throw invalidArgument(
      "parameter directoryPerms",
      `"${directoryPerms}" is not an octal mode of 3 or 4 digits`,
    );
  }

  const uid = optionalId(params, "uid", 0);
  const gid = optionalId(params, "gid", 0);
  const gidRangeStart = optionalId(params, "gidRangeStart", 1);
  const gidRangeEnd = optionalId(params, "gidRangeEnd", 1);
  if ((gidRangeStart === undefined) !== (gidRangeEnd === undefined)) {
    throw invalidArgument(
      gidRangeStart === undefined ? "parameter gidRangeStart" : "parameter gidRangeEnd",
      "gidRangeStart and gidRangeEnd go together: set both or neither",
    );
  }
  if (gidRangeStart !== undefined && gidRangeEnd !== undefined && gidRangeEnd <= gidRangeStart) {
    throw invalidArgument(
      "parameter gidRangeEnd",
      `${gidRangeEnd} must be greater than gidRangeStart ${gidRangeStart}`,
    );
  }
  const gidRange =
    gidRangeStart !== undefined && gidRangeEnd !== undefined
      ? { start: gidRangeStart, end: gidRangeEnd }
      : DEFAULT_GID_RANGE;

  const basePathParam = params["basePath"] ?? "";
  if (hasControlCharacter(basePathParam)) {
    throw invalidArgument("parameter basePath", "has a control character");
  }
  const basePath = posix.resolve("/", basePathParam);

  const subPathPattern = params["subPathPattern"] || undefined;
  const ensureUniqueDirectory = optionalBoolean(params, "ensureUniqueDirectory") ?? true;
  const reuseAccessPoint = optionalBoolean(params, "reuseAccessPoint") ?? false;
  const tagging = optionalBoolean(params, "enableTagging") ?? true;
  if (!tagging && Object.keys(extraTags).length > 0) {
    throw invalidArgument("parameter enableTagging", "false conflicts with the controller's --extra-tags");
  }
  const pvcName = params[PVC_NAME] || undefined;
  if (reuseAccessPoint && pvcName === undefined) {
    throw invalidArgument(
      "parameter reuseAccessPoint",
      `true needs the PVC name (${PVC_NAME}): run the external-provisioner with --extra-create-metadata`,
    );
  }

  return {
    fileSystemId,
    directoryPerms,
    uid,
    gid,
    gidRange,
    basePath,
    subPathPattern,
    ensureUniqueDirectory,
    reuseAccessPoint,
    tagging,
    pvcName,
    pvcNamespace: params[PVC_NAMESPACE] || undefined,
    pvName: params[PV_NAME] || undefined,
  };
}

/**
 * A boolean as Go's strconv.ParseBool reads it, as the official driver does for its parameters
 * and volume attributes; `field` names it in the INVALID_ARGUMENT when it is neither.
 */
export function parseGoBool(field: string, value: string): boolean {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(value)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(value)) return false;
  throw invalidArgument(field, `"${value}" is not true or false`);
}

const parseBoolean = (key: string, value: string): boolean => parseGoBool(`parameter ${key}`, value);

function optionalBoolean(params: Record<string, string>, key: string): boolean | undefined {
  const value = params[key];
  return value === undefined ? undefined : parseBoolean(key, value);
}

function optionalId(params: Record<string, string>, key: string, min: number): number | undefined {
  const value = params[key];
  if (value === undefined) return undefined;
  const n = /^\d{1,10}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > MAX_ID) {
    throw invalidArgument(`parameter ${key}`, `"${value}" is not a whole number from ${min} to ${MAX_ID}`);
  }
  return n;
}

/** How an access point's root directory is named: the stem, and whether a UUID follows it. */
export interface RootDirectoryPlan {
  stem: string;
  unique: boolean;
}

/**
 * The root directory of a new volume's access point, before any UUID: basePath plus the
 * subPathPattern, or plus the volume name (the official default). Throws INVALID_ARGUMENT.
 */
export function planRootDirectory(p: ProvisioningParams, volumeName: string): RootDirectoryPlan {
  if (p.subPathPattern === undefined) {
    // CSI names go up to 128 characters, EFS paths to 100: a name that cannot fit is cut and
    // suffixed with its hash (the official driver fails such volumes).
    let name = volumeName;
    const room = MAX_PATH_LENGTH - (p.basePath === "/" ? 1 : p.basePath.length + 1);
    if (name.length > room && room >= 18)
      name = `${name.slice(0, room - 17)}-${sha256Hex(name).slice(0, 16)}`;
    const stem = posix.join(p.basePath, name);
    checkEfsPath(stem, "the root directory (basePath and the volume name)");
    return { stem, unique: false };
  }

  let interpolated = p.subPathPattern;
  for (const [variable, key] of Object.entries(SUBPATH_VARIABLES)) {
    if (!interpolated.includes(variable)) continue;
    const value = key === PVC_NAME ? p.pvcName : key === PVC_NAMESPACE ? p.pvcNamespace : p.pvName;
    if (value === undefined) {
      throw invalidArgument(
        "parameter subPathPattern",
        `uses ${variable} but the request has no ${key}: run the external-provisioner with --extra-create-metadata`,
      );
    }
    interpolated = interpolated.replaceAll(variable, value);
  }
  if (interpolated.includes("${") || interpolated.includes("}")) {
    throw invalidArgument(
      "parameter subPathPattern",
      `"${p.subPathPattern}" may only use ${Object.keys(SUBPATH_VARIABLES).join(", ")}`,
    );
  }
  const stem = posix.join(p.basePath, interpolated).replace(/\/+$/, "");
  const below = posix.relative(p.basePath, stem);
  if (below === "" || below.startsWith("..")) {
    throw invalidArgument(
      "parameter subPathPattern",
      `"${p.subPathPattern}" must name a directory below basePath`,
    );
  }
  const plan = { stem, unique: p.ensureUniqueDirectory };
  // Check with a UUID in place so that a pattern which can never fit fails before anything is created.
  checkEfsPath(rootDirectoryPath(plan, "00000000-0000-0000-0000-000000000000"), "the root directory");
  return plan;
}

/** The root directory of one create: the stem, with `-UUID` when the plan wants unique directories. */
export const rootDirectoryPath = (plan: RootDirectoryPlan, uuid: string): string =>
  plan.unique ? `${plan.stem}-${uuid}` : plan.stem;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Whether an existing access point's root directory is one this plan could have made. */
export function matchesRootDirectory(path: string, plan: RootDirectoryPlan): boolean {
  if (path === plan.stem) return true;
  return plan.unique && path.startsWith(`${plan.stem}-`) && UUID.test(path.slice(plan.stem.length + 1));
}

const MAX_PATH_LENGTH = 100;
const MAX_COMPONENTS = 4;
const FORBIDDEN = /[$#<>;`|&?{}^*\n]/;

/** EFS's rules for an access point's root directory (the CreateAccessPoint API pattern). */
function checkEfsPath(path: string, what: string): void {
  const fail = (rule: string) =>
    invalidArgument("parameter basePath/subPathPattern", `${what} "${path}" ${rule}`);
  const components = path.split("/").filter(Boolean);
  if (components.length > MAX_COMPONENTS) {
    throw fail(`has ${components.length} directory levels; EFS allows ${MAX_COMPONENTS}`);
  }
  if (path.length > MAX_PATH_LENGTH) {
    throw fail(`is ${path.length} characters long; EFS allows ${MAX_PATH_LENGTH}`);
  }
  for (const c of components) {
    if (c.startsWith(".")) throw fail(`has a directory name starting with "." (${c}); EFS refuses those`);
    const bad = FORBIDDEN.exec(c);
    if (bad) throw fail(`has the character ${JSON.stringify(bad[0])}, which EFS refuses in paths`);
  }
}

const MAX_CLIENT_TOKEN = 64;

/**
 * CreateAccessPoint's idempotency token: the volume name, as the official driver sends it (its hash
 * when longer than EFS's 64 characters); with reuseAccessPoint, the hash of the PVC name.
 */
export function clientTokenFor(volumeName: string, p: ProvisioningParams): string {
  if (p.reuseAccessPoint && p.pvcName !== undefined) return sha256Hex(p.pvcName);
  return volumeName.length <= MAX_CLIENT_TOKEN ? volumeName : sha256Hex(volumeName);
}

const sha256Hex = (text: string): string => createHash("sha256").update(text).digest("hex");
