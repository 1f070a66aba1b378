import { randomBytes } from 'node:crypto';

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { MIGRATIONS } from '../src/app/migrations.js';
import { type Migration, migrate, MIGRATIONS_TABLE } from '../src/db/migrate.js';
import { ReplikitError } from '../src/errors.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let admin: pg.Pool;
const pools: pg.Pool[] = [];

/** A pool whose default schema is a fresh one, so each test starts from an empty database. */
async function freshSchema(): Promise<{ schema: string; pool: () => pg.Pool }> {
  const schema = `m_${randomBytes(4).toString('hex')}`;
  await admin.query(`create schema ${schema}`);
  return {
    schema,
    pool: () => {
      const pool = new pg.Pool({
        connectionString: db.primaryUrl,
        options: `-c search_path=${schema}`,
        max: 2,
      });
      pools.push(pool);
      return pool;
    },
  };
}

async function recorded(schema: string): Promise<string[]> {
  const { rows } = await admin.query<{ id: string }>(
    `select id from ${schema}.${MIGRATIONS_TABLE} order by applied_at, id`,
  );
  return rows.map((row) => row.id);
}

async function tableExists(schema: string, table: string): Promise<boolean> {
  const { rows } = await admin.query<{ found: boolean }>(
    'select to_regclass($1) is not null as found',
    [`${schema}.${table}`],
  );
  return rows[0]?.found === true;
}

beforeAll(async () => {
  db = await createTestDatabase('migrate');
  admin = new pg.Pool({ connectionString: db.primaryUrl, max: 2 });
});

afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.end()));
  await admin.end();
  await db.drop();
});

describe('migrate', () => {
  it("creates the demo's users table and records the migration", async () => {
    const { schema, pool } = await freshSchema();
    const result = await migrate(pool(), MIGRATIONS);
    expect(result).toEqual({ applied: ['0001-users'], alreadyApplied: [], unknown: [] });
    expect(await recorded(schema)).toEqual(['0001-users']);

    const { rows } = await admin.query<{
      column_name: string;
      data_type: string;
      is_nullable: string;
    }>(
      `select column_name, data_type, is_nullable from information_schema.columns
        where table_schema = $1 and table_name = 'users' order by ordinal_position`,
      [schema],
    );
    expect(rows).toEqual([
      { column_name: 'id', data_type: 'uuid', is_nullable: 'NO' },
      { column_name: 'name', data_type: 'text', is_nullable: 'NO' },
      { column_name: 'email', data_type: 'text', is_nullable: 'NO' },
      { column_name: 'version', data_type: 'integer', is_nullable: 'NO' },
      { column_name: 'created_at', data_type: 'timestamp with time zone', is_nullable: 'NO' },
      { column_name: 'updated_at', data_type: 'timestamp with time zone', is_nullable: 'NO' },
    ]);
    const inserted = await admin.query<{ id: string; version: number }>(
      `insert into ${schema}.users (name, email) values ('Ada', 'ada@example.org') returning id, version`,
    );
    expect(inserted.rows[0]?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(inserted.rows[0]?.version).toBe(1);
    await expect(
      admin.query(`insert into ${schema}.users (name, email) values ('Ada 2', 'ada@example.org')`),
    ).rejects.toThrow(/duplicate key/);
  });

  it('does nothing the second time', async () => {
    const { schema, pool } = await freshSchema();
    await migrate(pool(), MIGRATIONS);
    const again = await migrate(pool(), MIGRATIONS);
    expect(again).toEqual({ applied: [], alreadyApplied: ['0001-users'], unknown: [] });
    expect(await recorded(schema)).toEqual(['0001-users']);
  });

  it('applies each migration once when several processes start at the same time', async () => {
    const { schema, pool } = await freshSchema();
    // Not idempotent on purpose: a second run of any of them fails ("already exists").
    const migrations: Migration[] = [
      { id: '0001', sql: 'create table a (id int primary key)' },
      { id: '0002', sql: 'select pg_sleep(0.2); create table b (id int primary key)' },
      { id: '0003', sql: 'insert into a values (1)' },
    ];
    // Control: running a migration's SQL twice does fail, so a double application would show.
    const { schema: controlSchema, pool: controlPool } = await freshSchema();
    const control = controlPool();
    await control.query(migrations[0]!.sql);
    await expect(control.query(migrations[0]!.sql)).rejects.toThrow(/already exists/);
    expect(controlSchema).not.toBe(schema);

    const results = await Promise.all(Array.from({ length: 6 }, () => migrate(pool(), migrations)));
    const appliedEverywhere = results.flatMap((result) => result.applied).sort();
    expect(appliedEverywhere).toEqual(['0001', '0002', '0003']);
    for (const result of results) {
      expect([...result.applied, ...result.alreadyApplied].sort()).toEqual([
        '0001',
        '0002',
        '0003',
      ]);
    }
    expect(await recorded(schema)).toEqual(['0001', '0002', '0003']);
    const { rows } = await admin.query<{ n: number }>(`select count(*)::int as n from ${schema}.a`);
    expect(rows[0]?.n).toBe(1);
  });

  it('rolls back a failing migration and stops there', async () => {
    const { schema, pool } = await freshSchema();
    const migrations: Migration[] = [
      { id: '0001', sql: 'create table ok (id int)' },
      { id: '0002', sql: 'create table half (id int); select 1 / 0' },
      { id: '0003', sql: 'create table later (id int)' },
    ];
    const failure = await migrate(pool(), migrations).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(ReplikitError);
    expect(failure).toMatchObject({
      code: 'MIGRATION_FAILED',
      details: { id: '0002' },
      message: expect.stringMatching(/^migration 0002 failed: division by zero$/) as unknown,
    });
    expect(await recorded(schema)).toEqual(['0001']);
    expect(await tableExists(schema, 'ok')).toBe(true);
    expect(await tableExists(schema, 'half')).toBe(false);
    expect(await tableExists(schema, 'later')).toBe(false);

    // Fixed in a later release: the run resumes at the migration that failed.
    const fixed = migrations.map((m) =>
      m.id === '0002' ? { ...m, sql: 'create table half (id int)' } : m,
    );
    expect((await migrate(pool(), fixed)).applied).toEqual(['0002', '0003']);
  });

  it('refuses to fill a gap in the history of a database', async () => {
    const { schema, pool } = await freshSchema();
    await migrate(pool(), [
      { id: '0001', sql: 'select 1' },
      { id: '0003', sql: 'select 3' },
    ]);
    const err = await migrate(pool(), [
      { id: '0001', sql: 'select 1' },
      { id: '0002', sql: 'create table gap (id int)' },
      { id: '0003', sql: 'select 3' },
    ]).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'MIGRATION_OUT_OF_ORDER' });
    expect(await tableExists(schema, 'gap')).toBe(false);
  });

  it('does not start when already aborted', async () => {
    const { schema, pool } = await freshSchema();
    const controller = new AbortController();
    controller.abort(new Error('stopping'));
    await expect(migrate(pool(), MIGRATIONS, { signal: controller.signal })).rejects.toThrow(
      'stopping',
    );
    expect(await tableExists(schema, MIGRATIONS_TABLE)).toBe(false);
  });
});
