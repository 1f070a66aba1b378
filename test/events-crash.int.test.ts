import { randomUUID } from 'node:crypto';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createEventStore, type EventStore } from '../src/events/index.js';
import { migrateEvents } from './support/events.js';
import { killSpawned, spawnTs, type Spawned } from './support/process.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let store: EventStore;

beforeAll(async () => {
  db = await createTestDatabase('events_crash');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl });
});

afterAll(async () => {
  await store?.close();
  await db?.drop();
});

async function appendMany(count: number): Promise<void> {
  for (let i = 0; i < count; i += 10) {
    await store.append(
      `u-${randomUUID()}`,
      Array.from({ length: 10 }, (_, j) => ({
        type: 'UserFollowed',
        data: { userId: `u${(i + j) % 37}`, targetId: `u${(i + j) % 11}` },
      })),
    );
  }
}

async function appliedCounts(): Promise<{ applied: number; distinct: number; total: number }> {
  const { rows } = await store.pool.query<{ applied: number; distinct: number; total: number }>(
    `select (select count(*)::int from crash_applied_v1) as applied,
            (select count(distinct position)::int from crash_applied_v1) as distinct,
            (select count(*)::int from replikit_events) as total`,
  );
  return rows[0]!;
}

// A test that failed half way must not leave a service or worker running.
afterEach(killSpawned);

describe('projection runner killed mid-batch', () => {
  it('is replaced by a standby that resumes from the committed checkpoint: no event applied twice or lost', async () => {
    await appendMany(1000);
    const workers: Spawned[] = [];
    try {
      const first = spawnTs(['test/support/events-worker.ts'], {
        DATABASE_URL: db.primaryUrl,
        NAME: 'crash',
        KILL_AT_BATCH: '4',
        BATCH_SIZE: '50',
      });
      workers.push(first);
      await first.waitFor(/running/, 30_000);
      const second = spawnTs(['test/support/events-worker.ts'], {
        DATABASE_URL: db.primaryUrl,
        NAME: 'crash',
        BATCH_SIZE: '50',
      });
      workers.push(second);
      // The second waits for the lock, unless the first already died.
      await second.waitFor(/standby|running/, 30_000);

      const exit = await first.exit();
      expect(exit.signal).toBe('SIGKILL');
      expect(first.output()).toContain('K');

      await second.waitFor(/running/, 30_000);
      await appendMany(300);
      const counts = await eventually(async () => {
        const c = await appliedCounts();
        return c.applied >= c.total ? c : undefined;
      }, 30_000);
      expect(counts.total).toBe(1300);
      expect(counts.applied).toBe(counts.total);
      expect(counts.distinct).toBe(counts.total);
      // The read model agrees with a recount from the log.
      const { rows } = await store.pool.query<{ mismatched: number }>(
        `select count(*)::int as mismatched from (
           select data->>'targetId' as user_id, count(*)::int as n from replikit_events group by 1) log
         full join crash_counts_v1 c using (user_id)
         where coalesce(log.n, 0) <> coalesce(c.followers, 0)`,
      );
      expect(rows[0]!.mismatched).toBe(0);
    } finally {
      for (const worker of workers) {
        if (worker.child.exitCode === null && worker.child.signalCode === null) {
          worker.child.kill('SIGTERM');
          await worker.exit();
        }
      }
    }
  });
});
