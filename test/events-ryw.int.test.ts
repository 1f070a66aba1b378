import { randomUUID } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createEventStore,
  createReadModel,
  type EventStore,
  type ProjectionRunner,
  type ReadModel,
} from '../src/events/index.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { countsProjection, migrateEvents } from './support/events.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let store: EventStore;
let cluster: Cluster;
let runner: ProjectionRunner;
let counts: ReadModel;

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('events_ryw');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl });
  cluster = createCluster({
    primary: db.primaryUrl,
    replicas: db.replicaUrls,
    waitTimeoutMs: 300,
    monitorIntervalMs: 50,
  });
  await cluster.ready();
  runner = store.startProjection(countsProjection('ryw'), { pollIntervalMs: 20 });
  await runner.activated;
  await stack.waitForReplicas();
  counts = createReadModel({ store, cluster, projection: 'ryw', waitTimeoutMs: 5000 });
});

afterAll(async () => {
  await stack?.resetFaults();
  await store?.close();
  await cluster?.close();
  await db?.drop();
});

const followersSql =
  'select coalesce(max(followers), 0)::int as followers from ryw_counts where user_id = $1';

async function follow(userId: string, targetId: string) {
  return store.append(`user-${userId}`, [{ type: 'UserFollowed', data: { userId, targetId } }]);
}

describe('read-your-writes on a read model', () => {
  it('never misses the caller’s own follow, and reads from replicas when they have caught up', async () => {
    const target = `t-${randomUUID()}`;
    const servedBy = new Map<string, number>();
    for (let i = 1; i <= 40; i++) {
      const { position } = await follow(`f${i}-${randomUUID()}`, target);
      const result = await counts.query<{ followers: number }>(followersSql, [target], {
        after: position,
      });
      expect(result.stale).toBe(false);
      expect(result.rows[0]!.followers).toBe(i);
      servedBy.set(result.servedBy, (servedBy.get(result.servedBy) ?? 0) + 1);
    }
    // The read model itself came from the replicas, not only the primary.
    const fromReplicas = [...servedBy].filter(([node]) => node !== 'primary');
    expect(fromReplicas.length).toBeGreaterThan(0);
  });

  it('control: with replay paused, a plain read misses the follow; the read-your-writes read does not', async () => {
    const target = `t-${randomUUID()}`;
    const { position: first } = await follow(`a-${randomUUID()}`, target);
    await counts.query(followersSql, [target], { after: first });
    await stack.waitForReplicas();
    try {
      await stack.pauseReplay('replica1');
      await stack.pauseReplay('replica2');
      const { position } = await follow(`b-${randomUUID()}`, target);

      const plain = await counts.query<{ followers: number }>(followersSql, [target], {
        consistency: { level: 'eventual' },
      });
      expect(plain.servedBy).not.toBe('primary');
      expect(plain.rows[0]!.followers).toBe(1);

      const own = await counts.query<{ followers: number }>(followersSql, [target], {
        after: position,
      });
      expect(own.stale).toBe(false);
      expect(own.rows[0]!.followers).toBe(2);
      // No replica could show the projection's batch: the bounded wait fell back to the primary.
      expect(own.servedBy).toBe('primary');
    } finally {
      await stack.resumeReplay('replica1');
      await stack.resumeReplay('replica2');
    }
  });

  it('refuses a position past the end of the log instead of waiting on it', async () => {
    const target = `t-${randomUUID()}`;
    await runner.stop();
    try {
      const { position } = await follow(`d-${randomUUID()}`, target);
      for (const ahead of [
        { ...position, position: position.position + 1_000_000n },
        { transactionId: position.transactionId + 1_000_000n, position: 1n },
      ]) {
        const err = await counts.query(followersSql, [target], { after: ahead }).then(
          () => undefined,
          (e: unknown) => e as { code?: string },
        );
        expect(err?.code).toBe('PROJECTION_POSITION_AHEAD');
        await expect(
          store.waitForProjection('ryw', ahead, { timeoutMs: 60_000 }),
        ).rejects.toMatchObject({ code: 'PROJECTION_POSITION_AHEAD' });
      }
      // Control: the log's own last position, not projected yet, is waited for, not refused.
      const late = await counts.query(followersSql, [target], {
        after: position,
        waitTimeoutMs: 200,
      });
      expect(late.stale).toBe(true);
    } finally {
      runner = store.startProjection(countsProjection('ryw'), { pollIntervalMs: 20 });
      await runner.activated;
    }
  });

  it('says stale (or throws, if told to) when the projection does not get there in time', async () => {
    const target = `t-${randomUUID()}`;
    await runner.stop();
    try {
      const { position } = await follow(`c-${randomUUID()}`, target);
      const stale = await counts.query<{ followers: number }>(followersSql, [target], {
        after: position,
        waitTimeoutMs: 300,
      });
      expect(stale.stale).toBe(true);
      expect(stale.rows[0]!.followers).toBe(0);
      const err = await counts
        .query(followersSql, [target], { after: position, waitTimeoutMs: 200, onTimeout: 'error' })
        .then(
          () => undefined,
          (e: unknown) => e as { code?: string; details?: Record<string, unknown> },
        );
      expect(err?.code).toBe('PROJECTION_WAIT_TIMEOUT');
      expect(err?.details).toMatchObject({ projection: 'ryw' });
    } finally {
      runner = store.startProjection(countsProjection('ryw'), { pollIntervalMs: 20 });
      await runner.activated;
    }
  });
});
