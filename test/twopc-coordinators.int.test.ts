import { randomUUID } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createCoordinator,
  TwoPhaseError,
  type Coordinator,
  type CoordinatorOptions,
  type RecoveryReport,
} from '../src/twopc/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { LEDGER_SCHEMA, OPEN_ACCOUNTS, transfer } from './support/ledger.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

/**
 * Several coordinators on one server: each with its own decision database, or sharing one, and
 * sharing a participant. Whatever one does must never settle another's transactions.
 */
let stack: LocalStack;
let decisionsA: TestDatabase;
let decisionsB: TestDatabase;
let ledgerA: TestDatabase;
/** The participant both coordinators write to. */
let shared: TestDatabase;
let ledgerC: TestDatabase;

async function rows<T extends Record<string, unknown>>(
  db: TestDatabase,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  return stack.query<T>('primary', sql, params, db.name);
}

/** Whether the transfer `id` is on a ledger (committed there). */
const recorded = async (db: TestDatabase, id: string): Promise<boolean> =>
  (await rows(db, 'select 1 from transfers where id = $1', [id])).length > 0;

/** The global id under which `transaction` is prepared in `db`, found however it is spelled. */
async function gidOf(db: TestDatabase, transaction: string): Promise<string> {
  const [row] = await rows<{ gid: string }>(
    db,
    'select gid from pg_prepared_xacts where database = current_database() and gid like $1',
    [`%${transaction}%`],
  );
  if (row === undefined) throw new Error(`${transaction} is not prepared in ${db.name}`);
  return row.gid;
}

/** Settles `transaction`'s prepared part in `db` by hand, as an operator or a stray coordinator would. */
async function settleByHand(
  db: TestDatabase,
  transaction: string,
  how: 'commit' | 'rollback',
): Promise<void> {
  await rows(db, `${how} prepared '${await gidOf(db, transaction)}'`);
}

/**
 * A coordinator over ledger A and the shared ledger, deciding in `decisions` (by default A's own
 * decision database), started; `use` runs with it, and it is closed afterwards.
 */
async function withCoordinator<T>(
  options: Pick<CoordinatorOptions, 'name' | 'faults'> & { decisions?: TestDatabase },
  use: (coordinator: Coordinator) => Promise<T>,
): Promise<T> {
  const coordinator = createCoordinator({
    name: options.name,
    coordinator: (options.decisions ?? decisionsA).primaryUrl,
    participants: { ledger_a: ledgerA.primaryUrl, ledger_b: shared.primaryUrl },
    recoveryIntervalMs: 0,
    ...(options.faults === undefined ? {} : { faults: options.faults }),
  });
  try {
    await coordinator.start();
    return await use(coordinator);
  } finally {
    await coordinator.close();
  }
}

/** A coordinator over the shared ledger and ledger C, started (close it). */
async function otherCoordinator(name: string, decisions: TestDatabase): Promise<Coordinator> {
  const coordinator = createCoordinator({
    name,
    coordinator: decisions.primaryUrl,
    participants: { ledger_b: shared.primaryUrl, ledger_c: ledgerC.primaryUrl },
    recoveryIntervalMs: 0,
  });
  await coordinator.start();
  return coordinator;
}

/**
 * Moves 5 from `account` on ledger A to the same account on the shared ledger: the transfer's id,
 * and `committed` or what `run` threw.
 */
async function transferAcross(
  coordinator: Coordinator,
  account: string,
): Promise<{ id: string; outcome: unknown }> {
  const id = randomUUID();
  const outcome = await coordinator
    .run((tx) =>
      transfer(tx, { id, from: 'ledger_a', fromAccount: account, toAccount: account, amount: 5 }),
    )
    .then(
      ({ pending }) => (pending.length === 0 ? 'committed' : { pending }),
      (err: unknown) => err,
    );
  return { id, outcome };
}

/** Where the transfer `id` is committed: [on ledger A, on the shared ledger]. */
const sides = async (id: string): Promise<[boolean, boolean]> => [
  await recorded(ledgerA, id),
  await recorded(shared, id),
];

const decisionRows = async (db: TestDatabase, transactions: string[]): Promise<string[]> =>
  (
    await rows<{ transaction: string }>(
      db,
      'select transaction from replikit_2pc_decisions where transaction = any($1::text[]) order by transaction',
      [transactions],
    )
  ).map((row) => row.transaction);

beforeAll(async () => {
  stack = await testStack();
  [decisionsA, decisionsB, ledgerA, shared, ledgerC] = await Promise.all([
    createTestDatabase('multi_decisions_a'),
    createTestDatabase('multi_decisions_b'),
    createTestDatabase('multi_ledger_a'),
    createTestDatabase('multi_shared'),
    createTestDatabase('multi_ledger_c'),
  ]);
  for (const ledger of [ledgerA, shared, ledgerC]) {
    for (const sql of [LEDGER_SCHEMA, OPEN_ACCOUNTS])
      await stack.query('primary', sql, [], ledger.name);
  }
});

afterAll(async () => {
  await Promise.all([decisionsA, decisionsB, ledgerA, shared, ledgerC].map((db) => db.drop()));
});

