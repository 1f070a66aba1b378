import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  comparePositions,
  createEventStore,
  type AppendResult,
  type EventStore,
  type GlobalPosition,
} from '../src/events/index.js';
import { countsProjection, migrateEvents } from './support/events.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let store: EventStore;

beforeAll(async () => {
  db = await createTestDatabase('events_gap');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl });
});

afterAll(async () => {
  await store?.close();
  await db?.drop();
});

const followed = (userId: string, targetId: string) => ({
  type: 'UserFollowed',
  data: { userId, targetId },
});

/**
 * The control: a consumer that goes by position alone, as naive subscriptions do. It reads
 * everything visible after its checkpoint and moves the checkpoint to the highest position seen.
 */
async function naiveCatchUp(pool: pg.Pool, checkpoint: bigint, seen: Set<bigint>): Promise<bigint> {
  const { rows } = await pool.query<{ position: string }>(
    'select position::text as position from replikit_events where position > $1 order by position',
    [checkpoint.toString()],
  );
  for (const row of rows) seen.add(BigInt(row.position));
  return rows.length === 0 ? checkpoint : BigInt(rows.at(-1)!.position);
}

describe('global order without skipped events', () => {
  it('never skips an event whose transaction commits seconds after later ones; a position-only reader does', async () => {
    const runner = store.startProjection(countsProjection('gap'), {
      batchSize: 5,
      pollIntervalMs: 10,
    });
    await runner.activated;
    const naivePool = new pg.Pool({ connectionString: db.primaryUrl, max: 1 });
    const naiveSeen = new Set<bigint>();
    let naiveCheckpoint = 0n;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let slowPosition: GlobalPosition | undefined;
    try {
      // The slow writer takes its position first and holds its transaction open.
      const slow = store.transaction(async (tx) => {
        const result = await tx.append('slow', [followed('slow', 'target')]);
        slowPosition = result.position;
        await gate;
        return result;
      });
      const held = await eventually(() => slowPosition);

      const later: AppendResult[] = [];
      for (let i = 0; i < 20; i++)
        later.push(await store.append(`fast-${i}`, [followed(`f${i}`, 'target')]));
      expect(later.every((r) => r.position.position > held.position)).toBe(true);

      // While it stays open: the naive reader moves past it, the projection does not.
      naiveCheckpoint = await naiveCatchUp(naivePool, naiveCheckpoint, naiveSeen);
      expect(naiveCheckpoint).toBeGreaterThan(held.position);
      await sleep(2000);
      const during = (await store.projections('gap'))[0]!;
      expect(comparePositions(during.checkpoint, held)).toBeLessThan(0);
      const horizon = await store.sampleHorizon();
      expect(horizon.xminAgeSeconds).toBeGreaterThan(1.5);

      release();
      await slow;
      const done = await store.waitForProjection('gap', 'latest', { timeoutMs: 15_000 });
      expect(done.reached).toBe(true);
      naiveCheckpoint = await naiveCatchUp(naivePool, naiveCheckpoint, naiveSeen);

      const { rows } = await store.pool.query<{ position: string }>(
        'select position::text as position from gap_applied order by gap_applied.position',
      );
      const applied = rows.map((row) => BigInt(row.position));
      const expected = [held.position, ...later.map((r) => r.position.position)].sort((a, b) =>
        a < b ? -1 : 1,
      );
      // Every event exactly once, the slow one included.
      expect(applied).toEqual(expected);
      // The control did skip it, for good.
      expect(naiveSeen.has(held.position)).toBe(false);
      expect(naiveSeen.size).toBe(later.length);
    } finally {
      release();
      await naivePool.end();
      await runner.stop();
    }
  });

  it('ends a store session left idle in a transaction, so it cannot hold projections back for long', async () => {
    const guarded = createEventStore({
      connection: db.primaryUrl,
      idleInTransactionTimeoutMs: 300,
    });
    try {
      const err = await guarded
        .transaction(async (tx) => {
          await tx.append('idle', [followed('idle', 'x')]);
          await sleep(1500);
        })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(Error);
      expect(await guarded.readStream('idle')).toEqual([]);
    } finally {
      await guarded.close();
    }
  });
});
