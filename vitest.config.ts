import { defineConfig } from 'vitest/config';

// Tests run in forked processes: onnxruntime sessions and worker threads behave as in production.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 300_000,
    fileParallelism: false,
  },
});
