import { randomUUID } from 'node:crypto';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { DEMO_ACCOUNTS, ledgerMigrations, MIGRATIONS } from '../src/app/migrations.js';
import { listen, type RunningServer } from '../src/app/server.js';
import type { Account, LedgerName, Transfer } from '../src/app/transfers.js';
import { migrate } from '../src/db/migrate.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { createRoutingMetrics } from '../src/telemetry/routing-metrics.js';
import { createCoordinator, type Coordinator } from '../src/twopc/index.js';
import { requestFingerprint } from '../src/app/idempotency.js';
import { createTransferSaga } from '../src/app/transfer-saga.js';
import { ledgerOf } from '../src/app/transfers.js';
import { createSagaEngine, SAGA_MIGRATIONS, type SagaEngine } from '../src/saga/index.js';
import { jsonClient, problem } from './support/http.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let appDb: TestDatabase;
let ledgerDbs: Record<LedgerName, TestDatabase>;
let cluster: Cluster;
let ledgers: Record<LedgerName, Cluster>;
let coordinator: Coordinator;
let engine: SagaEngine;
let running: RunningServer;
let base: string;

const ACCOUNTS = Array.from({ length: DEMO_ACCOUNTS.count }, (_, i) => [`a${i + 1}`, `b${i + 1}`])
  .flat()
  .sort();

const call = jsonClient(() => base);

/** Straight from each ledger's primary, bypassing the service. */
async function primaryQuery<T extends Record<string, unknown>>(
  ledger: LedgerName,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  return stack.query<T>('primary', sql, params, ledgerDbs[ledger].name);
}

async function balances(): Promise<Map<string, number>> {
  const map = new Map<string, number>();
  for (const ledger of ['ledger_a', 'ledger_b'] as const) {
    const rows = await primaryQuery<{ id: string; balance: string }>(
      ledger,
      'select id, balance::text as balance from accounts',
    );
    for (const row of rows) map.set(row.id, Number(row.balance));
  }
  return map;
}

const total = (map: Map<string, number>): number => [...map.values()].reduce((x, y) => x + y, 0);

async function transferIds(ledger: LedgerName): Promise<string[]> {
  const rows = await primaryQuery<{ id: string }>(ledger, 'select id from transfers order by id');
  return rows.map((row) => row.id);
}

async function preparedCount(): Promise<number> {
  let count = 0;
  for (const ledger of ['ledger_a', 'ledger_b'] as const) {
    const [row] = await primaryQuery<{ n: number }>(
      ledger,
      'select count(*)::int as n from pg_prepared_xacts where database = current_database()',
    );
    count += row?.n ?? 0;
  }
  return count;
}

/** A transfer between a random account of each ledger, in a random direction. */
function randomTransfer(maxAmount: number): { from: string; to: string; amount: number } {
  const a = `a${1 + Math.floor(Math.random() * DEMO_ACCOUNTS.count)}`;
  const b = `b${1 + Math.floor(Math.random() * DEMO_ACCOUNTS.count)}`;
  const amount = 1 + Math.floor(Math.random() * maxAmount);
  return Math.random() < 0.5 ? { from: a, to: b, amount } : { from: b, to: a, amount };
}

