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
