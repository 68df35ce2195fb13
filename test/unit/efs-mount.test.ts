import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import type { CsiError } from "../../src/csi/errors.ts";
import { parseVolumeHandle } from "../../src/efs/handle.ts";
import {
  type EfsMountInput,
  efsMountCommand,
  fileSystemDnsName,
  mountMismatch,
  splitFlags,
} from "../../src/efs/mount.ts";
import type { MountEntry } from "../../src/host/mounts.ts";

const FS = "fs-0123456789abcdef0";
const AP = "fsap-0123456789abcdef0";
const TARGET = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv-1/mount";
const NFS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport";

function args(volumeId: string, more: Partial<EfsMountInput> = {}): string[] {
  return command(volumeId, more).args;
}

function command(volumeId: string, more: Partial<EfsMountInput> = {}) {
  return efsMountCommand(
    {
      handle: parseVolumeHandle(volumeId),
      readOnly: false,
      mountFlags: [],
      volumeContext: {},
      efsUtils: true,
      region: "us-east-1",
      ...more,
    },
    TARGET,
  );
}

function refusal(volumeId: string, more: Partial<EfsMountInput>): CsiError {
  try {
    command(volumeId, more);
  } catch (err) {
    return err as CsiError;
  }
  throw new Error("expected a refusal");
}

describe("efsMountCommand with amazon-efs-utils (mount -t efs)", () => {
  it("mounts the whole file system over TLS", () => {
    expect(args(FS)).toEqual(["-t", "efs", "-o", "tls", "--", `${FS}:/`, TARGET]);
  });

  it("mounts an access point with tls and accesspoint=", () => {
    expect(args(`${FS}::${AP}`)).toEqual([
      "-t",
      "efs",
      "-o",
      `tls,accesspoint=${AP}`,
      "--",
      `${FS}:/`,
      TARGET,
    ]);
  });

  it("mounts a subpath, below the access point's root when there is one", () => {
    expect(args(`${FS}:/data/app`)).toEqual(["-t", "efs", "-o", "tls", "--", `${FS}:/data/app`, TARGET]);
    expect(args(`${FS}:/data:${AP}`)).toEqual([
      "-t",
      "efs",
      "-o",
      `tls,accesspoint=${AP}`,
      "--",
      `${FS}:/data`,
      TARGET,
    ]);
  });

  it("mounts read-only when asked", () => {
    expect(args(`${FS}::${AP}`, { readOnly: true })).toEqual([
      "-t",
      "efs",
      "-o",
      `tls,accesspoint=${AP},ro`,
      "--",
      `${FS}:/`,
      TARGET,
    ]);
  });

  it("adds user flags after its own, collapsing duplicates", () => {
    expect(
      args(`${FS}::${AP}`, {
        mountFlags: ["tls", "iam", `accesspoint=${AP}`, "noatime,iam", "nfsvers=4.1", "ro"],
      }),
    ).toEqual([
      "-t",
      "efs",
      "-o",
      `tls,accesspoint=${AP},ro,iam,noatime,nfsvers=4.1`,
      "--",
      `${FS}:/`,
      TARGET,
    ]);
  });

  it("keeps a mount-target DNS name from the handle", () => {
    const dns = `${FS}.efs.eu-west-1.amazonaws.com`;
    expect(args(`${dns}:/x`)).toEqual(["-t", "efs", "-o", "tls", "--", `${dns}:/x`, TARGET]);
  });

  it("reads the official driver's volumeAttributes", () => {
    expect(args(FS, { volumeContext: { encryptInTransit: "false" } })).toEqual([
      "-t",
      "efs",
      "--",
      `${FS}:/`,
      TARGET,
    ]);
    // An access point needs TLS whatever encryptInTransit says (efs-utils refuses it without).
    expect(args(`${FS}::${AP}`, { volumeContext: { encryptInTransit: "false" } })).toContain(
      `tls,accesspoint=${AP}`,
    );
    expect(
      args(FS, {
        volumeContext: {
          path: "/legacy",
          MountTargetIp: "10.0.1.5",
          crossaccount: "true",
          "storage.kubernetes.io/csiProvisionerIdentity": "123-efs.csi.aws.com",
        },
      }),
    ).toEqual(["-t", "efs", "-o", "tls,mounttargetip=10.0.1.5,crossaccount", "--", `${FS}:/legacy`, TARGET]);
  });

  it("takes an access point from a mount flag when the handle names none, as the official driver does", () => {
    expect(args(FS, { mountFlags: [`accesspoint=${AP}`, "tls"] })).toEqual([
      "-t",
      "efs",
      "-o",
      `tls,accesspoint=${AP}`,
      "--",
      `${FS}:/`,
      TARGET,
    ]);
  });

  it("drops awscredsuri, as the official driver does", () => {
    const c = command(FS, { mountFlags: ["awscredsuri=/v2/credentials/x"] });
    expect(c.options).toEqual(["tls"]);
    expect(c.dropped).toHaveLength(1);
  });
});

