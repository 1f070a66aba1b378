import express from 'express';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { ledgerMigrations } from '../src/app/migrations.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { createTransferSaga, type TransferInput } from '../src/app/transfer-saga.js';
import { migrate } from '../src/db/migrate.js';
import { problemDetailsMiddleware } from '../src/http/problem-details.js';
import { sagaAdminRouter } from '../src/http/sagas.js';
import {
  createSagaEngine,
  SAGA_MIGRATIONS,
  type SagaDefinition,
  type SagaEngine,
  type SagaEngineOptions,
} from '../src/saga/index.js';
import { jsonClient, problem } from './support/http.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

type Ledger = ReturnType<Parameters<typeof createTransferSaga>[0]>;

/**
 * One ledger's connection as the transfer saga's steps see it: a test can hold every call on the
 * wire until it says so, or have calls take effect and then lose their answers.
 */
class Wire {
  calls = 0;
  loseAnswers = false;
  #held: Promise<void> | undefined;
  #release: (() => void) | undefined;

  constructor(readonly pool: pg.Pool) {}

  hold(): void {
    this.#held = new Promise((resolve) => {
      this.#release = resolve;
    });
  }

  release(): void {
    this.#release?.();
    this.#held = undefined;
  }

  readonly ledger: Ledger = {
    query: (async (...args: Parameters<pg.Pool['query']>) => {
      this.calls++;
      await this.#held;
      const result = await (this.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
      if (this.loseAnswers) throw new Error('the connection was lost before the answer');
      return result;
    }) as Ledger['query'],
  };
}

let ledgerA: TestDatabase;
let ledgerB: TestDatabase;
let pools: { a: pg.Pool; b: pg.Pool };
let wires: { a: Wire; b: Wire };
let transfer: SagaDefinition<TransferInput>;
let server: RunningServer | undefined;
const engines: SagaEngine[] = [];

/** An engine on the saga log (in ledger A's database), as a separate process would run one. */
async function engine(overrides: Partial<SagaEngineOptions> = {}): Promise<SagaEngine> {
  const created = createSagaEngine({
    database: ledgerA.primaryUrl,
    sagas: [transfer],
    leaseMs: 60_000,
    pollIntervalMs: 100,
    ...overrides,
  });
  engines.push(created);
  await created.start();
  return created;
}

function input(from: string, to: string, amount: number): TransferInput {
  return { transferId: crypto.randomUUID(), from, to, amount };
}

/** The money in two accounts, straight from the ledgers. */
async function total(from: string, to: string): Promise<{ from: number; to: number }> {
  const balance = async (pool: pg.Pool, id: string) => {
    const { rows } = await pool.query<{ balance: string }>(
      'select balance::text as balance from accounts where id = $1',
      [id],
    );
    return Number(rows[0]?.balance);
  };
  return { from: await balance(pools.a, from), to: await balance(pools.b, to) };
}

/** The status of the credit the saga made on ledger B, if it made one. */
async function credit(sagaId: string): Promise<string | undefined> {
  const { rows } = await pools.b.query<{ status: string }>(
    'select status from saga_entries where key = $1',
    [`${sagaId}/credit`],
  );
  return rows[0]?.status;
}

beforeAll(async () => {
  [ledgerA, ledgerB] = await Promise.all([
    createTestDatabase('sagafence_a'),
    createTestDatabase('sagafence_b'),
  ]);
  pools = {
    a: new pg.Pool({ connectionString: ledgerA.primaryUrl, max: 10 }),
    b: new pg.Pool({ connectionString: ledgerB.primaryUrl, max: 10 }),
  };
  await migrate(pools.a, [...ledgerMigrations('a'), ...SAGA_MIGRATIONS]);
  await migrate(pools.b, ledgerMigrations('b'));
  wires = { a: new Wire(pools.a), b: new Wire(pools.b) };
  transfer = createTransferSaga((account) =>
    account.startsWith('a') ? wires.a.ledger : wires.b.ledger,
  );
});

afterEach(async () => {
  for (const wire of Object.values(wires)) {
    wire.release();
    wire.loseAnswers = false;
  }
  await server?.close();
  server = undefined;
  await Promise.all(engines.splice(0).map((e) => e.close({ timeoutMs: 2000 })));
});

afterAll(async () => {
  await Promise.all([pools?.a.end(), pools?.b.end()]);
  await Promise.all([ledgerA?.drop(), ledgerB?.drop()]);
});

