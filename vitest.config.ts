import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The container tests have a stage of their own, after their images are built.
    exclude: [...configDefaults.exclude, "test/containers/**"],
    // Safety nets against hangs, not performance limits: benchmarks measure speed.
    testTimeout: 300_000,
    hookTimeout: 120_000,
    pool: "forks",
    maxWorkers: 2,
  },
});
