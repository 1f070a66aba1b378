import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { migrate } from '../src/db/migrate.js';
import {
  createPostgresTransport,
  createRelay,
  enqueue,
  outboxMigrations,
  type Transport,
} from '../src/messaging/index.js';
import { createMetricsRegistry, renderMetrics } from '../src/telemetry/metrics.js';
import { createOutboxMetrics } from '../src/telemetry/outbox-metrics.js';
import { messagingContract, unique } from './support/messaging-contract.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

describe('messaging over the PostgreSQL transport', () => {
  messagingContract((producer) =>
    Promise.resolve({
      // The embedded default: the producer's own database is the broker.
      transport: (): Transport =>
        createPostgresTransport({ database: producer.primaryUrl, pollIntervalMs: 100 }),
      duplicate: async (message) => {
        const transport = createPostgresTransport({ database: producer.primaryUrl });
        try {
          await transport.publish([message]);
        } finally {
          await transport.close();
        }
      },
      cleanup: () => Promise.resolve(),
    }),
  );
});

describe('outbox metrics', () => {
  let db: TestDatabase;
  let pool: pg.Pool;

  beforeAll(async () => {
    db = await createTestDatabase('msg_metrics');
    pool = new pg.Pool({ connectionString: db.primaryUrl, max: 4 });
  });

  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  it('reports the backlog per outbox, and what was published', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const metrics = createOutboxMetrics(registry);
    const transport = createPostgresTransport({ database: db.primaryUrl, pollIntervalMs: 100 });
    const topic = unique('metrics.t');
    const delivered: string[] = [];
    const subscription = await transport.subscribe({
      group: unique('m'),
      topics: [topic],
      handle: ({ message }) => {
        delivered.push(message.id);
        return Promise.resolve({ action: 'ack' as const });
      },
    });
    // The outbox exists before any relay runs: a service migrates at start.
    const relay = createRelay({
      database: db.primaryUrl,
      transport,
      name: 'orders',
      pollIntervalMs: 100,
      observer: metrics.relayObserver,
    });
    metrics.attach(relay);
    await migrate(pool, outboxMigrations);
    const client = await pool.connect();
    try {
      await client.query('begin');
      await enqueue(client, [
        { topic, key: 'a', payload: 1 },
        { topic, key: 'b', payload: 2 },
      ]);
      await client.query('select pg_sleep(0.05)');
      await client.query('commit');
    } finally {
      client.release();
    }
    // Before the relay runs, the backlog is visible.
    await relay.refreshStats();
    let body = (await renderMetrics(registry, 'prometheus')).body;
    expect(body).toContain('replikit_outbox_pending_messages{outbox="orders"} 2');
    expect(body).toMatch(
      /^replikit_outbox_oldest_pending_age_seconds\{outbox="orders"\} 0\.\d*[1-9]/m,
    );

    await relay.start();
    await eventually(() => (delivered.length === 2 ? true : undefined));
    await relay.refreshStats();
    body = (await renderMetrics(registry, 'prometheus')).body;
    expect(body).toContain('replikit_outbox_pending_messages{outbox="orders"} 0');
    expect(body).toContain('replikit_outbox_oldest_pending_age_seconds{outbox="orders"} 0');
    expect(body).toContain('replikit_outbox_published_total{outbox="orders"} 2');
    await relay.close();
    await subscription.close();
    await transport.close();
  });

  it('keeps the scrape working when a relay’s stats throw', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const warnings: unknown[] = [];
    const metrics = createOutboxMetrics(registry, { logger: { warn: (f) => warnings.push(f) } });
    metrics.attach({
      name: 'broken',
      stats: () => {
        throw new Error('boom');
      },
    });
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain('# TYPE replikit_outbox_pending_messages gauge');
    expect(warnings.length).toBeGreaterThan(0);
  });
});
