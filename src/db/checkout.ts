import type pg from 'pg';

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

/**
 * Runs `fn` in one transaction on a client checked out of `pool`: committed when it resolves,
 * rolled back when it throws; a client whose rollback failed is discarded.
 */
export async function inTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const { client, release } = await checkout(pool);
  let broken = false;
  try {
    await client.query('begin');
    try {
      const result = await fn(client);
      await client.query('commit');
      return result;
    } catch (err) {
      await client.query('rollback').catch(() => {
        broken = true;
      });
      throw err;
    }
  } finally {
    release(broken);
  }
}
