import type pg from 'pg';
import { z } from 'zod';

import { defineSaga, StepRejected, type SagaDefinition } from '../saga/index.js';
import { sqlState } from '../errors.js';

/** What a transfer saga is started with. */
export const transferInputSchema = z.strictObject({
  transferId: z.uuid(),
  from: z.string().min(1),
  to: z.string().min(1),
  amount: z.number().int().min(1),
});

export type TransferInput = z.infer<typeof transferInputSchema>;

/** Something to run SQL on. */
type Db = Pick<pg.Pool, 'query'>;

const CHECK_VIOLATION = '23514';

/**
 * Applies `amount` (negative for a debit) to an account once per key, in one statement: the entry
 * and the balance change commit together, a balance that would go negative fails the check
 * constraint and nothing is written.
 *
 * @throws StepRejected `insufficient_funds`, or `no_account` when the account does not exist.
 */
export async function applyEntry(
  db: Db,
  entry: { key: string; transferId: string; account: string; amount: number },
): Promise<void> {
  try {
    const { rows } = await db.query<{ known: boolean }>(
      `with entry as (
         insert into saga_entries (key, transfer_id, account, amount, status)
         select $1, $2, $3, $4, 'applied' where exists (select 1 from accounts where id = $3)
         on conflict (key) do nothing
         returning amount
       ), moved as (
         update accounts a set balance = a.balance + e.amount, updated_at = now()
         from entry e where a.id = $3
         returning 1
       )
       select exists (select 1 from accounts where id = $3) as known`,
      [entry.key, entry.transferId, entry.account, entry.amount],
    );
    if (rows[0]?.known !== true)
      throw new StepRejected('no_account', `no account ${entry.account}`, {
        account: entry.account,
      });
  } catch (err) {
    if (sqlState(err) === CHECK_VIOLATION)
      throw new StepRejected(
        'insufficient_funds',
        `account ${entry.account} holds less than ${-entry.amount}`,
        { account: entry.account, amount: -entry.amount },
      );
    throw err;
  }
}

/** Undoes the entry applied under `key`, once; leaves a cancelled row when there was none. */
export async function reverseEntry(
  db: Db,
  entry: { key: string; transferId: string; account: string; amount: number },
): Promise<void> {
  await db.query(
    `with reversed as (
       insert into saga_entries (key, transfer_id, account, amount, status)
       values ($1, $2, $3, $4, 'cancelled')
       on conflict (key) do update set status = 'reversed', updated_at = now()
         where saga_entries.status = 'applied'
       returning status, account, amount
     )
     update accounts a set balance = a.balance - r.amount, updated_at = now()
     from reversed r where r.status = 'reversed' and a.id = r.account`,
    [entry.key, entry.transferId, entry.account, entry.amount],
  );
}

/**
 * The transfers demo's saga mode: debit one ledger, credit the other; a credit that fails
 * refunds the debit. No prepared transactions and no locks held across databases, at the price
 * of a window in which the money has left one account and not reached the other (a reader of
 * both ledgers can see it in flight). The credit is the pivot: once it is done there is nothing
 * left to undo.
 *
 * @param ledgerOf the pool of the ledger that holds an account.
 */
export function createTransferSaga(
  ledgerOf: (account: string) => Db,
): SagaDefinition<TransferInput> {
  return defineSaga<TransferInput>({
    name: 'transfer',
    version: 1,
    input: transferInputSchema,
    steps: [
      {
        name: 'debit',
        service: 'ledgers',
        timeoutMs: 5000,
        async run(ctx) {
          const { transferId, from, amount } = ctx.input;
          await applyEntry(ledgerOf(from), {
            key: ctx.idempotencyKey,
            transferId,
            account: from,
            amount: -amount,
          });
        },
        async compensate(ctx) {
          const { transferId, from, amount } = ctx.input;
          await reverseEntry(ledgerOf(from), {
            key: ctx.forwardKey,
            transferId,
            account: from,
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
          await applyEntry(ledgerOf(to), {
            key: ctx.idempotencyKey,
            transferId,
            account: to,
            amount,
          });
        },
      },
    ],
  });
}
