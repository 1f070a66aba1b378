import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createSagaEngine } from '../src/saga/index.js';
import {
  countBooks,
  createOrderDatabases,
  orderSagaOn,
  type OrderDatabases,
} from './support/orders.js';
import { killSpawned, spawnTs, type Spawned } from './support/process.js';

const SAGAS = 240;
let dbs: OrderDatabases;

beforeAll(async () => {
  dbs = await createOrderDatabases('sagacrash');
});

afterAll(async () => {
  await dbs.drop();
});

async function unfinished(): Promise<number> {
  const { rows } = await dbs.pools.orders.query<{ n: string }>(
    `select count(*) as n from replikit_sagas where status not in ('completed', 'compensated')`,
  );
  return Number(rows[0]?.n);
}

// A test that failed half way must not leave a service or worker running.
afterEach(killSpawned);

describe('sagas under orchestrator crashes', () => {
  it(
    `finishes ${SAGAS} sagas with two orchestrators killed at random points, charging and refunding each payment at most once`,
    { timeout: 240_000 },
    async () => {
      const env = {
        ORDERS_URL: dbs.urls.orders,
        PAYMENTS_URL: dbs.urls.payments,
        INVENTORY_URL: dbs.urls.inventory,
        SHIPPING_URL: dbs.urls.shipping,
        CRASH_P: '0.004',
        CONCURRENCY: '32',
      };
      let toStart = SAGAS;
      let started = 0;
      let kills = 0;
      const shares = new Map<Spawned, number>();
      const spawn = (): Spawned => {
        // Each new process starts part of what is left to start, and resumes whatever it can claim.
        const count = Math.min(toStart, 60);
        toStart -= count;
        const worker = spawnTs(['test/support/saga-worker.ts'], { ...env, COUNT: String(count) });
        shares.set(worker, count);
        return worker;
      };
      const startedBy = (worker: Spawned): number => (worker.output().match(/\+/g) ?? []).length;
      const workers: Spawned[] = [spawn(), spawn()];
      const deadline = Date.now() + 120_000;
      let finished = false;
      try {
        while (Date.now() < deadline) {
          await sleep(200);
          // The random crash points make kills likely, not certain: once a sixth of the sagas
          // have started without one, the test kills an orchestrator itself.
          const startedSoFar = started + workers.reduce((n, worker) => n + startedBy(worker), 0);
          if (kills === 0 && startedSoFar >= SAGAS / 6 && workers[0]!.child.exitCode === null)
            workers[0]!.child.kill('SIGKILL');
          for (const [index, worker] of workers.entries()) {
            const exited = worker.child.exitCode !== null || worker.child.signalCode !== null;
            if (!exited) continue;
            const output = worker.output();
            expect(worker.child.signalCode, output).toBe('SIGKILL');
            started += startedBy(worker);
            kills++;
            // What a killed process had not started yet goes to the next one.
            toStart += (shares.get(worker) ?? 0) - startedBy(worker);
            workers[index] = spawn();
          }
          const allStarted = workers.every(
            (worker) => startedBy(worker) >= (shares.get(worker) ?? 0),
          );
          // Fewer kills than shares: a further orchestrator starts what is left.
          if (toStart > 0 && allStarted) workers.push(spawn());
          if (toStart === 0 && allStarted && (await unfinished()) === 0) {
            finished = true;
            break;
          }
        }
      } finally {
        for (const worker of workers) {
          if (worker.child.exitCode === null && worker.child.signalCode === null) {
            worker.child.kill('SIGKILL');
            await worker.exit();
          }
          started += startedBy(worker);
        }
      }
      // Anything left (its orchestrators killed at the end) is finished by a clean one.
      const cleanup = createSagaEngine({
        database: dbs.urls.orders,
        sagas: [orderSagaOn(dbs.pools, {})],
        leaseMs: 1000,
        pollIntervalMs: 100,
      });
      await cleanup.start();
      const drainedBy = Date.now() + 30_000;
      while ((await unfinished()) > 0 && Date.now() < drainedBy) await sleep(200);
      const { rows: left } = await dbs.pools.orders.query(
        `select id, status, step_index, attempt, pending, attention, owner, epoch, lease_until, next_attempt_at
       from replikit_sagas where status not in ('completed', 'compensated') limit 5`,
      );
      expect(left).toEqual([]);
      await cleanup.close();

      const { rows } = await dbs.pools.orders.query<{ status: string; n: string }>(
        'select status, count(*) as n from replikit_sagas group by status',
      );
      const byStatus = Object.fromEntries(rows.map((row) => [row.status, Number(row.n)]));
      const total = Object.values(byStatus).reduce((a, b) => a + b, 0);
      expect(kills).toBeGreaterThan(0);
      expect(started).toBeGreaterThanOrEqual(SAGAS);
      expect(total).toBeGreaterThanOrEqual(started);
      expect(Object.keys(byStatus).sort()).toEqual(['compensated', 'completed']);
      const books = await countBooks(dbs.pools);
      expect(books.problems).toEqual([]);
      expect(books.pending).toBe(0);
      expect(books.confirmed).toBe(byStatus['completed']);
      console.log(
        `[saga crash] ${total} sagas (${byStatus['completed']} completed, ${byStatus['compensated']} compensated), ${kills} orchestrator kills${finished ? '' : ', the rest settled by a clean orchestrator'}`,
      );
    },
  );
});
