import { describe, expect, it } from "vitest";
import type { AwsCall, WireResponse } from "./aws-request.ts";
import { createIdempotencyMemory } from "./idempotency.ts";

const created = (volumeId: string): WireResponse => ({
  status: 200,
  headers: { "content-type": "text/xml" },
  body: Buffer.from(`<CreateVolumeResponse><volumeId>${volumeId}</volumeId></CreateVolumeResponse>`),
});

const createVolume = (query: string): AwsCall => ({
  service: "ec2",
  action: "CreateVolume",
  params: new URLSearchParams(query),
});

/** The answers to each query sent in turn with one memory; every executed call creates a new volume. */
async function answers(...queries: string[]): Promise<string[]> {
  const memory = createIdempotencyMemory();
  let volumes = 0;
  const results: string[] = [];
  for (const query of queries) {
    const response = await memory.run(createVolume(query), "us-east-1", async () =>
      created(`vol-${++volumes}`),
    );
    const body = response.body.toString();
    results.push(/<volumeId>([^<]*)</.exec(body)?.[1] ?? /<Code>([^<]*)</.exec(body)?.[1] ?? body);
  }
  return results;
}

const base = "Action=CreateVolume&Version=2016-11-15&ClientToken=t1&AvailabilityZone=us-east-1a&Size=10";

describe("ClientToken idempotency compares parameters as EC2 does", () => {
  it("treats the same parameters in another query-string order as the same request", async () => {
    expect(
      await answers(
        base,
        "Size=10&ClientToken=t1&AvailabilityZone=us-east-1a&Version=2016-11-15&Action=CreateVolume",
      ),
    ).toEqual(["vol-1", "vol-1"]);
  });

  it("treats tags in another order, under other list numbers, as the same request", async () => {
    const tags =
      "&TagSpecification.1.ResourceType=volume" +
      "&TagSpecification.1.Tag.1.Key=CSIVolumeName&TagSpecification.1.Tag.1.Value=pvc-1" +
      "&TagSpecification.1.Tag.2.Key=KubernetesCluster&TagSpecification.1.Tag.2.Value=c1";
    const reordered =
      "&TagSpecification.1.Tag.2.Value=pvc-1&TagSpecification.1.Tag.1.Key=KubernetesCluster" +
      "&TagSpecification.1.Tag.2.Key=CSIVolumeName&TagSpecification.1.ResourceType=volume" +
      "&TagSpecification.1.Tag.1.Value=c1";
    expect(await answers(base + tags, base + reordered)).toEqual(["vol-1", "vol-1"]);
  });

  it("treats tag specifications in another order as the same request", async () => {
    const volume = (n: number) =>
      `&TagSpecification.${n}.ResourceType=volume&TagSpecification.${n}.Tag.1.Key=a`;
    const snapshot = (n: number) =>
      `&TagSpecification.${n}.ResourceType=snapshot&TagSpecification.${n}.Tag.1.Key=b`;
    expect(await answers(base + volume(1) + snapshot(2), base + snapshot(1) + volume(2))).toEqual([
      "vol-1",
      "vol-1",
    ]);
  });

  it("ignores signature parameters of query authentication", async () => {
    const signed = `${base}&X-Amz-Date=20260101T000000Z&X-Amz-Signature=abc&SignatureVersion=2&Timestamp=x`;
    expect(await answers(base, signed)).toEqual(["vol-1", "vol-1"]);
  });

  it("still answers IdempotentParameterMismatch for another tag value, a missing tag or another size", async () => {
    const tag = (value: string) =>
      `&TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=CSIVolumeName&TagSpecification.1.Tag.1.Value=${value}`;
    expect(await answers(base + tag("pvc-1"), base + tag("pvc-2"))).toEqual([
      "vol-1",
      "IdempotentParameterMismatch",
    ]);
    expect(await answers(base + tag("pvc-1"), base)).toEqual(["vol-1", "IdempotentParameterMismatch"]);
    expect(await answers(base, base.replace("Size=10", "Size=20"))).toEqual([
      "vol-1",
      "IdempotentParameterMismatch",
    ]);
  });

  it("keeps a key and a value apart: a tag's key and value swapped is another request", async () => {
    const tag = (key: string, value: string) =>
      `&TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=${key}&TagSpecification.1.Tag.1.Value=${value}`;
    expect(await answers(base + tag("a", "b"), base + tag("b", "a"))).toEqual([
      "vol-1",
      "IdempotentParameterMismatch",
    ]);
  });
});
