import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { MIGRATIONS } from '../src/app/migrations.js';
import { type Migration, planMigrations } from '../src/db/migrate.js';
import { ReplikitError } from '../src/errors.js';

const list = (...ids: string[]): Migration[] =>
  ids.map((id) => ({ id, sql: `-- ${id}\nselect 1` }));

function planError(migrations: readonly Migration[], applied: string[]): ReplikitError {
  try {
    planMigrations(migrations, applied);
  } catch (err) {
    if (err instanceof ReplikitError) return err;
    throw err;
  }
  throw new Error('expected planMigrations to throw');
}

describe('planMigrations', () => {
  it('applies everything to a new database, in list order', () => {
    const plan = planMigrations(list('0001', '0002', '0003'), []);
    expect(plan.pending.map((m) => m.id)).toEqual(['0001', '0002', '0003']);
    expect(plan.alreadyApplied).toEqual([]);
    expect(plan.unknown).toEqual([]);
  });

  it('applies only the tail a database lacks', () => {
    const plan = planMigrations(list('0001', '0002', '0003'), ['0002', '0001']);
    expect(plan.pending.map((m) => m.id)).toEqual(['0003']);
    expect(plan.alreadyApplied).toEqual(['0001', '0002']);
  });

  it('reports ids a newer version applied, without failing', () => {
    const plan = planMigrations(list('0001'), ['0001', '0002']);
    expect(plan.pending).toEqual([]);
    expect(plan.unknown).toEqual(['0002']);
  });

  it('refuses a migration inserted before one already applied', () => {
    const err = planError(list('0001', '0001b', '0002'), ['0001', '0002']);
    expect(err.code).toBe('MIGRATION_OUT_OF_ORDER');
    expect(err.details).toEqual({ missing: '0001b', applied: '0002' });
  });

  it.each([
    ['a repeated id', list('0001', '0001')],
    ['an empty id', list('')],
    ['an id with spaces around it', list(' 0001')],
    ['no SQL', [{ id: '0001', sql: '  ' }]],
  ])('refuses a list with %s', (_, migrations) => {
    expect(planError(migrations, []).code).toBe('MIGRATION_INVALID');
  });

  it('for any list and any applied prefix, pending is exactly the rest, in order', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.stringMatching(/^[a-z0-9-]{1,12}$/), { maxLength: 20 }),
        fc.nat(),
        fc.array(fc.stringMatching(/^x[a-z0-9]{1,8}$/), { maxLength: 3 }),
        (ids, cut, foreign) => {
          const migrations = list(...ids);
          const prefix = ids.slice(0, cut % (ids.length + 1));
          const plan = planMigrations(migrations, [...prefix].reverse().concat(foreign));
          expect(plan.alreadyApplied).toEqual(prefix);
          expect(plan.pending.map((m) => m.id)).toEqual(ids.slice(prefix.length));
          expect(new Set(plan.unknown)).toEqual(new Set(foreign.filter((id) => !ids.includes(id))));
        },
      ),
    );
  });

  it('for any applied set that is not a prefix, refuses to plan', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.stringMatching(/^[a-z0-9-]{1,12}$/), { minLength: 2, maxLength: 20 }),
        fc.func(fc.boolean()),
        (ids, chosen) => {
          const applied = ids.filter((id) => chosen(id));
          const isPrefix = applied.every((id, index) => ids[index] === id);
          fc.pre(!isPrefix);
          expect(planError(list(...ids), applied).code).toBe('MIGRATION_OUT_OF_ORDER');
        },
      ),
    );
  });

  it("accepts the demo service's own list", () => {
    expect(planMigrations(MIGRATIONS, []).pending).toHaveLength(MIGRATIONS.length);
  });
});