beforeAll(async () => {
  stack = await testStack();
  const [app, a, b] = await Promise.all([
    createTestDatabase('transfers'),
    createTestDatabase('transfers_ledger_a'),
    createTestDatabase('transfers_ledger_b'),
  ]);
  appDb = app;
  ledgerDbs = { ledger_a: a, ledger_b: b };
  const registry = createMetricsRegistry();
  const metrics = createRoutingMetrics(registry);
  const clusterOn = (db: TestDatabase): Cluster =>
    createCluster({
      primary: db.primaryUrl,
      replicas: db.replicaUrls,
      waitTimeoutMs: 500,
      observer: metrics.observer,
    });
  cluster = clusterOn(appDb);
  metrics.attach(cluster);
  ledgers = { ledger_a: clusterOn(a), ledger_b: clusterOn(b) };
  await Promise.all([cluster.ready(), ledgers.ledger_a.ready(), ledgers.ledger_b.ready()]);
  await migrate(cluster.primary, [...MIGRATIONS, ...SAGA_MIGRATIONS]);
  await migrate(ledgers.ledger_a.primary, ledgerMigrations('a'));
  await migrate(ledgers.ledger_b.primary, ledgerMigrations('b'));
  await stack.waitForReplicas();
  coordinator = createCoordinator({
    name: 'e2e',
    coordinator: appDb.primaryUrl,
    participants: { ledger_a: a.primaryUrl, ledger_b: b.primaryUrl },
    // No background recovery: a transaction left prepared must show in the checks below.
    recoveryIntervalMs: 0,
  });
  await coordinator.start();
  const transferSaga = createTransferSaga((account) => ledgers[ledgerOf(account)].primary);
  engine = createSagaEngine({
    database: cluster.primary,
    sagas: [transferSaga],
    pollIntervalMs: 100,
  });
  await engine.start();
  running = await listen(
    createApp({
      config: loadConfig({ REPLIKIT_BODY_LIMIT: '1kb' }),
      logger: createLogger({ level: 'silent', service: 'test' }),
      cluster,
      registry,
      transfers: { coordinator, ledgers, saga: { engine, definition: transferSaga } },
      sagaEngines: [engine],
    }),
    { port: 0, host: '127.0.0.1' },
  );
  base = running.url;
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await running?.close();
  await coordinator?.close();
  await engine?.close();
  await Promise.all([cluster?.close(), ledgers?.ledger_a.close(), ledgers?.ledger_b.close()]);
  await Promise.all([appDb?.drop(), ledgerDbs?.ledger_a.drop(), ledgerDbs?.ledger_b.drop()]);
});

describe('transfers over HTTP', () => {
  it('opens the demo accounts: a1…a10 in ledger A, b1…b10 in ledger B, 1000 each', async () => {
    const map = await balances();
    expect([...map.keys()].sort()).toEqual(ACCOUNTS);
    expect(new Set(map.values())).toEqual(new Set([DEMO_ACCOUNTS.openingBalance]));

    const read = await call('GET', '/accounts/b7', { headers: { 'x-consistency': 'strong' } });
    expect(read.status).toBe(200);
    expect(read.headers.get('x-served-by')).toBe('primary');
    const account = read.body as Account;
    expect(account).toEqual({
      id: 'b7',
      ledger: 'ledger_b',
      balance: DEMO_ACCOUNTS.openingBalance,
      updatedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) as unknown,
    });
  });

  it('moves money between the ledgers in both directions, and reads it back with the token', async () => {
    const before = await balances();
    const there = await call('POST', '/transfers', { body: { from: 'a3', to: 'b7', amount: 25 } });
    expect(there.status).toBe(201);
    const transfer = there.body as Transfer;
    expect(transfer).toEqual({
      id: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-/) as unknown,
      from: 'a3',
      to: 'b7',
      amount: 25,
      mode: '2pc',
      transaction: expect.stringMatching(/^[0-9a-f]{32}$/) as unknown,
      pending: [],
    });
    const token = there.headers.get('x-consistency-token');
    expect(token).toMatch(/^rk1(\.[0-9a-z]+){5}$/);

    const back = await call('POST', '/transfers?mode=2pc', {
      body: { from: 'b7', to: 'a3', amount: 10 },
      headers: { 'x-consistency-token': token! },
    });
    expect(back.status).toBe(201);
    const newer = back.headers.get('x-consistency-token')!;

    for (const [id, expected] of [
      ['a3', before.get('a3')! - 15],
      ['b7', before.get('b7')! + 15],
    ] as const) {
      const read = await call('GET', `/accounts/${id}`, {
        headers: { 'x-consistency-token': newer },
      });
      expect(read.status).toBe(200);
      expect((read.body as Account).balance).toBe(expected);
    }
    // Both sides recorded under the same id, with the sign of the money's direction.
    for (const [ledger, amount] of [
      ['ledger_a', '-25'],
      ['ledger_b', '25'],
    ] as const) {
      const rows = await primaryQuery<{ amount: string }>(
        ledger,
        'select amount::text as amount from transfers where id = $1',
        [transfer.id],
      );
      expect(rows).toEqual([{ amount }]);
    }
  });

  it('a transfer of the whole balance empties the account; one more unit is refused and changes nothing', async () => {
    const before = await balances();
    const all = before.get('a5')!;
    const emptied = await call('POST', '/transfers', {
      body: { from: 'a5', to: 'b5', amount: all },
    });
    expect(emptied.status).toBe(201);

    const idsBefore = [await transferIds('ledger_a'), await transferIds('ledger_b')];
    const refused = await call('POST', '/transfers', { body: { from: 'a5', to: 'b5', amount: 1 } });
    expect(refused.status).toBe(409);
    expect(problem(refused)).toMatchObject({
      code: 'INSUFFICIENT_FUNDS',
      details: { account: 'a5', amount: 1 },
    });
    // Money leaving ledger B is debited after ledger A's side ran: that must be undone too.
    const fromB = await call('POST', '/transfers', {
      body: { from: 'b6', to: 'a6', amount: before.get('b6')! + 1 },
    });
    expect(fromB.status).toBe(409);
    expect(problem(fromB).code).toBe('INSUFFICIENT_FUNDS');

    const after = await balances();
    expect(after.get('a5')).toBe(0);
    expect(after.get('b5')).toBe(before.get('b5')! + all);
    expect(after.get('a6')).toBe(before.get('a6'));
    expect(after.get('b6')).toBe(before.get('b6'));
    expect([await transferIds('ledger_a'), await transferIds('ledger_b')]).toEqual(idsBefore);
    expect(await preparedCount()).toBe(0);
  });

  it('an unknown account is 404, and the side that did exist is rolled back', async () => {
    const before = await balances();
    for (const body of [
      { from: 'a99', to: 'b1', amount: 5 },
      { from: 'a1', to: 'b99', amount: 5 },
      { from: 'b1', to: 'a99', amount: 5 },
    ]) {
      const response = await call('POST', '/transfers', { body });
      expect(response.status).toBe(404);
      expect(problem(response).code).toBe('NOT_FOUND');
      expect(problem(response).detail).toContain('99');
    }
    expect(await balances()).toEqual(before);
    expect(await preparedCount()).toBe(0);

    const missing = await call('GET', '/accounts/a99', { headers: { 'x-consistency': 'strong' } });
    expect(missing.status).toBe(404);
    expect(problem(missing).code).toBe('NOT_FOUND');
  });
});

