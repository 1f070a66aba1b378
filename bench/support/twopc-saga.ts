/**
 * The saga variant of `bench/twopc.ts`: the transfers demo's saga (`src/app/transfer-saga.ts`:
 * debit with a compensating reversal, then the credit as the pivot) over the bench's two ledgers,
 * whose accounts are `acct1…acctN` on both sides, so the input names the side as well as the
 * account. The entries are written by the demo's own `applyEntry` and `reverseEntry`.
 */
import type pg from 'pg';
import { z } from 'zod';

import { applyEntry, reverseEntry } from '../../src/app/transfer-saga.js';
import { defineSaga, type SagaDefinition } from '../../src/saga/index.js';

export type LedgerSide = 'a' | 'b';

const sideAccount = z.strictObject({ side: z.enum(['a', 'b']), account: z.string().min(1) });

/** What a bench transfer saga is started with. */
export const benchTransferInputSchema = z.strictObject({
  transferId: z.uuid(),
  from: sideAccount,
  to: sideAccount,
  amount: z.number().int().min(1),
});

export type BenchTransferInput = z.infer<typeof benchTransferInputSchema>;

/** The saga's name in the log (`replikit_sagas.saga`). */
export const BENCH_TRANSFER_SAGA = 'bench_transfer';

/**
 * A saga ledger: the bench's `accounts` (plus the `updated_at` that `applyEntry` sets) and the
 * demo's `saga_entries` (migration `0003-saga-entries` of `src/app/migrations.ts`).
 */
export function sagaLedgerSchema(accounts: number, openingBalance: number): string {
  return `
    create table accounts (
      id text primary key,
      balance bigint not null check (balance >= 0),
      updated_at timestamptz not null default now()
    );
    create table saga_entries (
      key text primary key,
      transfer_id uuid not null,
      account text not null,
      amount bigint not null,
      status text not null check (status in ('applied', 'reversed', 'cancelled')),
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now()
    );
    insert into accounts (id, balance)
      select 'acct' || g, ${openingBalance} from generate_series(1, ${accounts}) g;`;
}

/**
 * The demo's transfer saga with the ledger chosen by side: the same steps, service, timeouts and
 * (default) retries.
 *
 * @param ledger the pool of a side's ledger database.
 */
export function createBenchTransferSaga(
  ledger: (side: LedgerSide) => Pick<pg.Pool, 'query'>,
): SagaDefinition<BenchTransferInput> {
  return defineSaga<BenchTransferInput>({
    name: BENCH_TRANSFER_SAGA,
    version: 1,
    input: benchTransferInputSchema,
    steps: [
      {
        name: 'debit',
        service: 'ledgers',
        timeoutMs: 5000,
        async run(ctx) {
          const { transferId, from, amount } = ctx.input;
          await applyEntry(ledger(from.side), {
            key: ctx.idempotencyKey,
            transferId,
            account: from.account,
            amount: -amount,
          });
        },
        async compensate(ctx) {
          const { transferId, from, amount } = ctx.input;
          await reverseEntry(ledger(from.side), {
            key: ctx.forwardKey,
            transferId,
            account: from.account,
            amount: -amount,
          });
        },
      },
      {
        name: 'credit',
        service: 'ledgers',
        timeoutMs: 5000,
        pivot: true,
        async run(ctx) {
          const { transferId, to, amount } = ctx.input;
          await applyEntry(ledger(to.side), {
            key: ctx.idempotencyKey,
            transferId,
            account: to.account,
            amount,
          });
        },
      },
    ],
  });
}