describe('two-phase commit with several coordinators sharing a participant', () => {
  it.each([
    ['different names', 'alpha', 'beta'],
    ['the same name by mistake', 'twin', 'twin'],
  ])(
    "another coordinator's recovery leaves a prepared transaction alone (%s)",
    async (_, nameA, nameB) => {
      // B keeps its decisions elsewhere and calls the shared ledger by the same name as A does.
      const b = await otherCoordinator(nameB, decisionsB);
      let report: RecoveryReport | undefined;
      try {
        // A has prepared on both ledgers and not decided yet when B's recovery pass runs.
        const afterPrepare = async (): Promise<void> => {
          report = await b.recover();
        };
        const { id, outcome } = await withCoordinator(
          { name: nameA, faults: { afterPrepare } },
          (a) => transferAcross(a, 'acct1'),
        );
        // Atomic: on both ledgers or on neither; and A's answer says which.
        const [onA, onShared] = await sides(id);
        expect({ ledger_a: onA, shared: onShared }).toEqual(
          outcome === 'committed'
            ? { ledger_a: true, shared: true }
            : { ledger_a: false, shared: false },
        );
        expect(outcome).toBe('committed');
        expect(report).toMatchObject({ committed: 0, rolledBack: 0 });
      } finally {
        await b.close();
      }
    },
  );

  it('does not report success when someone rolled back a prepared part after the decision', async () => {
    // Decided: commit. Then someone else (an operator, another coordinator) rolls back one side.
    const afterDecision = (transaction: string) => settleByHand(shared, transaction, 'rollback');
    const { id, outcome } = await withCoordinator(
      { name: 'meddled', faults: { afterDecision } },
      (a) => transferAcross(a, 'acct2'),
    );
    expect(outcome).toBeInstanceOf(TwoPhaseError);
    expect((outcome as TwoPhaseError).code).toBe('TWOPC_PARTIAL_COMMIT');
    expect((outcome as TwoPhaseError).details).toMatchObject({
      committed: ['ledger_a'],
      rolledBack: ['ledger_b'],
    });
    expect(await sides(id)).toEqual([true, false]);
  });

  it('does not report a rollback when someone committed a prepared part before the decision', async () => {
    // Not decided; someone commits one side by hand, and the transaction then fails.
    const afterPrepare = async (transaction: string) => {
      await settleByHand(shared, transaction, 'commit');
      throw new Error('the work failed after prepare');
    };
    const { id, outcome } = await withCoordinator(
      { name: 'meddled', faults: { afterPrepare } },
      (a) => transferAcross(a, 'acct5'),
    );
    expect((outcome as TwoPhaseError).code).toBe('TWOPC_PARTIAL_COMMIT');
    expect((outcome as TwoPhaseError).details).toMatchObject({
      committed: ['ledger_b'],
      rolledBack: ['ledger_a'],
    });
    expect(await sides(id)).toEqual([false, true]);
  });

  it('reports success when a prepared part was committed for it by someone else', async () => {
    // The other process of the same coordinator that recovers after this one lost its lock does
    // exactly this; so does a retry of a COMMIT PREPARED whose answer was lost.
    const afterDecision = (transaction: string) => settleByHand(shared, transaction, 'commit');
    const { id, outcome } = await withCoordinator(
      { name: 'helped', faults: { afterDecision } },
      (a) => transferAcross(a, 'acct3'),
    );
    expect(outcome).toBe('committed');
    expect(await sides(id)).toEqual([true, true]);
  });

  it("pruning keeps another coordinator's decisions in a shared decision database", async () => {
    // A and C record decisions in the same database; C does not know ledger A at all.
    const c = await otherCoordinator('gamma', decisionsA);
    const crash = new Error('the coordinator died after its decision');
    let transaction = '';
    // A dies after committing the shared ledger's part, ledger A's still prepared.
    const afterDecision = async (id: string) => {
      transaction = id;
      await settleByHand(shared, id, 'commit');
      throw crash;
    };
    try {
      await withCoordinator({ name: 'alpha' }, async (a) => {
        const { id, outcome } = await withCoordinator(
          { name: 'alpha', faults: { afterDecision } },
          (dying) => transferAcross(dying, 'acct4'),
        );
        expect(outcome).toBe(crash);
        // Old enough to prune, and decisions with nothing prepared: one of each coordinator's,
        // and one under C's name over a participant C does not know (a process of it configured
        // differently): C cannot see whether that one is still prepared there.
        const [gammaDone, alphaDone, gammaElsewhere] = [0, 1, 2].map(() =>
          randomUUID().replaceAll('-', ''),
        ) as [string, string, string];
        await rows(
          decisionsA,
          `insert into replikit_2pc_decisions (transaction, coordinator, participants) values
             ($1, 'gamma', '{ledger_b,ledger_c}'), ($2, 'alpha', '{ledger_a,ledger_b}'),
             ($3, 'gamma', '{ledger_a,ledger_c}')`,
          [gammaDone, alphaDone, gammaElsewhere],
        );
        await rows(
          decisionsA,
          "update replikit_2pc_decisions set decided_at = now() - interval '2 minutes'",
        );

        await c.recover();
        // C pruned its own finished decision, and kept both of A's and the one it cannot check.
        expect(
          await decisionRows(decisionsA, [transaction, gammaDone, alphaDone, gammaElsewhere]),
        ).toEqual([transaction, alphaDone, gammaElsewhere].sort());

        // A's recovery still finds its decision: ledger A commits, the transfer is whole.
        expect(await a.recover()).toMatchObject({ committed: 1, rolledBack: 0 });
        expect(await sides(id)).toEqual([true, true]);
        // The next pass sees nothing prepared any more and prunes A's decisions itself.
        await a.recover();
        expect(await decisionRows(decisionsA, [transaction, alphaDone])).toEqual([]);
      });
    } finally {
      await c.close();
    }
  });
});
