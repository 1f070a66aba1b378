import type pg from 'pg';

import { ReplikitError } from '../errors.js';
import { transactionOn } from './checkout.js';

/**
 * One schema change. `sql` may hold several statements; it runs in one transaction together with
 * the row that records it, so it must not contain statements that refuse a transaction block
 * (`CREATE INDEX CONCURRENTLY`, `VACUUM`). Once released, a migration is never edited: a change
 * is a new migration at the end of the list.
 */
export interface Migration {
  /** Stable, unique name, such as `0001-users`. */
  readonly id: string;
  readonly sql: string;
}

/** What {@link planMigrations} decided. */
export interface MigrationPlan {
  /** Migrations to apply, in list order. */
  readonly pending: readonly Migration[];
  /** Ids in the list that the database already has. */
  readonly alreadyApplied: readonly string[];
  /**
   * Ids the database has that the list does not: a newer version of the service migrated this
   * database. Not an error (old and new instances overlap during a rolling deploy), but worth a log line.
   */
  readonly unknown: readonly string[];
}

/** What {@link migrate} did. */
export interface MigrateResult {
  /** Ids this call applied, in order. */
  readonly applied: readonly string[];
  /** Ids that were applied already, by an earlier start or by a process running concurrently. */
  readonly alreadyApplied: readonly string[];
  /** See {@link MigrationPlan.unknown}. */
  readonly unknown: readonly string[];
}

/** Options for {@link migrate}. */
export interface MigrateOptions {
  /** Checked between migrations; a migration that has begun runs to its end or rolls back. */
  readonly signal?: AbortSignal;
  /** Told about each migration this call applies, once committed. */
  readonly onApplied?: (id: string, durationMs: number) => void;
}

/** Name of the table that records applied migrations, in the connection's default schema. */
export const MIGRATIONS_TABLE = 'replikit_migrations';

/**
 * Key of the transaction-level advisory lock every migration step holds: `'replikit'` in ASCII.
 * Any process migrating the same database waits on it, so concurrent starts apply each migration once.
 */
const LOCK_KEY = '8243118303898986868';

/**
 * Checks a migration list and works out what to apply, given the ids a database has. Pure.
 *
 * ```ts
 * planMigrations([{ id: '0001', sql: '…' }, { id: '0002', sql: '…' }], ['0001']).pending;
 * // [{ id: '0002', … }]
 * ```
 *
 * @throws ReplikitError `MIGRATION_INVALID` when an id is empty or repeated, or a migration has no SQL.
 * @throws ReplikitError `MIGRATION_OUT_OF_ORDER` when a migration not yet applied is listed
 *   before one that is: the database's history differs from the list's, and applying the gap now
 *   would produce a schema no other database has.
 */
export function planMigrations(
  migrations: readonly Migration[],
  appliedIds: Iterable<string>,
): MigrationPlan {
  const seen = new Set<string>();
  for (const [index, migration] of migrations.entries()) {
    if (migration.id.trim() === '' || migration.id !== migration.id.trim()) {
      throw new ReplikitError(
        'MIGRATION_INVALID',
        `migration ${index + 1} has an empty id or one with surrounding spaces`,
        { details: { index } },
      );
    }
    if (seen.has(migration.id)) {
      throw new ReplikitError('MIGRATION_INVALID', `migration id ${migration.id} is listed twice`, {
        details: { id: migration.id },
      });
    }
    if (migration.sql.trim() === '') {
      throw new ReplikitError('MIGRATION_INVALID', `migration ${migration.id} has no SQL`, {
        details: { id: migration.id },
      });
    }
    seen.add(migration.id);
  }

  const applied = new Set(appliedIds);
  const pending: Migration[] = [];
  const alreadyApplied: string[] = [];
  for (const migration of migrations) {
    if (!applied.has(migration.id)) {
      pending.push(migration);
      continue;
    }
    const gap = pending[0];
    if (gap !== undefined) {
      throw new ReplikitError(
        'MIGRATION_OUT_OF_ORDER',
        `migration ${gap.id} is not applied but ${migration.id}, listed after it, is; migrations must be added at the end of the list`,
        { details: { missing: gap.id, applied: migration.id } },
      );
    }
    alreadyApplied.push(migration.id);
  }
  const unknown = [...applied].filter((id) => !seen.has(id));
  return { pending, alreadyApplied, unknown };
}

/**
 * Runs `work` in a transaction holding the migration lock. When even the rollback fails the
 * connection is in an unknown state: `onBroken` learns so and the caller must not reuse it.
 */
function withMigrationLock<T>(
  client: pg.PoolClient,
  onBroken: (err: Error) => void,
  work: () => Promise<T>,
): Promise<T> {
  return transactionOn(
    client,
    async () => {
      await client.query('select pg_advisory_xact_lock($1::bigint)', [LOCK_KEY]);
      return work();
    },
    (rollbackError: unknown) => {
      onBroken(rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError)));
    },
  );
}

/**
 * Applies the migrations a database lacks, in list order, each in its own transaction under a
 * transaction-level advisory lock: idempotent, and safe when several processes start at once
 * (each waits for the lock, then finds the migration recorded and skips it).
 *
 * ```ts
 * const { applied } = await migrate(pool, [{ id: '0001-users', sql: 'create table users (…)' }]);
 * ```
 *
 * @throws ReplikitError `MIGRATION_FAILED` (with the database error as `cause`) when a migration's
 *   SQL fails; it is rolled back and the ones after it are not attempted.
 * @throws ReplikitError `MIGRATION_OUT_OF_ORDER` / `MIGRATION_INVALID`, see {@link planMigrations}.
 */
export async function migrate(
  pool: pg.Pool,
  migrations: readonly Migration[],
  options: MigrateOptions = {},
): Promise<MigrateResult> {
  options.signal?.throwIfAborted();
  const client = await pool.connect();
  let broken: Error | undefined;
  const onBroken = (err: Error): void => {
    broken = err;
  };
  try {
    const plan = await withMigrationLock(client, onBroken, async () => {
      await client.query(
        `create table if not exists ${MIGRATIONS_TABLE} (
           id text primary key,
           applied_at timestamptz not null default now()
         )`,
      );
      const { rows } = await client.query<{ id: string }>(`select id from ${MIGRATIONS_TABLE}`);
      return planMigrations(
        migrations,
        rows.map((row) => row.id),
      );
    });

    const applied: string[] = [];
    const alreadyApplied = [...plan.alreadyApplied];
    for (const migration of plan.pending) {
      options.signal?.throwIfAborted();
      const started = performance.now();
      const done = await withMigrationLock(client, onBroken, async () => {
        // Another process may have applied it while this one waited for the lock.
        const { rowCount } = await client.query(`select 1 from ${MIGRATIONS_TABLE} where id = $1`, [
          migration.id,
        ]);
        if (rowCount !== 0) return false;
        try {
          // No parameters: the simple query protocol, which runs several statements.
          await client.query(migration.sql);
        } catch (cause) {
          throw new ReplikitError(
            'MIGRATION_FAILED',
            `migration ${migration.id} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
            { cause, details: { id: migration.id } },
          );
        }
        await client.query(`insert into ${MIGRATIONS_TABLE} (id) values ($1)`, [migration.id]);
        return true;
      });
      if (done) {
        applied.push(migration.id);
        options.onApplied?.(migration.id, performance.now() - started);
      } else {
        alreadyApplied.push(migration.id);
      }
    }
    return { applied, alreadyApplied, unknown: plan.unknown };
  } finally {
    // A connection whose rollback failed is closed rather than handed back to the pool.
    client.release(broken);
  }
}
