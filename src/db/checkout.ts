import type pg from 'pg';

import { ReplikitError } from '../errors.js';

/** A database to connect to: a connection string, or a `pg` pool configuration. */
export type DatabaseConnection = string | pg.PoolConfig;

/** A client checked out of a pool, and how to give it back. */
export interface CheckedOutClient {
  readonly client: pg.PoolClient;
  /** Returns the client to its pool; `broken` discards it instead. Safe to call more than once. */
  readonly release: (broken?: boolean) => void;
}

/**
 * Checks a client out of `pool`. A checked-out client has no error listener of the pool's, and
 * a server that goes away mid-query makes it emit one, which would crash the process: it is
 * swallowed here (the query rejects anyway) until the client is released.
 */
export async function checkout(pool: pg.Pool): Promise<CheckedOutClient> {
  const client = await pool.connect();
  const ignore = (): void => undefined;
  client.on('error', ignore);
  let released = false;
  return {
    client,
    release: (broken = false) => {
      if (released) return;
      released = true;
      client.off('error', ignore);
      client.release(broken);
    },
  };
}

/** What {@link commitTransaction} needs of a client. */
export interface CommitClient {
  query(sql: string): Promise<{ command: string }>;
}

/**
 * Ends the transaction open on `client` with `statement` (COMMIT, or PREPARE TRANSACTION for a
 * two-phase participant) and makes sure that it committed.
 *
 * Once any statement of a transaction has failed, the transaction is aborted, even if the caller
 * caught the error and went on. PostgreSQL then answers COMMIT (and PREPARE TRANSACTION) not with
 * an error but with the command tag ROLLBACK: treating a resolved COMMIT as success would report
 * a transaction whose writes are all gone as committed. Every COMMIT replikit sends goes through
 * here.
 *
 * @throws ReplikitError `TRANSACTION_ROLLED_BACK` when PostgreSQL rolled the transaction back.
 */
export async function commitTransaction(client: CommitClient, statement = 'commit'): Promise<void> {
  const { command } = await client.query(statement);
  if (command === 'ROLLBACK') {
    throw new ReplikitError(
      'TRANSACTION_ROLLED_BACK',
      'the transaction was rolled back, not committed: one of its statements failed and the error was caught, which aborts the transaction (PostgreSQL answered COMMIT with ROLLBACK); nothing it wrote was kept',
      { details: { statement: statement.split(' ', 2).join(' ').toUpperCase() } },
    );
  }
}

/**
 * Runs `fn` in one transaction on `client`: BEGIN, `fn`, then a checked COMMIT
 * ({@link commitTransaction}); when `fn` or the COMMIT throws, the transaction is rolled back and
 * the error rethrown. When even the ROLLBACK fails the connection is in an unknown state:
 * `onRollbackFailed` learns so, and the caller must not reuse the client.
 */
export async function transactionOn<C extends pg.ClientBase, T>(
  client: C,
  fn: (client: C) => Promise<T>,
  onRollbackFailed: (err: unknown) => void = () => undefined,
): Promise<T> {
  await client.query('begin');
  try {
    const result = await fn(client);
    await commitTransaction(client);
    return result;
  } catch (err) {
    // After a COMMIT that answered ROLLBACK no transaction is open: this ROLLBACK only warns.
    await client.query('rollback').catch(onRollbackFailed);
    throw err;
  }
}

/**
 * Runs `fn` in one transaction on a client checked out of `pool`: committed when it resolves
 * (and the COMMIT did commit, see {@link commitTransaction}), rolled back when it throws; a client
 * whose rollback failed is discarded.
 *
 * ```ts
 * const id = await inTransaction(pool, async (client) => {
 *   const { rows } = await client.query('insert into orders (total) values ($1) returning id', [10]);
 *   return rows[0].id;
 * });
 * ```
 *
 * @throws ReplikitError `TRANSACTION_ROLLED_BACK` when `fn` resolved but a statement of it had
 *   failed (its error caught), so that PostgreSQL rolled the transaction back.
 */
export async function inTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const { client, release } = await checkout(pool);
  let broken = false;
  try {
    return await transactionOn(client, fn, () => {
      broken = true;
    });
  } finally {
    release(broken);
  }
}