describe("efsMountCommand without amazon-efs-utils, plain NFS (encryptInTransit=false)", () => {
  const nfs4 = { efsUtils: false, volumeContext: { encryptInTransit: "false" } };

  it("mounts the file system's DNS name with AWS's NFS options", () => {
    const c = command(FS, nfs4);
    expect(c.relay).toBeUndefined();
    expect(c.args).toEqual(["-t", "nfs4", "-o", NFS, "--", `${FS}.efs.us-east-1.amazonaws.com:/`, TARGET]);
  });

  it("takes the notls flag for encryptInTransit=false", () => {
    expect(args(FS, { efsUtils: false, mountFlags: ["notls"] })).toEqual(args(FS, nfs4));
  });

  it("mounts a subpath, read-only", () => {
    expect(args(`${FS}:/data/app`, { ...nfs4, readOnly: true })).toEqual([
      "-t",
      "nfs4",
      "-o",
      `${NFS},ro`,
      "--",
      `${FS}.efs.us-east-1.amazonaws.com:/data/app`,
      TARGET,
    ]);
  });

  it("lets user flags replace the tunable defaults in place, and appends the others", () => {
    expect(
      args(`${FS}:/data`, { ...nfs4, mountFlags: ["soft", "timeo=150", "noac", "NFSVERS=4.1", "soft"] }),
    ).toEqual([
      "-t",
      "nfs4",
      "-o",
      "nfsvers=4.1,rsize=1048576,wsize=1048576,soft,timeo=150,retrans=2,noresvport,noac",
      "--",
      `${FS}.efs.us-east-1.amazonaws.com:/data`,
      TARGET,
    ]);
  });

  it("mounts a mount-target IP from volumeAttributes, IPv6 in brackets", () => {
    const at = (ip: string) =>
      args(FS, { efsUtils: false, volumeContext: { encryptInTransit: "false", mounttargetip: ip } });
    expect(at("10.0.1.5").at(-2)).toBe("10.0.1.5:/");
    expect(at("fd00::5").at(-2)).toBe("[fd00::5]:/");
  });

  it("names China regions' file systems under amazonaws.com.cn", () => {
    expect(fileSystemDnsName(FS, "cn-north-1")).toBe(`${FS}.efs.cn-north-1.amazonaws.com.cn`);
  });

  it("refuses the TLS flags, an access point and efs-utils' own options", () => {
    for (const flag of ["tls", "iam", "az=us-east-1a"]) {
      const err = refusal(FS, { ...nfs4, mountFlags: [flag] });
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.message).toContain(`mount flag ${flag}`);
    }
    const ap = refusal(`${FS}::${AP}`, { efsUtils: false, mountFlags: ["notls"] });
    expect(ap.code).toBe(status.INVALID_ARGUMENT);
    expect(ap.message).toContain("TLS only");
  });
});

describe("efsMountCommand without amazon-efs-utils, TLS through the relay (the default)", () => {
  const relayed = { efsUtils: false, relayPort: 20123 };

  it("mounts 127.0.0.1 on the relay's port, and says what the relay is for", () => {
    const c = command(FS, relayed);
    expect(c.args).toEqual(["-t", "nfs4", "-o", `${NFS},port=20123`, "--", "127.0.0.1:/", TARGET]);
    expect(c.relay).toEqual({
      fileSystemId: FS,
      accessPointId: undefined,
      mountTargetIp: undefined,
      az: undefined,
      iam: false,
    });
  });

  it("mounts an access point's subpath read-only, the access point in the relay's certificate", () => {
    const c = command(`${FS}:/data:${AP}`, { ...relayed, readOnly: true });
    expect(c.args).toEqual(["-t", "nfs4", "-o", `${NFS},port=20123,ro`, "--", "127.0.0.1:/data", TARGET]);
    expect(c.relay?.accessPointId).toBe(AP);
  });

  it("gives iam, az and mounttargetip to the relay, not to the kernel", () => {
    const c = command(FS, {
      ...relayed,
      mountFlags: ["tls", "iam", "az=us-east-1b", "noocsp", "region=us-east-1", "noac"],
      volumeContext: { mounttargetip: "10.0.1.5" },
    });
    expect(c.options).toEqual([...NFS.split(","), "port=20123", "noac"]);
    expect(c.relay).toEqual({
      fileSystemId: FS,
      accessPointId: undefined,
      mountTargetIp: "10.0.1.5",
      az: "us-east-1b",
      iam: true,
    });
  });

  it("refuses what only efs-utils does, naming the flag", () => {
    for (const flag of [
      "tlsport=20500",
      "cafile=/x.pem",
      "awsprofile=p",
      "ocsp",
      "netns=/proc/1/ns/net",
      "verify=0",
    ]) {
      const err = refusal(FS, { ...relayed, mountFlags: [flag] });
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.message).toContain(`mount flag ${flag}`);
      expect(err.message).toContain("relay takes only");
    }
    expect(refusal(FS, { ...relayed, mountFlags: ["region=eu-west-1"] }).message).toContain("node's region");
    expect(refusal(FS, { ...relayed, mountFlags: ["az=1a"] }).message).toContain("mount flag az=1a");
    expect(refusal(FS, { ...relayed, mountFlags: ["port=2049"] }).message).toContain("mount flag port");
    expect(refusal(FS, { ...relayed, volumeContext: { crossaccount: "true" } }).code).toBe(
      status.FAILED_PRECONDITION,
    );
  });
});

