/**
 * Every metric a dashboard panel or an alert rule names is one the running service exposes.
 *
 * The service is `src/app/start.ts` itself, run against the test stack's servers (as
 * test/start.e2e.test.ts runs it), so the check covers the metrics wiring users get, not a copy
 * of it. It is driven through each demo — routed reads with a token, a two-phase-commit transfer,
 * an order saga and a choreographed order, an event append read back through the projection —
 * and then scraped in both exposition formats.
 */
import { randomUUID } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { PROFILE_HEADERS } from '../src/app/profiles.js';
import { CONSISTENCY_HEADERS } from '../src/http/consistency.js';
import {
  alertQueries,
  dashboardQueries,
  exposedMetrics,
  missingMetrics,
} from './support/dashboards.js';
import { jsonClient } from './support/http.js';
import { killSpawned, signalGroup, spawnTs, type Spawned } from './support/process.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

const OPENMETRICS = 'application/openmetrics-text; version=1.0.0';

let databases: Record<
  'app' | 'ledgerA' | 'ledgerB' | 'orders' | 'payments' | 'inventory' | 'shipping',
  TestDatabase
>;
let service: Spawned | undefined;
let base = '';
const call = jsonClient(() => base);

async function scrape(accept?: string): Promise<string> {
  const response = await fetch(
    `${base}/metrics`,
    accept === undefined ? {} : { headers: { accept } },
  );
  expect(response.status).toBe(200);
  return response.text();
}

beforeAll(async () => {
  const names = [
    'app',
    'ledgerA',
    'ledgerB',
    'orders',
    'payments',
    'inventory',
    'shipping',
  ] as const;
  const created = await Promise.all(names.map((name) => createTestDatabase(`dash_${name}`)));
  databases = Object.fromEntries(names.map((name, i) => [name, created[i]!])) as typeof databases;
  const { app } = databases;
  service = spawnTs(['src/app/start.ts'], {
    REPLIKIT_PRIMARY_URL: app.primaryUrl,
    REPLIKIT_REPLICA_URLS: Object.entries(app.replicaUrls)
      .map(([name, url]) => `${name}=${url}`)
      .join(','),
    REPLIKIT_LEDGER_A_DATABASE: databases.ledgerA.name,
    REPLIKIT_LEDGER_B_DATABASE: databases.ledgerB.name,
    REPLIKIT_ORDERS_DATABASE: databases.orders.name,
    REPLIKIT_PAYMENTS_DATABASE: databases.payments.name,
    REPLIKIT_INVENTORY_DATABASE: databases.inventory.name,
    REPLIKIT_SHIPPING_DATABASE: databases.shipping.name,
    REPLIKIT_NATS_URL: '',
    PORT: '0',
    LOG_LEVEL: 'warn',
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
  });
  await service.waitFor(/Press Ctrl-C to stop/, 90_000);
  const url = /^\s+service\s+(http:\/\/\S+)$/m.exec(service.output())?.[1];
  if (url === undefined) throw new Error(`no service URL in:\n${service.output()}`);
  base = url;
});

afterAll(async () => {
  if (service !== undefined && service.child.exitCode === null) {
    signalGroup(service, 'SIGTERM');
    await Promise.race([service.exit(), new Promise((resolve) => setTimeout(resolve, 15_000))]);
  }
  await killSpawned();
  await Promise.all(Object.values(databases ?? {}).map((db) => db.drop()));
});

describe('the metrics the dashboards and alerts name', () => {
  it('are all exposed by the running service after traffic through every demo', async () => {
    // Routed reads: a write, then reads with its token (read-your-writes) and without.
    const created = await call('POST', '/users', {
      body: { name: 'Grace', email: `grace-${randomUUID()}@example.com` },
    });
    expect(created.status).toBe(201);
    const token = created.headers.get(CONSISTENCY_HEADERS.token)!;
    const user = (created.body as { id: string }).id;
    for (const consistency of ['read-your-writes', 'eventual', 'strong']) {
      const read = await call('GET', `/users/${user}`, {
        headers: {
          [CONSISTENCY_HEADERS.consistency]: consistency,
          [CONSISTENCY_HEADERS.token]: token,
        },
      });
      expect(read.status).toBe(200);
    }

    // Two-phase commit across the two ledgers.
    const transfer = await call('POST', '/transfers?mode=2pc', {
      body: { from: 'a1', to: 'b1', amount: 5 },
    });
    expect(transfer.status).toBe(201);

    // An order by saga, and one by choreography (through the outboxes).
    const order = { customerId: 'c1', items: [{ sku: 'sku-2', qty: 1 }], amount: 25 };
    expect((await call('POST', '/orders', { body: order })).status).toBe(201);
    expect((await call('POST', '/orders?flow=choreography', { body: order })).status).toBeLessThan(
      300,
    );

    // An event append, read back through the projection.
    const follow = await call('POST', `/users/${randomUUID()}/follow`, {
      body: { targetId: user },
    });
    expect(follow.status).toBe(202);
    const profile = await call('GET', `/users/${user}/profile`, {
      headers: { [PROFILE_HEADERS.position]: follow.headers.get(PROFILE_HEADERS.position)! },
    });
    expect(profile.status).toBe(200);

    // The traffic reached the metrics (the relays publish and the projection applies on their own time).
    const text = await eventually(async () => {
      const body = await scrape();
      const { samples } = exposedMetrics(body);
      const seen = [
        'replikit_reads_total',
        'replikit_2pc_transactions_total',
        'replikit_sagas_started_total',
        'replikit_outbox_published_total',
        'replikit_eventstore_appends_total',
        'replikit_projection_lag_events',
        'replikit_http_server_request_duration_seconds_count',
      ].every((name) => samples.has(name));
      return seen ? body : undefined;
    }, 30_000);

    const sources = [...dashboardQueries(), ...alertQueries()];
    expect(missingMetrics(sources, text), 'Prometheus text format').toEqual([]);
    expect(missingMetrics(sources, await scrape(OPENMETRICS)), 'OpenMetrics').toEqual([]);
  });

  it('a misspelled metric name is reported missing by the same check (control)', async () => {
    const text = await scrape(OPENMETRICS);
    const typo = [
      { where: 'control', expr: 'max by (replica) (replikit_replica_lag_second)' },
      { where: 'control', expr: 'sum(rate(replikit_reads_total[$__rate_interval]))' },
      { where: 'control', expr: 'sum(rate(replikit_read_wait_seconds_bukket[5m]))' },
    ];
    expect(missingMetrics(typo, text)).toEqual([
      { metric: 'replikit_replica_lag_second', where: 'control' },
      { metric: 'replikit_read_wait_seconds_bukket', where: 'control' },
    ]);
  });
});
