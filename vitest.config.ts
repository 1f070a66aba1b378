import { defineConfig } from 'vitest/config';

/**
 * Three tiers, by file name:
 * - `*.unit.test.ts`: no I/O, run in parallel;
 * - `*.int.test.ts`: a real primary and replicas, started once per run (global setup), files one
 *   at a time because several of them inject faults into the shared stack;
 * - `*.e2e.test.ts`: the service or the CLI as a user drives it.
 */
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/**/*.unit.test.ts'],
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'int',
          include: ['test/**/*.int.test.ts'],
          globalSetup: ['test/support/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 120_000,
          sequence: { groupOrder: 1 },
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/**/*.e2e.test.ts'],
          globalSetup: ['test/support/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 90_000,
          hookTimeout: 120_000,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
