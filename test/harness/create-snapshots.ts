// EC2 CreateSnapshots (multi-volume, crash-consistent snapshots of one instance's volumes). moto
// has it only in part: it ignores ExcludeDataVolumeIds and answers no State. The proxy answers it
// itself: the instance's volumes from moto's DescribeInstances, minus the boot volume when asked
// and the excluded data volumes, one moto CreateSnapshot each with the request's tags, answered in
// CreateSnapshots' own shape (SnapshotInfo, with state). The simulated disks are copied one after
// another, not at one instant: tests stop writing (sync) before taking a group snapshot.
import { awsError, escapeXml, type WireResponse } from "./aws-request.ts";

export async function createSnapshots(
  params: URLSearchParams,
  askMoto: (query: URLSearchParams) => Promise<WireResponse>,
  onSnapshot: (volumeId: string, snapshotId: string) => Promise<void>,
  pendingMs: number,
  readyAt: Map<string, number>,
): Promise<WireResponse> {
  const instanceId = params.get("InstanceSpecification.InstanceId") ?? "";
  if (!instanceId) {
    return awsError(
      "ec2",
      400,
      "MissingParameter",
      "The request must contain the parameter InstanceSpecification.InstanceId",
    );
  }
  const described = await askMoto(
    new URLSearchParams({ Action: "DescribeInstances", Version: "2016-11-15", "InstanceId.1": instanceId }),
  );
  if (described.status !== 200) return described;
  const xml = described.body.toString();
  const root = /<rootDeviceName>([^<]*)<\/rootDeviceName>/.exec(xml)?.[1];
  const mappings = /<blockDeviceMapping>([\s\S]*?)<\/blockDeviceMapping>/.exec(xml)?.[1] ?? "";
  const volumes: { device: string; volumeId: string }[] = [];
  for (const item of mappings.split("<item>").slice(1)) {
    const device = /<deviceName>([^<]*)<\/deviceName>/.exec(item)?.[1] ?? "";
    const volumeId = /<volumeId>([^<]*)<\/volumeId>/.exec(item)?.[1] ?? "";
    if (volumeId) volumes.push({ device, volumeId });
  }
  const excludeBoot = params.get("InstanceSpecification.ExcludeBootVolume") === "true";
  const excluded = new Set<string>();
  for (let n = 1; params.has(`InstanceSpecification.ExcludeDataVolumeId.${n}`); n++) {
    excluded.add(params.get(`InstanceSpecification.ExcludeDataVolumeId.${n}`) ?? "");
  }
  const bootVolume = volumes.find((v) => v.device === root)?.volumeId;
  if (bootVolume && excluded.has(bootVolume)) {
    return awsError(
      "ec2",
      400,
      "InvalidParameterValue",
      "The root volume cannot be excluded with ExcludeDataVolumeIds; use ExcludeBootVolume",
    );
  }
  const chosen = volumes.filter((v) =>
    v.volumeId === bootVolume ? !excludeBoot : !excluded.has(v.volumeId),
  );

  const items: string[] = [];
  for (const { volumeId } of chosen) {
    const create = new URLSearchParams({
      Action: "CreateSnapshot",
      Version: "2016-11-15",
      VolumeId: volumeId,
    });
    const description = params.get("Description");
    if (description) create.set("Description", description);
    for (const [name, value] of params) if (name.startsWith("TagSpecification.")) create.set(name, value);
    const made = await askMoto(create);
    if (made.status !== 200) return made;
    const body = made.body.toString();
    const value = (name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(body)?.[1] ?? "";
    const snapshotId = value("snapshotId");
    await onSnapshot(volumeId, snapshotId);
    let state = value("status") || "completed";
    if (pendingMs > 0) {
      readyAt.set(snapshotId, Date.now() + pendingMs);
      state = "pending";
    }
    const tagSet = /<tagSet>[\s\S]*?<\/tagSet>/.exec(body)?.[0] ?? "<tagSet/>";
    items.push(
      `<item><snapshotId>${snapshotId}</snapshotId><volumeId>${escapeXml(volumeId)}</volumeId><state>${state}</state>` +
        `<volumeSize>${value("volumeSize")}</volumeSize><startTime>${value("startTime")}</startTime>` +
        `<progress>${value("progress")}</progress><ownerId>${value("ownerId")}</ownerId>` +
        `<description>${value("description")}</description><encrypted>${value("encrypted") || "false"}</encrypted>${tagSet}</item>`,
    );
  }
  const answer =
    '<CreateSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>fault-proxy-snapshots</requestId>' +
    `<snapshotSet>${items.join("")}</snapshotSet></CreateSnapshotsResponse>`;
  return { status: 200, headers: { "content-type": "text/xml" }, body: Buffer.from(answer) };
}
