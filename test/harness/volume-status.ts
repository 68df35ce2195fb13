// EC2 DescribeVolumeStatus, which moto does not implement ("not yet implemented"): the fault proxy
// answers it from moto's own volumes, each "ok" unless a test set an impairment for it, the way
// EC2 reports a failed io-enabled check, degraded I/O or a potential data inconsistency.
import { escapeXml, type WireResponse } from "./aws-request.ts";

export interface VolumeStatusFault {
  /** EC2's summary of the checks. */
  status: "ok" | "warning" | "impaired" | "insufficient-data";
  /** "failed" when EC2 disabled the volume's I/O. Default "passed". */
  ioEnabled?: "passed" | "failed";
  /** Provisioned IOPS volumes only in EC2. Default "not-applicable". */
  ioPerformance?: "normal" | "degraded" | "severely-degraded" | "stalled" | "not-applicable";
  events?: { type: string; description: string }[];
}

/**
 * The answer to a DescribeVolumeStatus call, as EC2 gives it: VolumeId.N (an unknown one fails the
 * whole call with InvalidVolume.NotFound, moto's DescribeVolumes answers that itself), the filter
 * volume-status.status, and MaxResults/NextToken paging (not allowed together with VolumeId.N).
 * `describeVolumes` forwards a DescribeVolumes query to moto with the caller's credentials.
 */
export async function describeVolumeStatus(
  params: URLSearchParams,
  faults: Map<string, VolumeStatusFault>,
  describeVolumes: (query: URLSearchParams) => Promise<WireResponse>,
): Promise<WireResponse> {
  const ids = numbered(params, "VolumeId");
  const query = new URLSearchParams({ Action: "DescribeVolumes", Version: "2016-11-15" });
  for (const [i, id] of ids.entries()) query.set(`VolumeId.${i + 1}`, id);
  const volumes = await describeVolumes(query);
  if (volumes.status !== 200) return volumes;

  let wantedStatuses: string[] | undefined;
  for (let n = 1; params.has(`Filter.${n}.Name`); n++) {
    if (params.get(`Filter.${n}.Name`) === "volume-status.status")
      wantedStatuses = numbered(params, `Filter.${n}.Value`);
  }
  const items = volumeZones(volumes.body.toString())
    .map(([volumeId, zone]) => ({ volumeId, zone, fault: faults.get(volumeId) ?? { status: "ok" as const } }))
    .filter((item) => !wantedStatuses || wantedStatuses.includes(item.fault.status));

  const max = Number(params.get("MaxResults") ?? 0);
  const start = Number(params.get("NextToken") ?? 0);
  const page = max > 0 ? items.slice(start, start + max) : items;
  const next = max > 0 && start + max < items.length ? `<nextToken>${start + max}</nextToken>` : "";
  const xml =
    '<DescribeVolumeStatusResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">' +
    `<requestId>fault-proxy-volume-status</requestId><volumeStatusSet>${page.map(itemXml).join("")}</volumeStatusSet>` +
    `${next}</DescribeVolumeStatusResponse>`;
  return { status: 200, headers: { "content-type": "text/xml" }, body: Buffer.from(xml) };
}

function itemXml({ volumeId, zone, fault }: { volumeId: string; zone: string; fault: VolumeStatusFault }) {
  const detail = (name: string, status: string) =>
    `<item><name>${name}</name><status>${status}</status></item>`;
  const events = (fault.events ?? [])
    .map(
      (e, i) =>
        `<item><eventId>evol-${volumeId.slice(4)}-${i}</eventId><eventType>${escapeXml(e.type)}</eventType>` +
        `<description>${escapeXml(e.description)}</description></item>`,
    )
    .join("");
  return (
    `<item><volumeId>${volumeId}</volumeId><availabilityZone>${zone}</availabilityZone>` +
    `<volumeStatus><status>${fault.status}</status><details>` +
    detail("io-enabled", fault.ioEnabled ?? "passed") +
    detail("io-performance", fault.ioPerformance ?? "not-applicable") +
    `</details></volumeStatus><eventsSet>${events}</eventsSet><actionsSet/></item>`
  );
}

/** Values of Name.1, Name.2, ... in order. */
function numbered(params: URLSearchParams, name: string): string[] {
  const values: string[] = [];
  for (let n = 1; params.has(`${name}.${n}`); n++) values.push(params.get(`${name}.${n}`) ?? "");
  return values;
}

/** [volume id, zone] of each volume in a DescribeVolumes answer (attachments and tags left out). */
function volumeZones(xml: string): [string, string][] {
  const flat = xml
    .replace(/<attachmentSet>[\s\S]*?<\/attachmentSet>/g, "")
    .replace(/<tagSet>[\s\S]*?<\/tagSet>/g, "");
  // With the nested sets gone, what is left in each <item> is one volume, its elements in any order.
  return flat
    .split("<item>")
    .slice(1)
    .map((item): [string, string] => [xmlValue(item, "volumeId"), xmlValue(item, "availabilityZone")])
    .filter(([id]) => id !== "");
}

const xmlValue = (xml: string, element: string) =>
  new RegExp(`<${element}>([^<]*)</${element}>`).exec(xml)?.[1] ?? "";
