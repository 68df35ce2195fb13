import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CommandError, run } from "../../src/host/exec.ts";

// The current Node binary stands in for mount, mkfs & co.: it is always there, and no shell is involved.
const node = process.execPath;
const script = (code: string) => ["-e", code];

describe("run", () => {
  it("returns stdout, stderr and the exit code", async () => {
    const r = await run(node, script("process.stdout.write('out'); process.stderr.write('err')"));
    expect(r).toEqual({ stdout: "out", stderr: "err", code: 0 });
  });

  it("passes arguments as they are, with no shell in between", async () => {
    const tricky = ["a b", "$(id)", "; rm -rf /", "'\"", "*"];
    const r = await run(node, [
      ...script("process.stdout.write(JSON.stringify(process.argv.slice(1)))"),
      ...tricky,
    ]);
    expect(JSON.parse(r.stdout)).toEqual(tricky);
  });

  it("fails with a CommandError carrying the command, arguments, exit code and stderr", async () => {
    const err = await run(
      node,
      script("console.error('mkfs.ext4: Device size reported to be zero.'); process.exit(1)"),
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    const e = err as CommandError;
    expect(e.exitCode).toBe(1);
    expect(e.args).toEqual(
      script("console.error('mkfs.ext4: Device size reported to be zero.'); process.exit(1)"),
    );
    expect(e.stderr).toContain("Device size reported to be zero");
    expect(e.timedOut).toBe(false);
    expect(e.message).toMatch(/^\S+ -e .* failed \(exit 1\): mkfs\.ext4: Device size reported to be zero\.$/);
  });

  it("puts only the first lines of a long stderr in the message", async () => {
    const err = (await run(
      node,
      script("for (let i = 0; i < 50; i++) console.error('line ' + i); process.exit(2)"),
    ).catch((e: unknown) => e)) as CommandError;
    expect(err.message).toContain("line 4");
    expect(err.message).not.toContain("line 5");
    expect(err.stderr).toContain("line 49");
  });

  it("treats okCodes as success", async () => {
    const r = await run(node, script("process.stdout.write('nothing'); process.exit(2)"), {
      okCodes: [0, 2],
    });
    expect(r).toEqual({ stdout: "nothing", stderr: "", code: 2 });
  });

  it("writes input to stdin", async () => {
    const r = await run(node, script("process.stdin.pipe(process.stdout)"), { input: "y\n" });
    expect(r.stdout).toBe("y\n");
  });

  it("closes stdin when there is no input, so a prompt reads EOF instead of hanging", async () => {
    const r = await run(
      node,
      script("let n = 0; process.stdin.on('data', d => n += d.length).on('end', () => console.log(n))"),
      {
        timeoutMs: 5000,
      },
    );
    expect(r.stdout.trim()).toBe("0");
  });

  it("kills the command and fails when it runs past the timeout", async () => {
    const started = Date.now();
    const err = (await run(node, script("setTimeout(() => {}, 60000)"), { timeoutMs: 300 }).catch(
      (e: unknown) => e,
    )) as CommandError;
    expect(err).toBeInstanceOf(CommandError);
    expect(err.timedOut).toBe(true);
    expect(err.exitCode).toBeNull();
    expect(err.message).toMatch(/timed out after 300ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("a stopped command takes what it started with it: a helper left alone would act after the failure", async () => {
    // As mount runs mount.nfs4: the helper would mount after the caller was told the call failed.
    const dir = mkdtempSync(join(tmpdir(), "exec-test-"));
    try {
      const late = join(dir, "done-after-the-stop");
      const err = (await run("sh", ["-c", `(sleep 1; touch ${late}) & wait`], { timeoutMs: 200 }).catch(
        (e: unknown) => e,
      )) as CommandError;
      expect(err.timedOut).toBe(true);
      await new Promise((r) => setTimeout(r, 1500));
      expect(existsSync(late)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reports a missing program", async () => {
    const err = (await run("/nonexistent/mkfs.zfs", ["/dev/x"]).catch((e: unknown) => e)) as CommandError;
    expect(err).toBeInstanceOf(CommandError);
    expect(err.exitCode).toBeNull();
    expect(err.message).toBe("/nonexistent/mkfs.zfs /dev/x could not run (ENOENT)");
  });

  it("runs in the C locale, so callers can match messages", async () => {
    const r = await run(node, script("process.stdout.write(process.env.LC_ALL ?? '')"));
    expect(r.stdout).toBe("C");
  });

  it("kills the command when the caller's deadline passes (its signal aborts)", async () => {
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 100);
    const started = Date.now();
    const err = (await run(node, script("setTimeout(() => {}, 60000)"), { signal: abort.signal }).catch(
      (e: unknown) => e,
    )) as CommandError;
    expect(err).toBeInstanceOf(CommandError);
    expect(err.timedOut).toBe(true);
    expect(err.message).toMatch(/was stopped: the caller's deadline passed/);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
