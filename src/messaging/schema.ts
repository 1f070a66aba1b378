import type { Migration } from '../db/migrate.js';

/** The outbox table, in the producer's database. */
export const OUTBOX_TABLE = 'replikit_outbox';
/** Channel the outbox notifies on commit, and the relay listens to. */
export const OUTBOX_CHANNEL = 'replikit_outbox';
/** The inbox table, in the consumer's database. */
export const INBOX_TABLE = 'replikit_inbox';
/** The PostgreSQL transport's tables and channel, in the broker database. */
export const QUEUE_TABLE = 'replikit_message_queue';
export const SUBSCRIPTIONS_TABLE = 'replikit_message_subscriptions';
export const QUEUE_CHANNEL = 'replikit_message_queue';

/**
 * Schema of the transactional outbox, for `migrate(pool, outboxMigrations)` on the producer's
 * database. `position` orders messages; the relay deletes a row once its message is published,
 * so the table only ever holds the backlog.
 */
export const outboxMigrations: readonly Migration[] = [
  {
    id: 'replikit-outbox-0001',
    sql: `
      create table ${OUTBOX_TABLE} (
        position bigint generated always as identity primary key,
        id uuid not null unique,
        topic text not null,
        key text not null,
        payload jsonb not null,
        headers jsonb not null default '{}',
        created_at timestamptz not null default clock_timestamp()
      );`,
  },
];

/**
 * Schema of the inbox, for `migrate(pool, inboxMigrations)` on each consumer's database: one row
 * per (consumer group, message) handled or parked as a dead letter.
 */
export const inboxMigrations: readonly Migration[] = [
  {
    id: 'replikit-inbox-0001',
    sql: `
      create table ${INBOX_TABLE} (
        consumer text not null,
        message_id uuid not null,
        topic text not null,
        key text not null,
        status text not null check (status in ('handled', 'dead')),
        attempts int not null,
        processed_at timestamptz not null default now(),
        payload jsonb,
        headers jsonb,
        error text,
        primary key (consumer, message_id)
      );
      create index ${INBOX_TABLE}_dead on ${INBOX_TABLE} (consumer, processed_at) where status = 'dead';`,
  },
];

/**
 * Schema of the PostgreSQL transport, for `migrate(pool, postgresTransportMigrations)` on the
 * broker database (which may be any service's database). The transport runs it itself on start.
 */
export const postgresTransportMigrations: readonly Migration[] = [
  {
    id: 'replikit-message-queue-0001',
    sql: `
      create table ${SUBSCRIPTIONS_TABLE} (
        group_name text not null,
        topic text not null,
        created_at timestamptz not null default now(),
        primary key (group_name, topic)
      );
      create table ${QUEUE_TABLE} (
        seq bigint generated always as identity primary key,
        group_name text not null,
        message_id uuid not null,
        topic text not null,
        key text not null,
        payload jsonb not null,
        headers jsonb not null,
        attempts int not null default 0,
        available_at timestamptz not null default now(),
        enqueued_at timestamptz not null default now(),
        last_error text
      );
      create index ${QUEUE_TABLE}_heads on ${QUEUE_TABLE} (group_name, key, seq);`,
  },
];
