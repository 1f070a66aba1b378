import { randomBytes } from 'node:crypto';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ensureDatabase, quoteIdentifier } from '../src/db/ensure-database.js';
import type { LocalStack } from '../src/stack/index.js';
import { testStack } from './support/stack.js';

let stack: LocalStack;
const created: string[] = [];

function newName(): string {
  const name = `ensure_${randomBytes(4).toString('hex')}`;
  created.push(name);
  return name;
}

async function exists(name: string): Promise<boolean> {
  const rows = await stack.query('primary', 'select 1 from pg_database where datname = $1', [name]);
  return rows.length === 1;
}

beforeAll(async () => {
  stack = await testStack();
});

afterAll(async () => {
  for (const name of created) {
    await stack.query('primary', `drop database if exists ${quoteIdentifier(name)} with (force)`);
  }
});

describe('ensureDatabase', () => {
  it('creates a missing database once', async () => {
    const name = newName();
    expect(await exists(name)).toBe(false);
    expect(await ensureDatabase(stack.url('primary'), name)).toBe(true);
    expect(await exists(name)).toBe(true);
    expect(await ensureDatabase(stack.url('primary'), name)).toBe(false);
  });

  it('lets concurrent callers race without an error; exactly one creates it', async () => {
    const name = newName();
    const results = await Promise.all(
      Array.from({ length: 5 }, () => ensureDatabase(stack.url('primary'), name)),
    );
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await exists(name)).toBe(true);
  });

  it('quotes the name rather than running it', async () => {
    expect(quoteIdentifier('a"b')).toBe('"a""b"');
    const name = `${newName()}"; select 1; --`;
    created.push(name);
    expect(await ensureDatabase(stack.url('primary'), name)).toBe(true);
    expect(await exists(name)).toBe(true);
  });
});
