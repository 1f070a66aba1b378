import pg from 'pg';

/** Quotes an SQL identifier, for the statements that cannot take it as a parameter. */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** PostgreSQL error codes meaning "someone created it first". */
const ALREADY_EXISTS = new Set(['42P04', '23505']);

/**
 * Creates database `name` on the server `adminUrl` points at (a URL to an existing database,
 * usually `postgres`) unless it exists. Safe when several processes race to create it.
 *
 * ```ts
 * const created = await ensureDatabase('postgres://postgres@127.0.0.1:5432/postgres', 'replikit');
 * ```
 *
 * @returns true when this call created it.
 */
export async function ensureDatabase(
  adminUrl: string,
  name: string,
  options: { connectionTimeoutMillis?: number } = {},
): Promise<boolean> {
  const client = new pg.Client({
    connectionString: adminUrl,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5_000,
    application_name: 'replikit',
  });
  await client.connect();
  try {
    const { rowCount } = await client.query('select 1 from pg_database where datname = $1', [name]);
    if (rowCount !== 0) return false;
    try {
      // CREATE DATABASE takes no parameters; the name is quoted, whatever the caller validated.
      await client.query(`create database ${quoteIdentifier(name)}`);
      return true;
    } catch (err) {
      if (ALREADY_EXISTS.has((err as { code?: string }).code ?? '')) return false;
      throw err;
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}
