import { expect } from "vitest";
import { CsiError } from "../../src/csi/errors.ts";

/** The CsiError a call must fail with, as code and message. */
export async function codeOf(call: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await call;
  } catch (err) {
    expect(err).toBeInstanceOf(CsiError);
    return { code: (err as CsiError).code, message: (err as CsiError).message };
  }
  throw new Error("expected the call to fail");
}
