import { defineConfig } from "vitest/config";

// The container tests (npm run test:containers): after npm run images, one file, in order.
export default defineConfig({
  test: {
    include: ["test/containers/**/*.test.ts"],
    globalSetup: ["test/containers/global-setup.ts"],
    // Safety nets against hangs, not performance limits.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: "forks",
    maxWorkers: 1,
  },
});
