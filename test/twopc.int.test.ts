import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  createCoordinator,
  formatGid,
  TwoPhaseError,
  type Coordinator,
} from '../src/twopc/index.js';
import { newTransactionId } from '../src/twopc/gid.js';
import type { LocalStack } from '../src/stack/index.js';
import { LEDGER_SCHEMA, OPEN_ACCOUNTS, transfer } from './support/ledger.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';
import { TcpProxy } from './support/tcp-proxy.js';

let stack: LocalStack;
let coordinatorDb: TestDatabase;
let ledgerA: TestDatabase;
let ledgerB: TestDatabase;
let proxy: TcpProxy;
let coordinator: Coordinator;

async function scalar<T>(db: TestDatabase, sql: string, params: unknown[] = []): Promise<T> {
  const [row] = await stack.query<{ v: T }>('primary', sql, params, db.name);
  return row!.v;
}

const balance = (db: TestDatabase, account: string): Promise<string> =>
  scalar<string>(db, 'select balance::text as v from accounts where id = $1', [account]);
const prepared = (db: TestDatabase): Promise<number> =>
  scalar<number>(
    db,
    'select count(*)::int as v from pg_prepared_xacts where database = current_database()',
  );
const totalMoney = async (): Promise<number> =>
  Number(await scalar<string>(ledgerA, 'select sum(balance)::text as v from accounts')) +
  Number(await scalar<string>(ledgerB, 'select sum(balance)::text as v from accounts'));

beforeAll(async () => {
  stack = await testStack();
  [coordinatorDb, ledgerA, ledgerB] = await Promise.all([
    createTestDatabase('coordinator'),
    createTestDatabase('ledger_a'),
    createTestDatabase('ledger_b'),
  ]);
  for (const ledger of [ledgerA, ledgerB]) {
    for (const sql of [LEDGER_SCHEMA, OPEN_ACCOUNTS])
      await stack.query('primary', sql, [], ledger.name);
  }
  // Ledger B is reached through a proxy, to cut it off mid-transaction.
  proxy = await TcpProxy.start(stack.primary.port);
  coordinator = createCoordinator({
    name: 'test',
    coordinator: coordinatorDb.primaryUrl,
    participants: { ledger_a: ledgerA.primaryUrl, ledger_b: proxy.url(ledgerB.name) },
    prepareTimeoutMs: 500,
    recoveryIntervalMs: 0,
  });
  await coordinator.start();
});

afterEach(() => {
  proxy.resume();
});

afterAll(async () => {
  await coordinator.close();
  await proxy.close();
  await Promise.all([coordinatorDb.drop(), ledgerA.drop(), ledgerB.drop()]);
});

