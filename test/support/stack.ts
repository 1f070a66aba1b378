import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { inject } from 'vitest';

import { LocalStack } from '../../src/stack/index.js';

let shared: Promise<LocalStack> | undefined;

/** The stack the global setup started, opened in this test worker. */
export function testStack(): Promise<LocalStack> {
  shared ??= LocalStack.open({ dir: inject('stackDir') });
  return shared;
}

/** A database of its own for one test file, present on the primary and every replica. */
export interface TestDatabase {
  readonly name: string;
  readonly primaryUrl: string;
  readonly replicaUrls: Readonly<Record<string, string>>;
  drop(): Promise<void>;
}

/**
 * Creates a fresh database on the primary and waits until every replica has replayed it, so a test
 * file never sees another file's tables.
 */
export async function createTestDatabase(prefix = 't'): Promise<TestDatabase> {
  const stack = await testStack();
  const name = `${prefix
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_')
    .slice(0, 40)}_${randomBytes(4).toString('hex')}`;
  await stack.query('primary', `create database "${name}"`);
  await stack.waitForReplicas();
  return {
    name,
    primaryUrl: stack.url('primary', name),
    replicaUrls: Object.fromEntries(
      stack.replicas.map((replica) => [replica.name, stack.url(replica.name, name)]),
    ),
    drop: async () => {
      await stack.resetFaults();
      await rollbackPrepared(stack, name);
      await stack.query('primary', `drop database if exists "${name}" with (force)`);
    },
  };
}

/**
 * Rolls back the prepared transactions a test left in `database` (or in every database): they
 * outlive sessions, hold locks, and keep a database from being dropped.
 */
export async function rollbackPrepared(stack: LocalStack, database?: string): Promise<void> {
  const rows = await stack.query<{ gid: string; database: string }>(
    'primary',
    'select gid, database from pg_prepared_xacts where $1::text is null or database = $1',
    [database ?? null],
  );
  for (const row of rows) {
    // ROLLBACK PREPARED must run in the transaction's own database.
    await stack.query(
      'primary',
      `rollback prepared '${row.gid.replaceAll("'", "''")}'`,
      [],
      row.database,
    );
  }
}

/** Polls `check` every 10 ms until it returns a value other than `undefined`, for at most `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await Promise.resolve()
      .then(check)
      .catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(10);
  }
}
