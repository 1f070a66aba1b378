import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { inTransaction } from '../src/db/checkout.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createCoordinator, type Coordinator } from '../src/twopc/index.js';
import { LEDGER_SCHEMA, OPEN_ACCOUNTS, transfer } from './support/ledger.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

/**
 * A transaction one of whose statements failed is aborted, even when the caller caught the error:
 * PostgreSQL then answers COMMIT (and PREPARE TRANSACTION) with the tag ROLLBACK, not an error.
 * Nothing may report such a transaction as committed.
 */

let stack: LocalStack;
let db: TestDatabase;
let pool: pg.Pool;
let cluster: Cluster;

const rows = async (id: number): Promise<number> => {
  const found = await stack.query('primary', 'select 1 from notes where id = $1', [id], db.name);
  return found.length;
};

/** A callback's work: a statement that fails and is caught, then the insert that matters. */
async function swallowThenInsert(
  client: { query: (sql: string, params?: unknown[]) => Promise<unknown> },
  id: number,
  swallow: boolean,
): Promise<string> {
  if (swallow) await client.query('select 1 / 0').catch(() => undefined);
  await client.query('insert into notes (id) values ($1)', [id]).catch(() => undefined);
  return 'done';
}

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('transactions');
  await stack.query('primary', 'create table notes (id int primary key)', [], db.name);
  pool = new pg.Pool({ connectionString: db.primaryUrl, max: 2 });
  cluster = createCluster({ primary: db.primaryUrl, replicas: db.replicaUrls });
  await cluster.ready();
});

afterAll(async () => {
  await cluster.close();
  await pool.end();
  await db.drop();
});

describe('a transaction whose COMMIT answered ROLLBACK', () => {
  it('Cluster.transaction rejects with TRANSACTION_ROLLED_BACK and returns no token', async () => {
    await expect(
      cluster.transaction((client) => swallowThenInsert(client, 1, true)),
    ).rejects.toMatchObject({ code: 'TRANSACTION_ROLLED_BACK' });
    expect(await rows(1)).toBe(0);
    // Control: the same callback without the swallowed failure commits and returns a token.
    const { result, token } = await cluster.transaction((client) =>
      swallowThenInsert(client, 2, false),
    );
    expect(result).toBe('done');
    expect(token).toBeDefined();
    expect(await rows(2)).toBe(1);
  });

  it('inTransaction rejects with TRANSACTION_ROLLED_BACK, and the client goes back usable', async () => {
    await expect(
      inTransaction(pool, (client) => swallowThenInsert(client, 3, true)),
    ).rejects.toMatchObject({ code: 'TRANSACTION_ROLLED_BACK' });
    expect(await rows(3)).toBe(0);
    expect(await inTransaction(pool, (client) => swallowThenInsert(client, 4, false))).toBe('done');
    expect(await rows(4)).toBe(1);
    // Neither client was left inside a transaction.
    const { rows: states } = await pool.query<{ open: boolean }>(
      'select pg_current_xact_id_if_assigned() is not null as open',
    );
    expect(states[0]?.open).toBe(false);
  });
});

describe('a two-phase participant whose PREPARE answered ROLLBACK', () => {
  let coordinatorDb: TestDatabase;
  let ledgerA: TestDatabase;
  let ledgerB: TestDatabase;
  let coordinator: Coordinator;

  const balance = async (ledger: TestDatabase, account: string): Promise<string> => {
    const [row] = await stack.query<{ v: string }>(
      'primary',
      'select balance::text as v from accounts where id = $1',
      [account],
      ledger.name,
    );
    return row!.v;
  };

  beforeAll(async () => {
    [coordinatorDb, ledgerA, ledgerB] = await Promise.all([
      createTestDatabase('tx_coordinator'),
      createTestDatabase('tx_ledger_a'),
      createTestDatabase('tx_ledger_b'),
    ]);
    for (const ledger of [ledgerA, ledgerB])
      for (const sql of [LEDGER_SCHEMA, OPEN_ACCOUNTS])
        await stack.query('primary', sql, [], ledger.name);
    coordinator = createCoordinator({
      name: 'tx-test',
      coordinator: coordinatorDb.primaryUrl,
      participants: { ledger_a: ledgerA.primaryUrl, ledger_b: ledgerB.primaryUrl },
      recoveryIntervalMs: 0,
    });
    await coordinator.start();
  });

  afterAll(async () => {
    await coordinator.close();
    await Promise.all([coordinatorDb.drop(), ledgerA.drop(), ledgerB.drop()]);
  });

  it('is not committed on the other participant, and run() does not report success', async () => {
    await expect(
      coordinator.run(async (tx) => {
        const id = await transfer(tx, {
          from: 'ledger_a',
          fromAccount: 'acct1',
          toAccount: 'acct2',
          amount: 100,
        });
        // A failed statement the work swallowed aborts ledger_b's transaction, credit included.
        await tx.query('ledger_b', 'select 1 / 0').catch(() => undefined);
        return id;
      }),
    ).rejects.toMatchObject({ code: 'TWOPC_ABORTED' });
    expect(await balance(ledgerA, 'acct1')).toBe('1000');
    expect(await balance(ledgerB, 'acct2')).toBe('1000');
  });
});
