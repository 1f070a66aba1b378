import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { MIGRATIONS } from '../src/app/migrations.js';
import { ORDER_STEPS, type OrderInput } from '../src/app/orders/order-saga.js';
import { createOrderChoreography, type OrderChoreography } from '../src/app/orders/choreography.js';
import type { Order, OrdersOptions } from '../src/app/orders/routes.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { migrate } from '../src/db/migrate.js';
import type { SagaDetailsView, SagaView } from '../src/http/sagas.js';
import { createPostgresTransport, type Transport } from '../src/messaging/index.js';
import { createCluster, decodeToken, encodeToken, type Cluster } from '../src/routing/index.js';
import { createSagaEngine, type SagaDefinition, type SagaEngine } from '../src/saga/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { jsonClient, problem, type JsonResponse } from './support/http.js';
import {
  countBooks,
  createOrderDatabases,
  orderSagaOn,
  type OrderDatabases,
} from './support/orders.js';
import { createTestDatabase, eventually, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let appDb: TestDatabase;
let dbs: OrderDatabases;
let cluster: Cluster;
let orders: Cluster;
let engine: SagaEngine;
let saga: SagaDefinition<OrderInput>;
let transport: Transport;
let choreography: OrderChoreography;
const servers: RunningServer[] = [];
let base: string;
let noFaultsBase: string;

const call = jsonClient(() => base);

const order = (overrides: Record<string, unknown> = {}) => ({
  customerId: 'c1',
  items: [{ sku: 'sku-2', qty: 1 }],
  amount: 25,
  ...overrides,
});

beforeAll(async () => {
  stack = await testStack();
  [appDb, dbs] = await Promise.all([createTestDatabase('orders_app'), createOrderDatabases('e2e')]);
  cluster = createCluster({ primary: appDb.primaryUrl, replicas: appDb.replicaUrls });
  orders = createCluster({
    primary: dbs.orders.primaryUrl,
    replicas: dbs.orders.replicaUrls,
    waitTimeoutMs: 500,
  });
  await Promise.all([cluster.ready(), orders.ready()]);
  await migrate(cluster.primary, MIGRATIONS);
  await stack.waitForReplicas();
  saga = orderSagaOn(dbs.pools, { faults: true });
  engine = createSagaEngine({
    database: dbs.urls.orders,
    sagas: [saga],
    pollIntervalMs: 100,
  });
  await engine.start();
  transport = createPostgresTransport({ database: dbs.pools.orders, pollIntervalMs: 100 });
  choreography = createOrderChoreography({ databases: dbs.pools, transport });
  await choreography.start();
  const app = (faults: boolean) =>
    createApp({
      config: loadConfig({ REPLIKIT_BODY_LIMIT: '2kb' }),
      logger: createLogger({ level: 'silent', service: 'test' }),
      cluster,
      registry: createMetricsRegistry(),
      orders: { engine, saga, orders, waitMs: 2000, faults, choreography },
      sagaEngines: [engine],
    });
  for (const faults of [true, false]) {
    servers.push(await listen(app(faults), { port: 0, host: '127.0.0.1' }));
  }
  base = servers[0]!.url;
  noFaultsBase = servers[1]!.url;
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await Promise.all(servers.map((server) => server.close()));
  await engine?.close();
  await choreography?.close();
  await transport?.close();
  await Promise.all([cluster?.close(), orders?.close()]);
  await Promise.all([appDb?.drop(), dbs?.drop()]);
});

describe('orders over HTTP', () => {
  it('places an order: 201 confirmed, and a read with its token sees it even while replicas lag (a plain read does not)', async () => {
    const placed = await call('POST', '/orders', { body: order() });
    expect(placed.status).toBe(201);
    const body = placed.body as Order;
    expect(body).toMatchObject({
      status: 'confirmed',
      reason: null,
      sagaStatus: 'completed',
      amount: 25,
    });
    expect(placed.headers.get('location')).toBe(`/orders/${body.id}`);
    const token = placed.headers.get('x-consistency-token');
    expect(token).toBeTruthy();

    // The next order is placed while neither replica replays: only the token can find it.
    await Promise.all(stack.replicas.map((replica) => stack.pauseReplay(replica.name)));
    const second = await call('POST', '/orders', { body: order() });
    const secondToken = second.headers.get('x-consistency-token')!;
    const id = (second.body as Order).id;
    const mine = await call('GET', `/orders/${id}`, {
      headers: { 'x-consistency-token': secondToken },
    });
    expect(mine.status).toBe(200);
    expect((mine.body as Order).status).toBe('confirmed');
    // Control: the same read with eventual consistency goes to a paused replica and misses it.
    const eventual = await call('GET', `/orders/${id}`, {
      headers: { 'x-consistency': 'eventual' },
    });
    expect(eventual.status).toBe(404);
    expect(eventual.headers.get('x-served-by')).toMatch(/^replica/);
  });

  it.each([
    [
      'insufficient_stock',
      {
        items: [
          { sku: 'sku-3', qty: 1000 },
          { sku: 'sku-3', qty: 1000 },
        ],
      },
    ],
    ['payment_declined', { amount: 20_000 }],
    ['unknown_customer', { customerId: 'nobody' }],
    ['unknown_sku', { items: [{ sku: 'no-such-sku', qty: 1 }] }],
  ])(
    'a business failure (%s) ends in a rejected order and balanced books',
    async (reason, overrides) => {
      const placed = await call('POST', '/orders', { body: order(overrides) });
      expect(placed.status).toBe(201);
      expect(placed.body).toMatchObject({ status: 'rejected', reason, sagaStatus: 'compensated' });
      expect((await countBooks(dbs.pools)).problems).toEqual([]);
    },
  );

  it('answers 202 with the saga when it takes longer than the wait, and the saga shows its steps', async () => {
    const placed = await call('POST', '/orders', {
      body: order({ faults: [{ step: 'schedule_shipment', action: 'delay', ms: 3000 }] }),
    });
    expect(placed.status).toBe(202);
    const body = placed.body as Order;
    expect(body.status).toBe('pending');
    expect(placed.headers.get('location')).toBe(`/sagas/${body.sagaId}`);
    const running = await call('GET', `/sagas/${body.sagaId}`);
    expect(running.status).toBe(200);
    // Still running (at the shipment step unless the machine is very slow).
    expect((running.body as SagaView).status).toBe('running');
    expect(ORDER_STEPS).toContain((running.body as SagaView).step);
    const done = await eventually(async () => {
      const got = await call('GET', `/sagas/${body.sagaId}`);
      return (got.body as SagaView).status === 'completed'
        ? (got.body as SagaDetailsView)
        : undefined;
    });
    expect(done.steps.map((step) => `${step.name}:${step.status}`)).toEqual([
      'create_order:completed',
      'reserve_stock:completed',
      'charge_payment:completed',
      'schedule_shipment:completed',
    ]);
  });

  it('an Idempotency-Key makes a retried request return the first order', async () => {
    const headers = { 'idempotency-key': `key-${Math.random()}` };
    const first = await call('POST', '/orders', { body: order(), headers });
    const again = await call('POST', '/orders', { body: order(), headers });
    expect((again.body as Order).id).toBe((first.body as Order).id);
    expect((again.body as Order).sagaId).toBe((first.body as Order).sagaId);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(first.headers.get('idempotent-replayed')).toBeNull();
  });

  it('refuses an Idempotency-Key sent with another body with 422, even to requests racing the first', async () => {
    const key = `key-${Math.random()}`;
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        call('POST', '/orders', {
          body: order({ customerId: `c${i + 1}` }),
          headers: { 'idempotency-key': key },
        }),
      ),
    );
    const placed = answers.filter((answer) => answer.status === 201 || answer.status === 202);
    expect(placed).toHaveLength(1);
    const first = placed[0]!.body as Order;
    for (const answer of answers.filter((answer) => answer !== placed[0])) {
      expect(answer.status).toBe(422);
      expect(problem(answer).code).toBe('IDEMPOTENCY_KEY_REUSED');
    }
    // The first request's body, sent again under the key, still answers the first order; any
    // other difference (here the amount) is another request.
    const again = await call('POST', '/orders', {
      body: order({ customerId: first.customerId }),
      headers: { 'idempotency-key': key },
    });
    expect((again.body as Order).id).toBe(first.id);
    const other = await call('POST', '/orders', {
      body: order({ customerId: first.customerId, amount: 26 }),
      headers: { 'idempotency-key': key },
    });
    expect(other.status).toBe(422);
    expect(problem(other).code).toBe('IDEMPOTENCY_KEY_REUSED');
  });

  it('answers bad input with 4xx problem details', async () => {
    const cases: [Parameters<typeof call>[2], string, number][] = [
      [{ raw: '{"customerId":', type: 'application/json' }, '', 400],
      [{ body: order({ amount: 'ten' }) }, 'VALIDATION_FAILED', 400],
      [{ body: order({ items: [] }) }, 'VALIDATION_FAILED', 400],
      [{ body: order({ extra: 1 }) }, 'VALIDATION_FAILED', 400],
      [{ body: order({ faults: [{ step: 'nope', action: 'fail' }] }) }, 'VALIDATION_FAILED', 400],
      [{ body: order({ customerId: 'x'.repeat(3000) }) }, '', 413],
    ];
    for (const [options, code, status] of cases) {
      const response = await call('POST', '/orders', options);
      expect(response.status, JSON.stringify(options).slice(0, 80)).toBe(status);
      if (code !== '') expect(problem(response).code).toBe(code);
      else problem(response);
    }
    expect((await call('POST', '/orders?flow=carrier-pigeon', { body: order() })).status).toBe(400);
    expect((await call('GET', '/orders/not-a-uuid')).status).toBe(400);
    expect((await call('GET', '/orders/5d0f6c1e-8a55-4c3b-9d7e-2f6a1b0c9e11')).status).toBe(404);
  });

  it.each([
    ['a lone surrogate', '\ud800'],
    ['a NUL character', 'a\u0000b'],
  ])(
    '39 orders sent with one whose customerId holds %s: the 39 are placed, the bad one alone is refused',
    async (_, customerId) => {
      // The sagas of concurrent orders are written in shared statements. To be sure the bad one
      // shares one with the others, the saga log is locked while the orders arrive: the first
      // writes wait for the lock and the rest queue behind them, the bad one last.
      let good = 0;
      let badReached = false;
      let allGood!: () => void;
      const goodArrived = new Promise<void>((resolve) => {
        allGood = resolve;
      });
      const counting: OrdersOptions['engine'] = {
        run: async (definition, input, options) => {
          if ((input as { customerId?: unknown }).customerId === customerId) {
            await goodArrived;
            badReached = true;
          } else if (++good === 39) allGood();
          return engine.run(definition, input, options);
        },
        wait: (id, options) => engine.wait(id, options),
        get: (id) => engine.get(id),
      };
      const server = await listen(
        createApp({
          config: loadConfig({}),
          logger: createLogger({ level: 'silent', service: 'test' }),
          cluster,
          registry: createMetricsRegistry(),
          orders: { engine: counting, saga, orders, waitMs: 2000 },
        }),
        { port: 0, host: '127.0.0.1' },
      );
      servers.push(server);
      const lock = await dbs.pools.orders.connect();
      let badAnswered = false;
      let responses: JsonResponse[];
      try {
        await lock.query('begin');
        await lock.query('lock table replikit_sagas in share mode');
        const sent = Array.from({ length: 40 }, (_, i) =>
          jsonClient(() => server.url)('POST', '/orders', {
            body: order({
              customerId: i === 39 ? customerId : `c${(i % 20) + 1}`,
              items: [{ sku: `sku-${(i % 10) + 1}`, qty: 1 }],
            }),
          }).finally(() => {
            if (i === 39) badAnswered = true;
          }),
        );
        // Every good order waits in the engine, and the bad one too unless it was refused first.
        await eventually(() => (good === 39 && (badReached || badAnswered) ? true : undefined));
        await lock.query('commit');
        responses = await Promise.all(sent);
      } finally {
        await lock.query('rollback').catch(() => undefined);
        lock.release();
      }
      const bad = responses[39]!;
      expect(bad.status).toBeGreaterThanOrEqual(400);
      expect(
        responses
          .slice(0, 39)
          .map((response) => response.status === 201 || response.status === 202),
      ).toEqual(Array.from({ length: 39 }, () => true));
    },
  );

  it('refuses faults unless they are enabled', async () => {
    const response = await fetch(`${noFaultsBase}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(order({ faults: [{ step: 'charge_payment', action: 'fail' }] })),
    });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { detail: string }).detail).toMatch(/REPLIKIT_DEMO_FAULTS/);
  });

  it('runs the same flow by events: confirmed, or rejected with the reason, the books balanced', async () => {
    const placed = await call('POST', '/orders?flow=choreography', { body: order() });
    expect(placed.status).toBe(201);
    expect(placed.body).toMatchObject({
      status: 'confirmed',
      flow: 'choreography',
      sagaId: null,
      reason: null,
    });
    const id = (placed.body as Order).id;
    expect(placed.headers.get('location')).toBe(`/orders/${id}`);
    const read = await call('GET', `/orders/${id}`, {
      headers: { 'x-consistency-token': placed.headers.get('x-consistency-token')! },
    });
    expect(read.body).toMatchObject({ status: 'confirmed', flow: 'choreography' });

    for (const [reason, overrides] of [
      [
        'insufficient_stock',
        {
          items: [
            { sku: 'sku-4', qty: 1000 },
            { sku: 'sku-4', qty: 1000 },
          ],
        },
      ],
      ['payment_declined', { amount: 50_000 }],
    ] as const) {
      const refused = await call('POST', '/orders?flow=choreography', { body: order(overrides) });
      expect(refused.status).toBe(201);
      expect(refused.body).toMatchObject({ status: 'rejected', reason, flow: 'choreography' });
    }
    // The stock of the declined order is released by the inventory service when it hears of the
    // decline, after the orders service has: wait for it.
    await eventually(async () =>
      (await countBooks(dbs.pools)).problems.length === 0 ? true : undefined,
    );
    const refusedKey = await call('POST', '/orders?flow=choreography', {
      body: order(),
      headers: { 'idempotency-key': 'k' },
    });
    expect(problem(refusedKey).code).toBe('VALIDATION_FAILED');
  });

  it('five orders refused for an unknown customer do not hold up the next one: it answers 201 confirmed', async () => {
    for (let i = 0; i < 5; i++) {
      const refused = await call('POST', '/orders', { body: order({ customerId: 'nobody' }) });
      expect(refused.body).toMatchObject({ status: 'rejected', reason: 'unknown_customer' });
    }
    // A refusal is the payments service's answer: its circuit breaker stays closed, nothing parks.
    const placed = await call('POST', '/orders', { body: order() });
    expect(placed.status).toBe(201);
    expect(placed.body).toMatchObject({ status: 'confirmed', sagaStatus: 'completed' });
  });

  // Last: its failing compensations open the inventory service's circuit breaker for a while.
  it("/sagas checks the token like every route: ahead of the primary 400, another cluster's untrusted", async () => {
    const placed = await call('POST', '/orders', { body: order() });
    const real = decodeToken(placed.headers.get('x-consistency-token')!);
    const forged = encodeToken({ ...real, written: real.written + 1_000_000_000_000n });
    const foreign = encodeToken({ ...real, systemId: '42' });
    const path = `/sagas/${(placed.body as Order).sagaId!}`;
    const refused = await call('GET', path, { headers: { 'x-consistency-token': forged } });
    expect(refused.status).toBe(400);
    expect(problem(refused).code).toBe('TOKEN_AHEAD');
    const untrusted = await call('GET', path, { headers: { cookie: `replikit_token=${foreign}` } });
    expect(untrusted.status).toBe(200);
    expect(untrusted.headers.get('x-consistency-token-status')).toBe('untrusted');
    expect(untrusted.headers.get('x-consistency-token')).toBeNull();
    expect(untrusted.headers.get('set-cookie')).toBeNull();
  });

  it('lists sagas needing attention and retries one; refuses actions that do not fit', async () => {
    const completedOrder = await call('POST', '/orders', { body: order() });
    expect(completedOrder.status).toBe(201);
    const placed = await call('POST', '/orders', {
      body: order({
        faults: [
          { step: 'charge_payment', action: 'reject' },
          // As many failures as the compensation's 5 attempts: it needs a person.
          { step: 'reserve_stock', phase: 'compensate', action: 'fail', times: 5 },
        ],
      }),
    });
    const { sagaId } = placed.body as Order;
    await eventually(async () => {
      const got = await call('GET', `/sagas/${sagaId}`);
      return (got.body as SagaView).status === 'needs_attention' ? true : undefined;
    }, 30_000);
    const listed = await call('GET', '/sagas?status=needs_attention&saga=order');
    expect((listed.body as { sagas: SagaView[] }).sagas.map((s) => s.id)).toContain(sagaId);
    // A retry gives the compensation a fresh budget of attempts; it runs again at once.
    const retried = await call('POST', `/sagas/${sagaId}/retry`);
    expect(retried.status).toBe(202);
    expect(retried.body).toMatchObject({ id: sagaId, status: 'compensating', attention: null });
    const completedSaga = (completedOrder.body as Order).sagaId;
    const refused = await call('POST', `/sagas/${completedSaga}/compensate`);
    expect(refused.status).toBe(409);
    expect(problem(refused).code).toBe('SAGA_INVALID_STATE');
    expect(problem(await call('POST', `/sagas/${completedSaga}/retry`)).code).toBe(
      'SAGA_INVALID_STATE',
    );
    expect((await call('GET', '/sagas/5d0f6c1e-8a55-4c3b-9d7e-2f6a1b0c9e11')).status).toBe(404);
    expect(problem(await call('GET', '/sagas/nope')).code).toBe('VALIDATION_FAILED');
    expect(problem(await call('GET', '/sagas?status=lost')).code).toBe('VALIDATION_FAILED');
  });
});