describe('read-your-writes across both ledgers', () => {
  it('40 transfers read back with their token on both sides: never stale, never from the paused replica; eventual reads are stale (control)', async () => {
    await stack.pauseReplay('replica1');
    const expected = await balances();
    let token: string | undefined;
    let stale = 0;
    const servedBy: Record<string, number> = {};

    const cycle = async (consistency: string): Promise<void> => {
      let transfer = randomTransfer(20);
      // Earlier tests emptied some accounts: pick one that can pay.
      while (expected.get(transfer.from)! < transfer.amount) transfer = randomTransfer(20);
      const posted = await call('POST', '/transfers', {
        body: transfer,
        headers: token === undefined ? {} : { 'x-consistency-token': token },
      });
      expect(posted.status).toBe(201);
      token = posted.headers.get('x-consistency-token')!;
      expected.set(transfer.from, expected.get(transfer.from)! - transfer.amount);
      expected.set(transfer.to, expected.get(transfer.to)! + transfer.amount);
      for (const id of [transfer.from, transfer.to]) {
        const read = await call('GET', `/accounts/${id}`, {
          headers: { 'x-consistency-token': token, 'x-consistency': consistency },
        });
        expect(read.status).toBe(200);
        if ((read.body as Account).balance !== expected.get(id)) stale++;
        const node = read.headers.get('x-served-by') ?? 'missing';
        servedBy[node] = (servedBy[node] ?? 0) + 1;
      }
    };

    for (let i = 0; i < 40; i++) await cycle('read-your-writes');
    expect(stale).toBe(0);
    expect(servedBy['replica1'] ?? 0).toBe(0);
    expect((servedBy['replica2'] ?? 0) + (servedBy['primary'] ?? 0)).toBe(80);

    // The control: the same reads without waiting for the token do see replica1's old balances.
    for (let i = 0; i < 20; i++) await cycle('eventual');
    expect(servedBy['replica1'] ?? 0).toBeGreaterThan(0);
    expect(stale).toBeGreaterThan(0);
  });
});

