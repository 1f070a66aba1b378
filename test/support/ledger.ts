import { randomUUID } from 'node:crypto';

import type { DistributedTransaction } from '../../src/twopc/index.js';

/** Two ledgers of the 2PC tests: accounts that may not go negative, and a record of each transfer. */
export const LEDGER_SCHEMA = `
  create table accounts (id text primary key, balance bigint not null check (balance >= 0));
  create table transfers (id uuid primary key, amount bigint not null);
`;

export const ACCOUNTS = 20;
export const OPENING_BALANCE = 1000;

/** SQL that opens every account with the same balance. */
export const OPEN_ACCOUNTS = `insert into accounts select 'acct' || g, ${OPENING_BALANCE} from generate_series(1, ${ACCOUNTS}) g`;

/**
 * Moves `amount` from an account in one ledger to an account in the other, recording the transfer
 * on both sides: after any crash, both ledgers must hold the same set of transfer ids.
 */
export async function transfer(
  tx: DistributedTransaction,
  options: {
    from: 'ledger_a' | 'ledger_b';
    fromAccount: string;
    toAccount: string;
    amount: number;
    id?: string;
  },
): Promise<string> {
  const id = options.id ?? randomUUID();
  const to = options.from === 'ledger_a' ? 'ledger_b' : 'ledger_a';
  await tx.query(options.from, 'update accounts set balance = balance - $1 where id = $2', [
    options.amount,
    options.fromAccount,
  ]);
  await tx.query(options.from, 'insert into transfers (id, amount) values ($1, $2)', [
    id,
    -options.amount,
  ]);
  await tx.query(to, 'update accounts set balance = balance + $1 where id = $2', [
    options.amount,
    options.toAccount,
  ]);
  await tx.query(to, 'insert into transfers (id, amount) values ($1, $2)', [id, options.amount]);
  return id;
}

/** A random transfer between random accounts, either direction. */
export function randomTransfer(): Parameters<typeof transfer>[1] {
  const pick = (): string => `acct${1 + Math.floor(Math.random() * ACCOUNTS)}`;
  return {
    from: Math.random() < 0.5 ? 'ledger_a' : 'ledger_b',
    fromAccount: pick(),
    toAccount: pick(),
    amount: 1 + Math.floor(Math.random() * 20),
  };
}