describe("efsMountCommand refuses", () => {
  const cases: [string, Partial<EfsMountInput>, string, string?][] = [
    ["rw on a read-only publish", { readOnly: true, mountFlags: ["rw"] }, "mount flag rw"],
    ["ro and rw together", { mountFlags: ["ro", "rw"] }, "mount flag rw"],
    ["hard and soft together", { efsUtils: false, mountFlags: ["hard", "soft"] }, "mount flag soft"],
    ["another NFS version", { mountFlags: ["nfsvers=4.0"] }, "mount flag nfsvers=4.0"],
    ["another NFS version (vers)", { efsUtils: false, mountFlags: ["vers=3"] }, "mount flag vers=3"],
    [
      "two values of one option",
      { efsUtils: false, mountFlags: ["timeo=10", "timeo=20"] },
      "mount flag timeo=20",
    ],
    ["another server", { mountFlags: ["addr=10.9.9.9"] }, "mount flag addr=10.9.9.9"],
    ["a mount target in the flags", { mountFlags: ["mounttargetip=10.0.0.1"] }, "mount flag mounttargetip"],
    ["bind", { mountFlags: ["bind"] }, "mount flag bind"],
    [
      "tls with encryptInTransit=false",
      { mountFlags: ["tls"], volumeContext: { encryptInTransit: "false" } },
      "mount flag tls",
    ],
    ["an unknown volumeAttribute", { volumeContext: { capacity: "5Gi" } }, "volume_context capacity"],
    ["a bad boolean", { volumeContext: { encryptInTransit: "yes" } }, "volume_context encryptInTransit"],
    [
      "a mount target list",
      { volumeContext: { mounttargetip: "use1-az1:10.0.0.1,use1-az2:10.0.1.1" } },
      "volume_context mounttargetip",
    ],
    ["a relative path attribute", { volumeContext: { path: "data" } }, "volume_context path"],
  ];
  for (const [what, input, field] of cases) {
    it(`${what} with INVALID_ARGUMENT naming ${field}`, () => {
      const err = refusal(FS, input);
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.message).toContain(field);
    });
  }

  it("an accesspoint= flag other than the handle's", () => {
    const err = refusal(`${FS}::${AP}`, { mountFlags: ["accesspoint=fsap-99999999"] });
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.message).toContain("mount flag accesspoint=fsap-99999999");
  });
});

describe("splitFlags", () => {
  it("splits on commas outside quotes", () => {
    expect(splitFlags(' hard, timeo=600 ,,context="system_u:object_r:nfs_t:s0:c1,c2"')).toEqual([
      "hard",
      "timeo=600",
      'context="system_u:object_r:nfs_t:s0:c1,c2"',
    ]);
  });
});

describe("mountMismatch", () => {
  const entry = (over: Partial<MountEntry>): MountEntry => ({
    id: 1,
    parentId: 0,
    major: 0,
    minor: 50,
    root: "/",
    mountPoint: TARGET,
    mountOptions: ["rw", "relatime"],
    optionalFields: [],
    fsType: "nfs4",
    source: "127.0.0.1:/",
    superOptions: [],
    ...over,
  });

  it("accepts the same mount", () => {
    expect(mountMismatch(entry({}), command(`${FS}::${AP}`), FS)).toBeUndefined();
  });

  it("tells read-only from read-write", () => {
    expect(mountMismatch(entry({}), command(FS, { readOnly: true }), FS)).toContain(
      "read-write, not read-only",
    );
    expect(mountMismatch(entry({ mountOptions: ["ro"] }), command(FS), FS)).toContain(
      "read-only, not read-write",
    );
  });

  it("tells another path or file system apart when the mount table shows them", () => {
    expect(mountMismatch(entry({ source: "127.0.0.1:/a" }), command(`${FS}:/b`), FS)).toContain(
      "not path /b",
    );
    expect(
      mountMismatch(entry({ source: "fs-99999999.efs.us-east-1.amazonaws.com:/" }), command(FS), FS),
    ).toContain(`not ${FS}`);
  });
});