describe('atomicity under concurrency', () => {
  it('50 concurrent transfers both ways conserve money and leave both ledgers with the same transfers', async () => {
    const before = await balances();
    const idsBefore = new Set(await transferIds('ledger_a'));
    // Large amounts against accounts of about 1000: some are likely refused, changing nothing.
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => call('POST', '/transfers', { body: randomTransfer(600) })),
    );
    const statuses = responses.map((response) => response.status);
    expect(statuses.filter((status) => status !== 201 && status !== 409)).toEqual([]);
    const committed = responses
      .filter((response) => response.status === 201)
      .map((response) => (response.body as Transfer).id)
      .sort();
    expect(committed.length).toBeGreaterThan(0);

    const after = await balances();
    expect(total(after)).toBe(total(before));
    expect([...after.values()].every((balance) => balance >= 0)).toBe(true);
    expect(await preparedCount()).toBe(0);
    const idsA = await transferIds('ledger_a');
    expect(await transferIds('ledger_b')).toEqual(idsA);
    expect(idsA.filter((id) => !idsBefore.has(id)).sort()).toEqual(committed);
    // Each transfer nets to zero across the two ledgers, and each ledger's balances moved by
    // exactly the sum of its transfer rows since the accounts opened.
    let net = 0;
    for (const ledger of ['ledger_a', 'ledger_b'] as const) {
      const [row] = await primaryQuery<{ moved: string; balances: string }>(
        ledger,
        'select (select coalesce(sum(amount), 0) from transfers)::text as moved, (select sum(balance) from accounts)::text as balances',
      );
      expect(Number(row?.balances)).toBe(
        DEMO_ACCOUNTS.count * DEMO_ACCOUNTS.openingBalance + Number(row?.moved),
      );
      net += Number(row?.moved);
    }
    expect(net).toBe(0);
  });
});

/** The account of ledger A holding the most (the tests above move money around at random). */
function richestA(map: Map<string, number>): string {
  return [...map].filter(([id]) => id.startsWith('a')).sort((x, y) => y[1] - x[1])[0]![0];
}

describe('the saga mode', () => {
  it('moves money with a saga, reads it back with the token, and shows the saga', async () => {
    const before = await balances();
    const from = richestA(before);
    const moved = await call('POST', '/transfers?mode=saga', {
      body: { from, to: 'b4', amount: 30 },
    });
    expect(moved.status).toBe(201);
    expect(moved.body).toMatchObject({
      from,
      to: 'b4',
      amount: 30,
      mode: 'saga',
      status: 'completed',
      pending: [],
    });
    const after = await balances();
    expect(after.get(from)).toBe(before.get(from)! - 30);
    expect(after.get('b4')).toBe(before.get('b4')! + 30);
    const read = await call('GET', '/accounts/b4', {
      headers: { 'x-consistency-token': moved.headers.get('x-consistency-token')! },
    });
    expect((read.body as Account).balance).toBe(after.get('b4'));
    const saga = await call('GET', `/sagas/${(moved.body as Transfer).sagaId!}`);
    expect(saga.body).toMatchObject({ saga: 'transfer', status: 'completed' });
    // Put it back, so the totals below stay what the other tests expect.
    await call('POST', '/transfers?mode=saga', { body: { from: 'b4', to: from, amount: 30 } });
  });

  it('refuses an overdraft with 409 and changes nothing; refunds the debit when the credit is refused', async () => {
    const before = await balances();
    const from = richestA(before);
    const overdraft = await call('POST', '/transfers?mode=saga', {
      body: { from, to: 'b5', amount: before.get(from)! + 1 },
    });
    expect(overdraft.status).toBe(409);
    expect(problem(overdraft).code).toBe('INSUFFICIENT_FUNDS');
    const nowhere = await call('POST', '/transfers?mode=saga', {
      body: { from, to: 'b99', amount: 10 },
    });
    expect(nowhere.status).toBe(404);
    expect(problem(nowhere).code).toBe('NOT_FOUND');
    // The debit happened and was refunded: every balance is what it was.
    expect(await balances()).toEqual(before);
    const [entries] = await primaryQuery<{ statuses: string[] }>(
      'ledger_a',
      // The first saga test's debit and credit back are applied; the refused one's debit reversed.
      `select array_agg(status order by status) as statuses from saga_entries
       where account = $1 and status <> 'applied'`,
      [from],
    );
    expect(entries?.statuses).toEqual(['reversed']);
  });

  it('five overdrafts refused in a row do not hold up the next saga transfer: it answers 201 completed', async () => {
    const before = await balances();
    const from = richestA(before);
    for (let i = 0; i < 5; i++) {
      const refused = await call('POST', '/transfers?mode=saga', {
        body: { from, to: 'b6', amount: before.get(from)! + 1 },
      });
      expect(problem(refused).code).toBe('INSUFFICIENT_FUNDS');
    }
    // A refusal is the ledger's answer: the ledgers' circuit breaker stays closed, nothing parks.
    const moved = await call('POST', '/transfers?mode=saga', {
      body: { from, to: 'b6', amount: 5 },
    });
    expect(moved.status).toBe(201);
    expect(moved.body).toMatchObject({ mode: 'saga', status: 'completed' });
    // Put it back, so the totals below stay what the other tests expect.
    const back = await call('POST', '/transfers?mode=saga', {
      body: { from: 'b6', to: from, amount: 5 },
    });
    expect(back.status).toBe(201);
    expect(await balances()).toEqual(before);
  });
});

