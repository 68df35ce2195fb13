// EC2 CopyVolumes, which moto does not implement: "a crash-consistent, point-in-time copy of an
// existing EBS volume within the same Availability Zone". The proxy makes the copy with moto's
// CreateVolume in the source's zone (size at least the source's, encryption and key inherited, as
// EC2 does), answers in CopyVolumes' shape, and remembers the source, which EC2 shows as the copy's
// SourceVolumeId in DescribeVolumes (moto does not know it).
import { awsError, topLevelItems, type WireResponse } from "./aws-request.ts";

export interface CopyEmulation {
  /** Copy's volume id -> source volume id. */
  readonly sources: Map<string, string>;
}

export async function copyVolumes(
  params: URLSearchParams,
  askMoto: (query: URLSearchParams) => Promise<WireResponse>,
  emulation: CopyEmulation,
): Promise<WireResponse> {
  const sourceId = params.get("SourceVolumeId") ?? "";
  if (!sourceId)
    return awsError("ec2", 400, "MissingParameter", "The request must contain the parameter SourceVolumeId");
  const described = await askMoto(
    new URLSearchParams({ Action: "DescribeVolumes", Version: "2016-11-15", "VolumeId.1": sourceId }),
  );
  if (described.status !== 200) return described;
  const source = described.body
    .toString()
    .replace(/<attachmentSet>[\s\S]*?<\/attachmentSet>/g, "")
    .replace(/<tagSet>[\s\S]*?<\/tagSet>/g, "");
  const value = (name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(source)?.[1];
  const sourceSize = Number(value("size") ?? 0);
  const size = Number(params.get("Size") ?? sourceSize);
  if (size < sourceSize) {
    return awsError(
      "ec2",
      400,
      "InvalidParameterValue",
      `The size of the copy (${size} GiB) must be at least the size of the source volume (${sourceSize} GiB).`,
    );
  }
  const create = new URLSearchParams({
    Action: "CreateVolume",
    Version: "2016-11-15",
    AvailabilityZone: value("availabilityZone") ?? "",
    Size: String(size),
    VolumeType: params.get("VolumeType") ?? "gp2",
  });
  for (const name of ["Iops", "Throughput", "MultiAttachEnabled"]) {
    const v = params.get(name);
    if (v !== null) create.set(name, v);
  }
  if (value("encrypted") === "true") {
    create.set("Encrypted", "true");
    const key = value("kmsKeyId");
    if (key) create.set("KmsKeyId", key);
  }
  for (const [name, v] of params) if (name.startsWith("TagSpecification.")) create.set(name, v);
  const created = await askMoto(create);
  if (created.status !== 200) return created;
  const inner =
    /<CreateVolumeResponse[^>]*>([\s\S]*)<\/CreateVolumeResponse>/.exec(created.body.toString())?.[1] ?? "";
  const fields = inner.replace(/<requestId>[^<]*<\/requestId>/, "");
  const copyId = /<volumeId>([^<]*)<\/volumeId>/.exec(fields)?.[1] ?? "";
  emulation.sources.set(copyId, sourceId);
  const xml =
    '<CopyVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>fault-proxy-copy</requestId>' +
    `<volumeSet><item>${fields}<sourceVolumeId>${sourceId}</sourceVolumeId></item></volumeSet></CopyVolumesResponse>`;
  return { status: 200, headers: { "content-type": "text/xml" }, body: Buffer.from(xml) };
}

/** Adds sourceVolumeId to the copies in a DescribeVolumes answer. */
export function showSources(response: WireResponse, emulation: CopyEmulation): WireResponse {
  if (response.status !== 200 || emulation.sources.size === 0) return response;
  const xml = response.body.toString();
  const open = xml.indexOf("<volumeSet>");
  const close = xml.lastIndexOf("</volumeSet>");
  if (open < 0 || close < 0) return response;
  const items = topLevelItems(xml.slice(open + "<volumeSet>".length, close)).map((item) => {
    const own = item.replace(/<attachmentSet>[\s\S]*?<\/attachmentSet>/g, "");
    const source = emulation.sources.get(/<volumeId>([^<]*)<\/volumeId>/.exec(own)?.[1] ?? "");
    return source ? item.replace(/<\/item>$/, `<sourceVolumeId>${source}</sourceVolumeId></item>`) : item;
  });
  const body = `${xml.slice(0, open)}<volumeSet>${items.join("")}</volumeSet>${xml.slice(close + "</volumeSet>".length)}`;
  return { ...response, body: Buffer.from(body) };
}