describe('two-phase commit', () => {
  it('commits across both ledgers and leaves nothing prepared', async () => {
    const before = await totalMoney();
    const { result: id, pending } = await coordinator.run((tx) =>
      transfer(tx, { from: 'ledger_a', fromAccount: 'acct1', toAccount: 'acct2', amount: 100 }),
    );
    expect(pending).toEqual([]);
    expect(await balance(ledgerA, 'acct1')).toBe('900');
    expect(await balance(ledgerB, 'acct2')).toBe('1100');
    expect(
      await scalar(ledgerB, 'select amount::int as v from transfers where id = $1', [id]),
    ).toBe(100);
    expect(await totalMoney()).toBe(before);
    expect([await prepared(ledgerA), await prepared(ledgerB)]).toEqual([0, 0]);
  });

  it('rolls everything back when the work fails on one participant', async () => {
    const before = [await balance(ledgerA, 'acct3'), await balance(ledgerB, 'acct3')];
    const failure = await coordinator
      .run((tx) =>
        transfer(tx, { from: 'ledger_a', fromAccount: 'acct3', toAccount: 'acct3', amount: 5000 }),
      )
      .catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(TwoPhaseError);
    expect((failure as TwoPhaseError).code).toBe('TWOPC_ABORTED');
    expect([await balance(ledgerA, 'acct3'), await balance(ledgerB, 'acct3')]).toEqual(before);
  });

  it('rolls back a participant that already prepared when another fails to prepare', async () => {
    // A deferred constraint is checked at PREPARE TRANSACTION: ledger B refuses there, after ledger A
    // may have prepared.
    await stack.query(
      'primary',
      'create table guard (k int, constraint guard_unique unique (k) deferrable initially deferred); insert into guard values (1)',
      [],
      ledgerB.name,
    );
    try {
      const before = [await balance(ledgerA, 'acct4'), await balance(ledgerB, 'acct4')];
      const failure = await coordinator
        .run(async (tx) => {
          await transfer(tx, {
            from: 'ledger_a',
            fromAccount: 'acct4',
            toAccount: 'acct4',
            amount: 10,
          });
          await tx.query('ledger_b', 'insert into guard values (1)');
        })
        .catch((err: unknown) => err);
      expect((failure as TwoPhaseError).code).toBe('TWOPC_ABORTED');
      expect([await balance(ledgerA, 'acct4'), await balance(ledgerB, 'acct4')]).toEqual(before);
      expect([await prepared(ledgerA), await prepared(ledgerB)]).toEqual([0, 0]);
    } finally {
      await stack.query('primary', 'drop table guard', [], ledgerB.name);
    }
  });

  it('rolls everything back when a participant hangs during prepare', async () => {
    const before = [await balance(ledgerA, 'acct5'), await balance(ledgerB, 'acct5')];
    const failure = await coordinator
      .run(async (tx) => {
        await transfer(tx, {
          from: 'ledger_a',
          fromAccount: 'acct5',
          toAccount: 'acct5',
          amount: 10,
        });
        proxy.stall();
      })
      .catch((err: unknown) => err);
    expect((failure as TwoPhaseError).code).toBe('TWOPC_PREPARE_TIMEOUT');
    proxy.resume();
    expect([await balance(ledgerA, 'acct5'), await balance(ledgerB, 'acct5')]).toEqual(before);
    expect(await prepared(ledgerA)).toBe(0);
    const report = await coordinator.recover();
    expect(report.unreachable).toEqual([]);
    expect(await prepared(ledgerB)).toBe(0);
  });

  it('completes a transfer whose participant went down after the decision, once it returns', async () => {
    const cutOff = createCoordinator({
      name: 'cutoff',
      coordinator: coordinatorDb.primaryUrl,
      participants: { ledger_a: ledgerA.primaryUrl, ledger_b: proxy.url(ledgerB.name) },
      recoveryIntervalMs: 0,
      faults: { afterDecision: () => proxy.block() },
    });
    try {
      const before = await totalMoney();
      const { pending } = await cutOff.run((tx) =>
        transfer(tx, { from: 'ledger_a', fromAccount: 'acct6', toAccount: 'acct6', amount: 50 }),
      );
      expect(pending).toEqual(['ledger_b']);
      // Decided: ledger A has committed; ledger B still holds it prepared, invisible.
      expect(await balance(ledgerA, 'acct6')).toBe('950');
      expect(await balance(ledgerB, 'acct6')).toBe('1000');
      expect(await prepared(ledgerB)).toBe(1);

      proxy.resume();
      const report = await cutOff.recover();
      expect(report.committed).toBe(1);
      expect(await balance(ledgerB, 'acct6')).toBe('1050');
      expect(await totalMoney()).toBe(before);
      expect(await prepared(ledgerB)).toBe(0);
    } finally {
      proxy.resume();
      await cutOff.close();
    }
  });

  it('recovery commits with a decision, rolls back without, and skips what a live process runs', async () => {
    const admin = new pg.Client({ connectionString: coordinatorDb.primaryUrl });
    await admin.connect();
    const a = new pg.Client({ connectionString: ledgerA.primaryUrl });
    await a.connect();
    try {
      // Left prepared by other processes of this coordinator: same name, same decision database.
      const [{ store }] = (
        await admin.query<{ store: string }>('select id as store from replikit_2pc_store')
      ).rows as [{ store: string }];
      // Global ids are unique per server, not per database: fresh ones every run.
      const ids = [newTransactionId(), newTransactionId(), newTransactionId()];
      for (const [i, transaction] of ids.entries()) {
        await a.query('begin');
        await a.query(`update accounts set balance = balance + 1 where id = 'acct${10 + i}'`);
        await a.query(
          `prepare transaction '${formatGid({ coordinator: 'test', store, transaction, participant: 'ledger_a' })}'`,
        );
      }
      // The first was decided before its process died; the third's process is alive.
      await admin.query(
        'insert into replikit_2pc_decisions (transaction, coordinator, participants) values ($1, $2, $3)',
        [ids[0], 'test', ['ledger_a']],
      );
      await admin.query('select pg_advisory_lock(hashtextextended($1, 0))', [ids[2]]);

      const report = await coordinator.recover();
      expect(report).toMatchObject({ committed: 1, rolledBack: 1, inProgress: 1, unresolved: 0 });
      expect(await balance(ledgerA, 'acct10')).toBe('1001');
      expect(await balance(ledgerA, 'acct11')).toBe('1000');
      expect(await prepared(ledgerA)).toBe(1);

      await admin.query('select pg_advisory_unlock(hashtextextended($1, 0))', [ids[2]]);
      expect((await coordinator.recover()).rolledBack).toBe(1);
      expect(await prepared(ledgerA)).toBe(0);
      expect(await balance(ledgerA, 'acct12')).toBe('1000');
    } finally {
      await a.end();
      await admin.end();
    }
  });

  it('breaks a deadlock across the two servers with lock_timeout and retries until both commit', async () => {
    // T1 locks A.acct7 then wants B.acct7; T2 locks B.acct7 then wants A.acct7. Neither server sees
    // a cycle of its own; the lock timeout breaks it and the transaction runs again.
    const fast = createCoordinator({
      name: 'deadlock',
      coordinator: coordinatorDb.primaryUrl,
      participants: { ledger_a: ledgerA.primaryUrl, ledger_b: ledgerB.primaryUrl },
      lockTimeoutMs: 200,
      maxAttempts: 20,
      recoveryIntervalMs: 0,
    });
    try {
      const before = await totalMoney();
      const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
      const results = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          fast.run(async (tx) => {
            const [first, second] =
              i % 2 === 0
                ? (['ledger_a', 'ledger_b'] as const)
                : (['ledger_b', 'ledger_a'] as const);
            await tx.query(first, "update accounts set balance = balance - 1 where id = 'acct7'");
            await pause();
            await tx.query(second, "update accounts set balance = balance + 1 where id = 'acct7'");
          }),
        ),
      );
      expect(results.every((result) => result.pending.length === 0)).toBe(true);
      expect(Math.max(...results.map((result) => result.attempts))).toBeGreaterThan(1);
      expect(await totalMoney()).toBe(before);
      expect([await prepared(ledgerA), await prepared(ledgerB)]).toEqual([0, 0]);
    } finally {
      await fast.close();
    }
  });

  it('says clearly when a participant cannot prepare transactions', async () => {
    // The machine's own PostgreSQL on 5432 keeps the default max_prepared_transactions = 0.
    const system = new pg.Client({
      connectionString: 'postgres://postgres@127.0.0.1:5432/postgres',
    });
    await system.connect();
    const [{ n }] = (
      await system.query<{ n: number }>(
        "select current_setting('max_prepared_transactions')::int as n",
      )
    ).rows as [{ n: number }];
    await system.end();
    expect(n).toBe(0);
    const refusing = createCoordinator({
      name: 'refusing',
      coordinator: coordinatorDb.primaryUrl,
      participants: {
        ledger_a: ledgerA.primaryUrl,
        system: 'postgres://postgres@127.0.0.1:5432/postgres',
      },
      recoveryIntervalMs: 0,
    });
    try {
      const failure = await refusing.start().catch((err: unknown) => err);
      expect((failure as TwoPhaseError).code).toBe('TWOPC_NOT_ENABLED');
      expect((failure as TwoPhaseError).message).toMatch(
        /participant system has max_prepared_transactions = 0/,
      );
    } finally {
      await refusing.close();
    }
  });
});