describe('bad input gets a 4xx problem, never a 500', () => {
  it.each([
    ['a string amount', { from: 'a1', to: 'b1', amount: '25' }, 'amount'],
    ['a zero amount', { from: 'a1', to: 'b1', amount: 0 }, 'amount'],
    ['a negative amount', { from: 'a1', to: 'b1', amount: -5 }, 'amount'],
    ['a fractional amount', { from: 'a1', to: 'b1', amount: 2.5 }, 'amount'],
    ['an amount over the limit', { from: 'a1', to: 'b1', amount: 1_000_001 }, 'amount'],
    ['a huge amount', { from: 'a1', to: 'b1', amount: 1e300 }, 'amount'],
    ['a missing amount', { from: 'a1', to: 'b1' }, 'amount'],
    ['a numeric account', { from: 1, to: 'b1', amount: 5 }, 'from'],
    ['an account of no ledger', { from: 'c1', to: 'b1', amount: 5 }, 'from'],
    ['an account with SQL in it', { from: "a1' or 1=1--", to: 'b1', amount: 5 }, 'from'],
    ['the same account twice', { from: 'a1', to: 'a1', amount: 5 }, 'to'],
    ['two accounts of one ledger', { from: 'b1', to: 'b2', amount: 5 }, 'to'],
    ['an unknown field', { from: 'a1', to: 'b1', amount: 5, memo: 'hi' }, 'memo'],
    ['an array', [{ from: 'a1', to: 'b1', amount: 5 }], 'body'],
  ])('%s', async (_, body, field) => {
    const response = await call('POST', '/transfers', { body });
    expect(response.status).toBe(400);
    expect(problem(response).code).toBe('VALIDATION_FAILED');
    expect(problem(response).detail).toContain(field);
  });

  it('an unknown mode, with the allowed ones named', async () => {
    for (const query of ['?mode=sagas', '?mode=', '?mode=2PC', '?mode=2pc&mode=2pc', '?other=1']) {
      const response = await call('POST', `/transfers${query}`, {
        body: { from: 'a1', to: 'b1', amount: 1 },
      });
      expect(response.status).toBe(400);
      expect(problem(response).code).toBe('VALIDATION_FAILED');
    }
    const saga = await call('POST', '/transfers?mode=3pc', {
      body: { from: 'a1', to: 'b1', amount: 1 },
    });
    expect(problem(saga).detail).toMatch(/mode: must be 2pc or saga/);
  });

  it('malformed JSON, no body, a body that is not JSON, a bad account id in the path', async () => {
    const malformed = await call('POST', '/transfers', { raw: '{"from": "a1",' });
    expect(malformed.status).toBe(400);
    problem(malformed);

    const empty = await call('POST', '/transfers');
    expect(empty.status).toBe(400);
    expect(problem(empty).code).toBe('VALIDATION_FAILED');

    const text = await call('POST', '/transfers', { raw: 'from=a1', type: 'text/plain' });
    expect(text.status).toBe(415);
    problem(text);

    const oversized = await call('POST', '/transfers', {
      body: { from: 'a1', to: 'b1', amount: 1, memo: 'x'.repeat(5000) },
    });
    expect(oversized.status).toBe(413);
    problem(oversized);

    for (const id of ['zz', 'a', 'a1x', 'a12345678901']) {
      const response = await call('GET', `/accounts/${id}`);
      expect(response.status).toBe(400);
      expect(problem(response).code).toBe('VALIDATION_FAILED');
    }
  });

  it('nothing above changed a balance or left a transaction prepared', async () => {
    expect(total(await balances())).toBe(DEMO_ACCOUNTS.count * 2 * DEMO_ACCOUNTS.openingBalance);
    expect(await preparedCount()).toBe(0);
    expect(await transferIds('ledger_b')).toEqual(await transferIds('ledger_a'));
  });
});

