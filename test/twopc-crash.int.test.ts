import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createCoordinator } from '../src/twopc/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { LEDGER_SCHEMA, OPEN_ACCOUNTS } from './support/ledger.js';
import { killSpawned, spawnTs } from './support/process.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let coordinatorDb: TestDatabase;
let ledgerA: TestDatabase;
let ledgerB: TestDatabase;

const TRANSFERS = 500;

async function rows<T>(db: TestDatabase, sql: string): Promise<T[]> {
  return stack.query<T & Record<string, unknown>>('primary', sql, [], db.name);
}

beforeAll(async () => {
  stack = await testStack();
  [coordinatorDb, ledgerA, ledgerB] = await Promise.all([
    createTestDatabase('crash_coordinator'),
    createTestDatabase('crash_ledger_a'),
    createTestDatabase('crash_ledger_b'),
  ]);
  for (const ledger of [ledgerA, ledgerB]) {
    for (const sql of [LEDGER_SCHEMA, OPEN_ACCOUNTS])
      await stack.query('primary', sql, [], ledger.name);
  }
});

afterAll(async () => {
  await Promise.all([coordinatorDb.drop(), ledgerA.drop(), ledgerB.drop()]);
});

// A test that failed half way must not leave a service or worker running.
afterEach(killSpawned);

describe('two-phase commit under coordinator crashes', () => {
  it(
    `keeps both ledgers consistent over ${TRANSFERS}+ transfers with SIGKILLs after prepare, after the decision and at random`,
    { timeout: 180_000 },
    async () => {
      const before = await rows<{ total: string }>(
        ledgerA,
        'select sum(balance)::text as total from accounts',
      );
      const beforeB = await rows<{ total: string }>(
        ledgerB,
        'select sum(balance)::text as total from accounts',
      );
      let started = 0;
      let crashed = 0;
      const crashPoints = { P: 0, D: 0 };
      let round = 0;
      while (started < TRANSFERS) {
        round++;
        // Two processes of one coordinator at once, each crashing itself now and then at the two
        // dangerous points, and one of them also killed from outside at a random moment.
        const workers = [0, 1].map(() =>
          spawnTs(['test/support/twopc-worker.ts'], {
            NAME: 'crash',
            COORDINATOR_URL: coordinatorDb.primaryUrl,
            LEDGER_A_URL: ledgerA.primaryUrl,
            LEDGER_B_URL: ledgerB.primaryUrl,
            COUNT: '120',
            CONCURRENCY: '8',
            CRASH_P: '0.02',
          }),
        );
        const killer = setTimeout(
          () => workers[round % 2]!.child.kill('SIGKILL'),
          300 + Math.random() * 1500,
        );
        const exits = await Promise.all(workers.map((worker) => worker.exit()));
        clearTimeout(killer);
        for (const [i, exit] of exits.entries()) {
          const output = workers[i]!.output();
          started += (output.match(/s/g) ?? []).length;
          crashPoints.P += (output.match(/P/g) ?? []).length;
          crashPoints.D += (output.match(/D/g) ?? []).length;
          if (exit.signal === 'SIGKILL') crashed++;
          else expect(exit.code, output).toBe(0);
        }
      }
      expect(crashed).toBeGreaterThan(0);
      // Both dangerous points were hit: after prepare (must roll back) and after the decision (must commit).
      expect(crashPoints.P).toBeGreaterThan(0);
      expect(crashPoints.D).toBeGreaterThan(0);

      // Whatever the dead processes left prepared, one recovery pass of the same coordinator settles.
      const checker = createCoordinator({
        name: 'crash',
        coordinator: coordinatorDb.primaryUrl,
        participants: { ledger_a: ledgerA.primaryUrl, ledger_b: ledgerB.primaryUrl },
        recoveryIntervalMs: 0,
      });
      try {
        await checker.start();
        const report = await checker.recover();
        expect(report.inProgress + report.unresolved).toBe(0);
      } finally {
        await checker.close();
      }

      for (const ledger of [ledgerA, ledgerB]) {
        expect(
          await rows(
            ledger,
            'select gid from pg_prepared_xacts where database = current_database()',
          ),
        ).toEqual([]);
      }
      // No money created or destroyed, and every transfer is on both ledgers or on neither.
      const after = await rows<{ total: string }>(
        ledgerA,
        'select sum(balance)::text as total from accounts',
      );
      const afterB = await rows<{ total: string }>(
        ledgerB,
        'select sum(balance)::text as total from accounts',
      );
      expect(Number(after[0]!.total) + Number(afterB[0]!.total)).toBe(
        Number(before[0]!.total) + Number(beforeB[0]!.total),
      );
      const sideA = await rows<{ id: string; amount: number }>(
        ledgerA,
        'select id::text, amount::int from transfers',
      );
      const sideB = new Map(
        (
          await rows<{ id: string; amount: number }>(
            ledgerB,
            'select id::text, amount::int from transfers',
          )
        ).map((row) => [row.id, row.amount]),
      );
      expect(sideA.length).toBe(sideB.size);
      expect(sideA.length).toBeGreaterThan(TRANSFERS / 4);
      // Each transfer's two halves are both there and cancel out.
      expect(sideA.filter((row) => sideB.get(row.id) !== -row.amount)).toEqual([]);
    },
  );
});
