import type { Migration } from '../db/migrate.js';

/**
 * The demo service's schema, oldest first. Applied at start-up by `migrate`; a released entry is
 * never edited, a change is a new entry at the end.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-users',
    sql: `
      create table users (
        id uuid primary key default gen_random_uuid(),
        name text not null,
        email text not null unique,
        version int not null default 1,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
    `,
  },
];

/** How many demo accounts each ledger opens with, and with how much. */
export const DEMO_ACCOUNTS = { count: 10, openingBalance: 1000 } as const;

/**
 * The schema of one ledger database of the transfers demo (two-phase commit), oldest first.
 * `transfers` holds one row per transfer on each side, with the same id: the amount is negative
 * on the ledger the money left and positive on the one it reached, so after any failure both
 * ledgers must hold the same set of ids. The demo accounts (`a1`…`a10` in ledger A, `b1`…`b10`
 * in ledger B) open with 1000 each.
 */
export function ledgerMigrations(prefix: 'a' | 'b'): readonly Migration[] {
  return [
    {
      id: '0001-ledger',
      sql: `
        create table accounts (
          id text primary key,
          balance bigint not null check (balance >= 0),
          updated_at timestamptz not null default now()
        );
        create table transfers (
          id uuid primary key,
          amount bigint not null,
          created_at timestamptz not null default now()
        );
      `,
    },
    {
      id: '0002-demo-accounts',
      sql: `
        insert into accounts (id, balance)
        select '${prefix}' || g, ${DEMO_ACCOUNTS.openingBalance}
        from generate_series(1, ${DEMO_ACCOUNTS.count}) as g
        on conflict (id) do nothing;
      `,
    },
    {
      // The saga mode of the transfers demo: one row per debit or credit, keyed by its step's
      // idempotency key; a reversal leaves the row (reversed, or cancelled when it came first)
      // so that a retried debit arriving late has no effect.
      id: '0003-saga-entries',
      sql: `
        create table saga_entries (
          key text primary key,
          transfer_id uuid not null,
          account text not null,
          amount bigint not null,
          status text not null check (status in ('applied', 'reversed', 'cancelled')),
          created_at timestamptz not null default now(),
          updated_at timestamptz not null default now()
        );
      `,
    },
    {
      // Idempotency keys of POST /transfers, in ledger A (every transfer takes part there): the
      // request's fingerprint and the transfer it made. A 2PC transfer writes its key in the
      // distributed transaction itself, so a key exists if and only if its transfer committed;
      // a saga transfer writes it before starting the saga under the same key, and a retry
      // starts (or finds) that saga.
      id: '0004-transfer-keys',
      sql: `
        create table transfer_keys (
          key text primary key,
          fingerprint text not null,
          transfer_id uuid not null,
          mode text not null check (mode in ('2pc', 'saga')),
          transaction text,
          created_at timestamptz not null default now()
        );
      `,
    },
  ];
}
