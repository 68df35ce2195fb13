import { defineConfig } from "vitest/config";

// The e2e suite (npm run e2e): one real cluster per file, its scenarios in order.
export default defineConfig({
  test: {
    include: ["test/e2e/**/*.e2e.ts"],
    // Safety nets against hangs, not performance limits.
    testTimeout: 600_000,
    hookTimeout: 600_000,
    pool: "forks",
    maxWorkers: 1,
    sequence: { concurrent: false },
  },
});
