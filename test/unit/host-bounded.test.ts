import { execFileSync } from "node:child_process";
import { open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { bounded, HostTimeoutError, MAX_STUCK, stuckHostCalls } from "../../src/host/bounded.ts";

/** A call that hangs until released; every test releases its own, so none stays stuck. */
function hang(): { call: () => Promise<void>; release: () => void } {
  let release = () => {};
  const promise = new Promise<void>((resolve) => {
    release = resolve;
  });
  return { call: () => promise, release };
}

describe("bounded host calls", () => {
  it("answers a call that never returns after its timeout, naming what hung", async () => {
    const hung = hang();
    await expect(bounded("statfs /dead/nfs", hung.call, { timeoutMs: 50 })).rejects.toThrow(
      /statfs \/dead\/nfs did not return within 0.05 s/,
    );
    hung.release();
  });

  it("answers at the caller's deadline (its abort signal)", async () => {
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 20);
    const hung = hang();
    const call = bounded("mkdir /x", hung.call, {
      signal: abort.signal,
      timeoutMs: 60_000,
    });
    await expect(call).rejects.toBeInstanceOf(HostTimeoutError);
    await expect(call).rejects.toThrow(/before the caller's deadline/);
    hung.release();
    await new Promise((r) => setTimeout(r, 0));
  });

  it("passes results and errors through", async () => {
    await expect(bounded("x", async () => 42)).resolves.toBe(42);
    await expect(bounded("x", async () => Promise.reject(new Error("ENOENT")))).rejects.toThrow("ENOENT");
  });

  it("starts no new call once MAX_STUCK are stuck, and forgets a stuck call when it returns", async () => {
    const releases: (() => void)[] = [];
    for (let i = 0; i < MAX_STUCK; i++) {
      const stuckCall = new Promise<void>((resolve) => releases.push(resolve));
      await expect(bounded(`stat /hung/${i}`, () => stuckCall, { timeoutMs: 1 })).rejects.toThrow(/within/);
    }
    expect(stuckHostCalls()).toHaveLength(MAX_STUCK);
    let started = false;
    await expect(
      bounded("stat /healthy", async () => {
        started = true;
      }),
    ).rejects.toThrow(/was not started: 8 host calls are stuck \(stat \/hung\/0/);
    expect(started).toBe(false);
    for (const release of releases) release();
    await new Promise((r) => setTimeout(r, 0));
    expect(stuckHostCalls()).toEqual([]);
    await expect(bounded("stat /healthy", async () => "ok")).resolves.toBe("ok");
  });

  it("bounds a real filesystem call that blocks a thread (opening a FIFO nobody writes to)", async () => {
    const fifo = join(tmpdir(), `bounded-fifo-${process.pid}`);
    execFileSync("mkfifo", [fifo]);
    try {
      const opening = open(fifo, "r");
      await expect(bounded(`open ${fifo}`, () => opening, { timeoutMs: 100 })).rejects.toThrow(
        /within 0.1 s/,
      );
      // Unblock the thread: a writer arrives, the open returns, the call is no longer stuck.
      const writer = await open(fifo, "w");
      await (await opening).close();
      await writer.close();
      await new Promise((r) => setTimeout(r, 0));
      expect(stuckHostCalls()).toEqual([]);
    } finally {
      await rm(fifo, { force: true });
    }
  });
});
