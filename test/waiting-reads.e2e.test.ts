import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { bulkhead, type BulkheadPolicy } from 'cockatiel';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { MIGRATIONS } from '../src/app/migrations.js';
import { PROFILE_HEADERS, PROFILES_PROJECTION } from '../src/app/profiles.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { migrate } from '../src/db/migrate.js';
import { createEventStore, type EventStore, type ProjectionRunner } from '../src/events/index.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { migrateEvents } from './support/events.js';
import { jsonClient, problem, type JsonResponse } from './support/http.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

/** Reads that wait here wait long: only the bounds under test end them. */
const LONG_WAIT_MS = 30_000;

let stack: LocalStack;
let db: TestDatabase;
let store: EventStore;
let runner: ProjectionRunner;
let cluster: Cluster;
/** At most two reads wait at once, whatever they wait for. */
let waiting: BulkheadPolicy;
/** The service with a 10 s budget per read request (the default). */
let server: RunningServer;
/** The same service with a 300 ms budget. */
let hurried: RunningServer;
const call = jsonClient(() => server.url);
const callHurried = jsonClient(() => hurried.url);

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('waiting_reads');
  await migrateEvents(db.primaryUrl);
  waiting = bulkhead(2);
  cluster = createCluster({
    primary: db.primaryUrl,
    replicas: db.replicaUrls,
    waitTimeoutMs: LONG_WAIT_MS,
    waitBulkhead: waiting,
  });
  await cluster.ready();
  await migrate(cluster.primary, MIGRATIONS);
  store = createEventStore({ connection: db.primaryUrl });
  runner = store.startProjection(PROFILES_PROJECTION);
  await runner.activated;
  const app = (budgetMs?: number) =>
    createApp({
      config: loadConfig(
        budgetMs === undefined ? {} : { REPLIKIT_REQUEST_BUDGET_MS: String(budgetMs) },
      ),
      logger: createLogger({ level: 'silent', service: 'test' }),
      cluster,
      registry: createMetricsRegistry(),
      profiles: { store, cluster, waitTimeoutMs: LONG_WAIT_MS, waitBulkhead: waiting },
    });
  server = await listen(app(), { port: 0, host: '127.0.0.1' });
  hurried = await listen(app(300), { port: 0, host: '127.0.0.1' });
});

afterEach(async () => {
  await stack.resetFaults();
  if (runner.state.state === 'stopped') {
    runner = store.startProjection(PROFILES_PROJECTION);
    await runner.activated;
  }
});

afterAll(async () => {
  await hurried?.close();
  await server?.close();
  await store?.close();
  await cluster?.close();
  await db?.drop();
});

/** Polls `condition` until it holds; fails after 10 s (a bound for a test that would hang). */
async function until(condition: () => boolean, what: string): Promise<void> {
  for (let tries = 0; !condition(); tries++) {
    if (tries > 500) throw new Error(`never true: ${what}`);
    await sleep(20);
  }
}

/** A user written while every replica's replay is paused, and the token of that write. */
async function userAheadOfReplicas(): Promise<{ id: string; token: string }> {
  const created = await call('POST', '/users', {
    body: { name: 'Ada', email: `ada-${randomUUID()}@example.com` },
  });
  expect(created.status).toBe(201);
  const { id } = created.body as { id: string };
  await stack.pauseReplay('replica1');
  await stack.pauseReplay('replica2');
  const patched = await call('PATCH', `/users/${id}`, { body: { name: 'Ada L.' } });
  expect(patched.status).toBe(200);
  return { id, token: patched.headers.get('x-consistency-token')! };
}

function expectBusy(response: JsonResponse, code: string): void {
  expect(response.status).toBe(503);
  expect(problem(response)).toMatchObject({ status: 503, code });
  expect(response.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
}

describe('reads that wait', () => {
  it('for a replica: beyond the bound, the next one is refused 503 with Retry-After, not queued', async () => {
    const { id, token } = await userAheadOfReplicas();
    const read = () => call('GET', `/users/${id}`, { headers: { 'x-consistency-token': token } });
    const first = [read(), read()];
    await until(() => waiting.executionSlots === 0, 'two reads wait for a replica');
    expectBusy(await read(), 'REPLICA_WAIT_BUSY');

    await stack.resumeReplay('replica1');
    await stack.resumeReplay('replica2');
    for (const response of await Promise.all(first)) {
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({ name: 'Ada L.' });
    }
  });

  it('for a projection: beyond the bound, the next one is refused 503 with Retry-After', async () => {
    const ada = randomUUID();
    await runner.stop();
    const followed = await call('POST', `/users/${randomUUID()}/follow`, {
      body: { targetId: ada },
    });
    expect(followed.status).toBe(202);
    const position = followed.headers.get(PROFILE_HEADERS.position)!;
    const read = () =>
      call('GET', `/users/${ada}/profile`, { headers: { [PROFILE_HEADERS.position]: position } });
    const first = [read(), read()];
    await until(() => waiting.executionSlots === 0, 'two reads wait for the projection');
    expectBusy(await read(), 'PROJECTION_WAIT_BUSY');

    runner = store.startProjection(PROFILES_PROJECTION);
    for (const response of await Promise.all(first)) {
      expect(response.status).toBe(200);
      expect(response.body).toMatchObject({ followers: 1, stale: false });
    }
  });

  it('stop waiting when their request runs out of budget: 503 DEADLINE_EXCEEDED with Retry-After', async () => {
    const { id, token } = await userAheadOfReplicas();
    expectBusy(
      await callHurried('GET', `/users/${id}`, { headers: { 'x-consistency-token': token } }),
      'DEADLINE_EXCEEDED',
    );

    await runner.stop();
    const ada = randomUUID();
    const followed = await call('POST', `/users/${randomUUID()}/follow`, {
      body: { targetId: ada },
    });
    expectBusy(
      await callHurried('GET', `/users/${ada}/profile`, {
        headers: { [PROFILE_HEADERS.position]: followed.headers.get(PROFILE_HEADERS.position)! },
      }),
      'DEADLINE_EXCEEDED',
    );
    // Nothing was left waiting.
    expect(waiting.executionSlots).toBe(2);
  });

  it('stop waiting when their client goes away', async () => {
    const { id, token } = await userAheadOfReplicas();
    const gone = new AbortController();
    const abandoned = fetch(`${server.url}/users/${id}`, {
      headers: { 'x-consistency-token': token },
      signal: gone.signal,
    }).catch((err: unknown) => err);
    await until(() => waiting.executionSlots === 1, 'the read waits for a replica');
    gone.abort();
    await abandoned;
    await until(() => waiting.executionSlots === 2, 'the abandoned read stops waiting');
  });
});
