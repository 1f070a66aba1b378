import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { migrate } from '../src/db/migrate.js';
import {
  createSagaEngine,
  defineSaga,
  SAGA_MIGRATIONS,
  type Json,
  type SagaEngine,
} from '../src/saga/index.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

/**
 * New sagas and checkpoints of concurrent callers share statements. These tests put one item the
 * database refuses into such a batch and check that only that item fails.
 *
 * The batch is made deterministic: calls made in one go reach the engine in order; the first two
 * are written at once (two flushes in flight) and the rest queue into one shared statement. The
 * refused item goes last, so it always shares a statement with the others.
 */

let db: TestDatabase;
let pool: pg.Pool;
const engines: SagaEngine[] = [];

/** An input (or a step output) the database refuses: the check constraint added in `beforeAll`. */
const REFUSED = 'refused-by-the-database';

beforeAll(async () => {
  db = await createTestDatabase('saga_batch');
  pool = new pg.Pool({ connectionString: db.primaryUrl, max: 4 });
  await migrate(pool, SAGA_MIGRATIONS);
  // A row PostgreSQL refuses, whatever the engine checks beforehand: a constraint of this test.
  await pool.query(
    `alter table replikit_sagas
       add constraint test_refused_input check (coalesce(input->>'customerId', '') <> '${REFUSED}'),
       add constraint test_refused_output check (coalesce(outputs->'only'->>'v', '') <> '${REFUSED}')`,
  );
});

afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close({ timeoutMs: 2000 })));
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

async function engine(saga: ReturnType<typeof oneStep>): Promise<SagaEngine> {
  const created = createSagaEngine({
    database: db.primaryUrl,
    sagas: [saga],
    // Long enough that a saga dropped after a failed checkpoint does not resume during the test.
    leaseMs: 60_000,
    pollIntervalMs: 60_000,
  });
  engines.push(created);
  await created.start();
  return created;
}

/** A saga of one remote step that returns `output(input)` once `gate` opens. */
function oneStep(
  name: string,
  output: (input: { customerId: string }) => Json,
  gate: Promise<void> = Promise.resolve(),
) {
  return defineSaga<{ customerId: string }>({
    name,
    version: 1,
    steps: [
      {
        name: 'only',
        retry: { maxAttempts: 1 },
        run: async (ctx) => {
          await gate;
          return output(ctx.input);
        },
        compensate: () => Promise.resolve(),
      },
    ],
  });
}

describe('a batch with one item the database refuses', () => {
  it.each([
    ['a check constraint', 'starts_check', REFUSED],
    ['jsonb: a NUL character', 'starts_nul', 'a\u0000b'],
    ['jsonb: a lone surrogate', 'starts_surrogate', '\ud800'],
  ])(
    'new sagas (%s): the refused one fails alone, the 39 others start and complete',
    async (_, name, bad) => {
      const saga = oneStep(name, () => ({ ok: true }));
      const e = await engine(saga);
      const inputs = Array.from({ length: 40 }, (_, i) => ({
        customerId: i === 39 ? bad : `c${i}`,
      }));
      const started = await Promise.allSettled(inputs.map((input) => e.run(saga, input)));
      expect(started[39]?.status).toBe('rejected');
      const good = started.slice(0, 39);
      expect(good.filter((r) => r.status === 'rejected').map((r) => String(r.reason))).toEqual([]);
      for (const result of good) {
        if (result.status !== 'fulfilled') continue;
        expect(result.value.created).toBe(true);
        expect((await e.wait(result.value.id, { timeoutMs: 10_000 })).state.status).toBe(
          'completed',
        );
      }
      const { rows } = await pool.query<{ n: number }>(
        'select count(*)::int as n from replikit_sagas where saga = $1',
        [name],
      );
      expect(rows[0]?.n).toBe(39);
    },
  );

  it('checkpoints: the saga whose output is refused fails alone, the 39 others complete', async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const saga = oneStep(
      'checkpoints',
      (input) => ({ v: input.customerId === 'bad' ? REFUSED : 'fine' }),
      gate,
    );
    const e = await engine(saga);
    const runs = await Promise.all(
      Array.from({ length: 40 }, (_, i) => e.run(saga, { customerId: i === 39 ? 'bad' : `c${i}` })),
    );
    // Every step waits at the gate; opened, they all return at once and their checkpoints queue
    // together, the refused one last.
    open();
    const finished = await Promise.all(
      runs
        .slice(0, 39)
        .map(async (run) => (await e.wait(run.id, { timeoutMs: 10_000 })).state.status),
    );
    expect(finished).toEqual(Array.from({ length: 39 }, () => 'completed'));
    // Its checkpoint went in the same batch and was refused: the log still has it at its step.
    const refused = await e.get(runs[39]!.id);
    expect(refused?.saga.state).toMatchObject({ status: 'running', outputs: {} });
  });
});