describe('forced compensation and the pivot', () => {
  it('is refused while the pivot call is on the wire: the pivot lands and no money is created', async () => {
    const holder = await engine();
    const admin = await engine();
    const before = await total('a1', 'b1');
    wires.b.hold();
    const { id } = await holder.run(transfer, input('a1', 'b1', 10));
    // The debit is done and the credit (the pivot) is on its way to ledger B.
    await eventually(() => (wires.b.calls > 0 ? true : undefined));
    const answer = await admin.compensate(id).then(
      (record) => record,
      (err: unknown) => err,
    );
    wires.b.release();
    const settled = await admin.wait(id, { timeoutMs: 15_000 });
    await eventually(async () => ((await credit(id)) === undefined ? undefined : true));
    const after = await total('a1', 'b1');
    expect(after.from + after.to).toBe(before.from + before.to);
    expect(answer).toMatchObject({ code: 'SAGA_PIVOT_IN_DOUBT' });
    expect(settled.state.status).toBe('completed');
    expect(after).toEqual({ from: before.from - 10, to: before.to + 10 });
  });

  it('POST /sagas/:id/compensate answers 409 for a saga that needs attention with its pivot outcome unknown; a retry settles it', async () => {
    const admin = await engine();
    const app = express();
    app.use(sagaAdminRouter(admin));
    app.use(problemDetailsMiddleware({ logger: { error: () => undefined } }));
    const running = await listen(app, { port: 0, host: '127.0.0.1' });
    server = running;
    const call = jsonClient(() => running.url);
    const before = await total('a2', 'b2');
    // Every credit goes through and its answer is lost: its outcome stays unknown.
    wires.b.loseAnswers = true;
    const { id } = await admin.run(transfer, input('a2', 'b2', 10));
    const stuck = await admin.wait(id, { timeoutMs: 15_000 });
    expect(stuck.state).toMatchObject({
      status: 'needs_attention',
      attention: { phase: 'forward', step: 'credit' },
    });
    const answer = await call('POST', `/sagas/${id}/compensate`);
    wires.b.loseAnswers = false;
    // Had it been accepted, the debit would now be undone while the credit stays.
    await admin.wait(id, { timeoutMs: 15_000 });
    const after = await total('a2', 'b2');
    expect(after.from + after.to).toBe(before.from + before.to);
    expect(answer.status).toBe(409);
    expect(problem(answer)).toMatchObject({
      code: 'SAGA_PIVOT_IN_DOUBT',
      detail: expect.stringMatching(/pivot step credit/) as unknown,
    });
    // What a person does instead: retry, and the credit runs again under its idempotency key.
    expect((await call('POST', `/sagas/${id}/retry`)).status).toBe(202);
    expect((await admin.wait(id, { timeoutMs: 15_000 })).state.status).toBe('completed');
    expect(await total('a2', 'b2')).toEqual({ from: before.from - 10, to: before.to + 10 });
  });

  it('fences a holder caught before the pivot: its step is undone once, and the pivot never runs', async () => {
    const fenced: string[] = [];
    const holder = await engine({ observer: { onFenced: (event) => fenced.push(event.saga) } });
    const admin = await engine();
    const before = await total('a3', 'b3');
    wires.a.hold();
    const { id } = await holder.run(transfer, input('a3', 'b3', 10));
    await eventually(() => (wires.a.calls > 0 ? true : undefined));
    const callsToB = wires.b.calls;
    const accepted = await admin.compensate(id);
    expect(accepted.state.status).toBe('compensating');
    // The debit lands after the decision; the holder's checkpoint of it is refused.
    wires.a.release();
    const done = await admin.wait(id, { timeoutMs: 15_000 });
    expect(done.state.status).toBe('compensated');
    await eventually(() => (fenced.length > 0 ? true : undefined));
    expect(await total('a3', 'b3')).toEqual(before);
    expect(wires.b.calls).toBe(callsToB);
    expect(await credit(id)).toBeUndefined();
  });
});

describe('lease renewal', () => {
  it('a renewal that runs after the saga’s own final checkpoint is not counted as fenced', async () => {
    const fenced: string[] = [];
    const warnings: string[] = [];
    const pool = new pg.Pool({ connectionString: ledgerA.primaryUrl, max: 5 });
    const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
    let sagaId = '';
    let renewals = 0;
    let finalCommitted = false;
    // Between the database committing the final checkpoint and the engine hearing of it, the
    // engine still holds the saga: hold that answer back until a renewal of the saga has run.
    pool.query = (async (...args: unknown[]) => {
      const [config, params] = args as [
        string | { name?: string; text: string; values: unknown[] },
        unknown[]?,
      ];
      const text = typeof config === 'string' ? config : config.text;
      const values = (typeof config === 'string' ? params : config.values) ?? [];
      const renewal = /^update replikit_sagas s set lease_until/.test(text.trim());
      const startedAfterFinal = finalCommitted;
      const result = await query(...args);
      if (renewal && startedAfterFinal && JSON.stringify(values).includes(sagaId)) renewals++;
      // The states it wrote come first; the saga's own says whether it finished it.
      const states = typeof values[0] === 'string' ? values[0] : '';
      if (
        typeof config !== 'string' &&
        config.name === 'replikit_saga_checkpoint' &&
        states.includes(sagaId) &&
        states.includes('"finished":true')
      ) {
        finalCommitted = true;
        await eventually(() => (renewals > 0 ? true : undefined));
      }
      return result;
    }) as typeof pool.query;
    try {
      const e = await engine({
        database: pool,
        leaseMs: 300,
        observer: { onFenced: (event) => fenced.push(event.saga) },
        logger: { warn: (_fields, message) => warnings.push(message) },
      });
      sagaId = crypto.randomUUID();
      await e.run(transfer, input('a4', 'b4', 10), { id: sagaId });
      const done = await e.wait(sagaId, { timeoutMs: 15_000 });
      expect(renewals).toBeGreaterThan(0);
      expect(fenced).toEqual([]);
      expect(warnings.filter((message) => /lost the lease/.test(message))).toEqual([]);
      expect(done.state.status).toBe('completed');
      await e.close();
    } finally {
      await pool.end();
    }
  });
});
