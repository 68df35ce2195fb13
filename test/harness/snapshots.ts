// What EC2 does with snapshots and moto does not, for the fault proxy:
// - a new snapshot is "pending" for a while (moto's are "completed" at once), so that ready_to_use
//   false-then-true can be tested: `pendingMs` per snapshot from its CreateSnapshot;
// - EnableFastSnapshotRestores (not in moto): each zone of the region succeeds, any other is an
//   Unsuccessful entry, as EC2 answers it; the zones are recorded;
// - LockSnapshot (not in moto): the lock is recorded and answered. Deleting a locked snapshot is not
//   refused here: EC2's error code for that is not documented, and a guessed code would make a
//   test pass against a fake only.
import { escapeXml, type WireResponse } from "./aws-request.ts";

export interface SnapshotEmulation {
  /** How long snapshots created from now on stay "pending". 0: completed at once (moto). */
  pendingMs: number;
  /** Snapshot id -> when it completes (ms since the epoch). */
  readonly readyAt: Map<string, number>;
  /** Snapshot id -> zones with Fast Snapshot Restore enabled. */
  readonly fastRestores: Map<string, string[]>;
  /** Snapshot id -> the LockSnapshot parameters received. */
  readonly locks: Map<string, Record<string, string>>;
  reset(): void;
}

export function createSnapshotEmulation(): SnapshotEmulation {
  const emulation: SnapshotEmulation = {
    pendingMs: 0,
    readyAt: new Map(),
    fastRestores: new Map(),
    locks: new Map(),
    reset() {
      emulation.pendingMs = 0;
      emulation.readyAt.clear();
      emulation.fastRestores.clear();
      emulation.locks.clear();
    },
  };
  return emulation;
}

/** Records a new snapshot's completion time and shows it pending in CreateSnapshot's answer. */
export function afterCreateSnapshot(response: WireResponse, emulation: SnapshotEmulation): WireResponse {
  const id = /<snapshotId>([^<]*)<\/snapshotId>/.exec(response.body.toString())?.[1];
  if (!id || emulation.pendingMs <= 0) return response;
  emulation.readyAt.set(id, Date.now() + emulation.pendingMs);
  return showPending(response, emulation);
}

/** Snapshots still within their pending time show status "pending" and their progress. */
export function showPending(response: WireResponse, emulation: SnapshotEmulation): WireResponse {
  if (response.status !== 200 || emulation.readyAt.size === 0) return response;
  const now = Date.now();
  const body = response.body
    .toString()
    .replace(/<snapshotId>([^<]*)<\/snapshotId>[\s\S]*?<\/status>/g, (part, id) => {
      const readyAt = emulation.readyAt.get(id);
      if (readyAt === undefined || readyAt <= now) return part;
      return part.replace(/<status>[^<]*<\/status>/, "<status>pending</status>");
    });
  return { ...response, body: Buffer.from(body) };
}

/** EnableFastSnapshotRestores: every known zone succeeds, others are refused per zone. */
export function enableFastSnapshotRestores(
  params: URLSearchParams,
  zones: string[],
  emulation: SnapshotEmulation,
): WireResponse {
  const snapshots = numbered(params, "SourceSnapshotId");
  const asked = numbered(params, "AvailabilityZone");
  const ok = asked.filter((z) => zones.includes(z));
  const refused = asked.filter((z) => !zones.includes(z));
  let successful = "";
  let unsuccessful = "";
  for (const id of snapshots) {
    emulation.fastRestores.set(id, [...new Set([...(emulation.fastRestores.get(id) ?? []), ...ok])]);
    for (const zone of ok) {
      successful += `<item><snapshotId>${id}</snapshotId><availabilityZone>${zone}</availabilityZone><state>enabling</state></item>`;
    }
    if (refused.length > 0) {
      const errors = refused
        .map(
          (zone) =>
            `<item><availabilityZone>${escapeXml(zone)}</availabilityZone><error><code>InvalidParameterValue</code>` +
            `<message>${escapeXml(`invalid availability zone ${zone}`)}</message></error></item>`,
        )
        .join("");
      unsuccessful += `<item><snapshotId>${id}</snapshotId><fastSnapshotRestoreStateErrorSet>${errors}</fastSnapshotRestoreStateErrorSet></item>`;
    }
  }
  return xmlAnswer(
    "EnableFastSnapshotRestoresResponse",
    `<successful>${successful}</successful><unsuccessful>${unsuccessful}</unsuccessful>`,
  );
}

/** LockSnapshot: recorded and answered with the lock state EC2 gives. */
export function lockSnapshot(params: URLSearchParams, emulation: SnapshotEmulation): WireResponse {
  const id = params.get("SnapshotId") ?? "";
  const lock = Object.fromEntries(
    ["LockMode", "LockDuration", "ExpirationDate", "CoolOffPeriod"]
      .filter((k) => params.has(k))
      .map((k) => [k, params.get(k) ?? ""]),
  );
  emulation.locks.set(id, lock);
  const state =
    lock["LockMode"] === "compliance" && lock["CoolOffPeriod"] ? "compliance-cooloff" : lock["LockMode"];
  return xmlAnswer(
    "LockSnapshotResponse",
    `<snapshotId>${escapeXml(id)}</snapshotId><lockState>${escapeXml(state ?? "")}</lockState>`,
  );
}

function xmlAnswer(name: string, inner: string): WireResponse {
  const xml = `<${name} xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>fault-proxy</requestId>${inner}</${name}>`;
  return { status: 200, headers: { "content-type": "text/xml" }, body: Buffer.from(xml) };
}

function numbered(params: URLSearchParams, name: string): string[] {
  const values: string[] = [];
  for (let n = 1; params.has(`${name}.${n}`); n++) values.push(params.get(`${name}.${n}`) ?? "");
  return values;
}
