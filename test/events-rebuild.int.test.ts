import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createEventStore, type EventStore } from '../src/events/index.js';
import { countsProjection, migrateEvents } from './support/events.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let store: EventStore;

beforeAll(async () => {
  db = await createTestDatabase('events_rebuild');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl, poolSize: 16 });
});

afterAll(async () => {
  await store?.close();
  await db?.drop();
});

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    sleep(ms).then(() => {
      throw new Error(`${what} did not happen within ${ms} ms`);
    }),
  ]);
}

async function rows(sql: string): Promise<unknown[]> {
  const result = await store.pool.query<Record<string, unknown>>(sql);
  return result.rows;
}

describe('rebuild without downtime', () => {
  it('builds a new version beside the serving one while appends go on, takes over, and ends identical to a from-scratch build', async () => {
    const v1 = store.startProjection(countsProjection('rb'), { batchSize: 50 });
    await v1.activated;
    let writing = true;
    let appended = 0;
    const writers = Array.from({ length: 6 }, async (_, w) => {
      for (let i = 0; writing; i++) {
        await store.append(`w${w}-${i % 50}`, [
          {
            type: 'UserFollowed',
            data: { userId: `u${(w * 7 + i) % 23}`, targetId: `u${i % 13}` },
          },
        ]);
        appended++;
      }
    });
    try {
      await sleep(700);
      const servedBefore = await rows('select count(*)::int as n from rb_counts');
      const v2 = await store.rebuildProjection(countsProjection('rb'), { batchSize: 50 });
      expect(v2.version).toBe(2);
      // The old version serves meanwhile: its view answers throughout.
      expect(await rows('select count(*)::int as n from rb_counts')).toHaveLength(1);
      await within(v2.activated, 30_000, 'the switch-over');
      const atSwitch = appended;
      await within(v1.done, 10_000, 'the old version retiring');
      expect(v1.state.state).toBe('retired');
      // Appends went on during the rebuild and after the switch.
      await sleep(500);
      expect(appended).toBeGreaterThan(atSwitch);
      expect(servedBefore).toHaveLength(1);
    } finally {
      writing = false;
      await Promise.all(writers);
    }
    const caughtUp = await store.waitForProjection('rb', 'latest', { timeoutMs: 15_000 });
    expect(caughtUp).toMatchObject({ reached: true, version: 2 });

    const scratch = store.startProjection(countsProjection('scratch'), { batchSize: 500 });
    await scratch.activated;
    expect(
      (await store.waitForProjection('scratch', 'latest', { timeoutMs: 15_000 })).reached,
    ).toBe(true);

    const rebuilt = await rows('select * from rb_counts order by user_id');
    expect(rebuilt).toEqual(await rows('select * from scratch_counts order by user_id'));
    expect(rebuilt).toEqual(await rows('select * from rb_counts_v2 order by user_id'));
    const [applied] = (await rows(
      `select count(*)::int as n, count(distinct position)::int as d,
              (select count(*)::int from replikit_events) as total from rb_applied`,
    )) as { n: number; d: number; total: number }[];
    expect(applied!.n).toBe(applied!.total);
    expect(applied!.d).toBe(applied!.total);
    expect(applied!.total).toBe(appended);
    const versions = await store.projections('rb');
    expect(versions.map((v) => [v.version, v.status])).toEqual([
      [1, 'retired'],
      [2, 'active'],
    ]);
  });
});