describe('Idempotency-Key on POST /transfers', () => {
  const MODES = ['2pc', 'saga'] as const;

  /** POSTs the transfer `times` times at once with the same headers; the answers, in order. */
  const post = (
    mode: (typeof MODES)[number],
    body: { from: string; to: string; amount: number },
    key: string | undefined,
    times: number,
  ) =>
    Promise.all(
      Array.from({ length: times }, () =>
        call('POST', `/transfers?mode=${mode}`, {
          body,
          headers: key === undefined ? {} : { 'idempotency-key': key },
        }),
      ),
    );

  /** How much `from` lost and `to` gained since `before`. */
  const moved = async (before: Map<string, number>, from: string, to: string) => {
    const after = await balances();
    expect(total(after)).toBe(total(before));
    return {
      debited: before.get(from)! - after.get(from)!,
      credited: after.get(to)! - before.get(to)!,
    };
  };

  for (const mode of MODES) {
    it(`${mode}: a retry with the same key answers the first transfer and moves the money once`, async () => {
      const before = await balances();
      // The richest account: a5 is emptied by an earlier test, and only refilled by chance.
      const body = { from: richestA(before), to: 'b5', amount: 7 };
      const key = randomUUID();
      const [first] = await post(mode, body, key, 1);
      const [retry] = await post(mode, body, key, 1);
      expect(first!.status).toBe(201);
      expect(retry!.status).toBe(201);
      expect(await moved(before, body.from, 'b5')).toEqual({ debited: 7, credited: 7 });
      expect(retry!.body).toEqual(first!.body);
      expect(retry!.headers.get('idempotent-replayed')).toBe('true');
    });

    it(`${mode}: concurrent identical requests with one key move the money once`, async () => {
      const before = await balances();
      const body = { from: 'b6', to: 'a6', amount: 3 };
      const answers = await post(mode, body, randomUUID(), 4);
      expect(answers.map((answer) => answer.status)).toEqual([201, 201, 201, 201]);
      expect(await moved(before, 'b6', 'a6')).toEqual({ debited: 3, credited: 3 });
      expect(new Set(answers.map((answer) => (answer.body as Transfer).id)).size).toBe(1);
    });

    it(`${mode}: without a key, the same request sent twice moves the money twice (control)`, async () => {
      const before = await balances();
      const body = { from: 'a8', to: 'b8', amount: 2 };
      for (const answer of [
        ...(await post(mode, body, undefined, 1)),
        ...(await post(mode, body, undefined, 1)),
      ])
        expect(answer.status).toBe(201);
      expect(await moved(before, 'a8', 'b8')).toEqual({ debited: 4, credited: 4 });
    });
  }

  it('saga: a key whose request died before starting the saga: the retry starts it, once', async () => {
    const before = await balances();
    const body = { from: 'a7', to: 'b7', amount: 4 };
    const key = randomUUID();
    const transferId = randomUUID();
    // What a request leaves when its process dies between writing the key and starting the saga.
    await primaryQuery(
      'ledger_a',
      `insert into transfer_keys (key, fingerprint, transfer_id, mode) values ($1, $2, $3, 'saga')`,
      [key, requestFingerprint({ mode: 'saga', ...body }), transferId],
    );
    const answers = [...(await post('saga', body, key, 2)), ...(await post('saga', body, key, 1))];
    expect(answers.map((answer) => answer.status)).toEqual([201, 201, 201]);
    expect(answers.map((answer) => (answer.body as Transfer).id)).toEqual([
      transferId,
      transferId,
      transferId,
    ]);
    expect(await moved(before, 'a7', 'b7')).toEqual({ debited: 4, credited: 4 });
  });

  it('refuses a key reused for another transfer, or in the other mode, with 422 and moves nothing', async () => {
    const key = randomUUID();
    const [first] = await post('2pc', { from: 'a9', to: 'b9', amount: 5 }, key, 1);
    expect(first!.status).toBe(201);
    const before = await balances();
    for (const [mode, body] of [
      ['2pc', { from: 'a9', to: 'b9', amount: 6 }],
      ['2pc', { from: 'b9', to: 'a9', amount: 5 }],
      ['saga', { from: 'a9', to: 'b9', amount: 5 }],
    ] as const) {
      const [answer] = await post(mode, body, key, 1);
      expect(answer!.status).toBe(422);
      expect(problem(answer!).code).toBe('IDEMPOTENCY_KEY_REUSED');
    }
    expect(await moved(before, 'a9', 'b9')).toEqual({ debited: 0, credited: 0 });
    expect(await preparedCount()).toBe(0);
    expect(await transferIds('ledger_b')).toEqual(await transferIds('ledger_a'));
  });
});
