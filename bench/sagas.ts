/**
 * The 4-step order saga (create_order, reserve_stock, charge_payment, schedule_shipment) on
 * replikit's saga engine and on DBOS Transact, on the same PostgreSQL server in the same run (the
 * bench stack in `.replikit/bench`, started here if it is not running and left running). Both
 * call the same service classes (`src/app/orders/services.ts`) on the same three service
 * databases; each has its own orders table; DBOS keeps its system database on the same server.
 *
 * 1. Throughput and latency, sequential and at 16 and 64 concurrent callers, in rounds that
 *    alternate the two engines; medians across rounds and the replikit/DBOS ratio within each.
 *    Each cell opens its engine (and fresh pools), runs, closes it, and checks the books.
 * 2. In the same cells: SQL statements per saga (every `pg` query of the bench process, by
 *    database and kind), transactions that wrote (counted in the client), `xact_commit` per saga
 *    (server side, summed over the databases involved) and WAL fsyncs (server-wide).
 * 3. A kill test: a child process running sagas at concurrency 16 is SIGKILLed at random moments
 *    and restarted, then a last one resumes what is left; then effects applied twice are counted
 *    from the service databases, and service calls made twice from the children's logs. DBOS runs
 *    it twice: with the stable key `<workflow id>/<step>`, and (a control showing that the count
 *    does find duplicates) with a fresh key per step execution.
 *
 *   npx tsx bench/sagas.ts
 *   npx tsx bench/sagas.ts --seconds 4 --rounds 3 --concurrency 1,16,64 --kills 5
 *
 * Progress goes to stderr, markdown tables to stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import { DBOS } from '@dbos-inc/dbos-sdk';
import pg from 'pg';

import { migrate } from '../src/db/migrate.js';
import {
  createOrderSaga,
  ORDERS_MIGRATIONS,
  type OrderInput,
  type OrderServices,
} from '../src/app/orders/order-saga.js';
import {
  INVENTORY_MIGRATIONS,
  InventoryService,
  PAYMENTS_MIGRATIONS,
  PaymentsService,
  SHIPPING_MIGRATIONS,
  ShippingService,
} from '../src/app/orders/services.js';
import { createSagaEngine, SAGA_MIGRATIONS } from '../src/saga/index.js';
import { LocalStack } from '../src/stack/index.js';
import { median, ms, percentile, progressFor, table, positiveOption } from './support/report.js';
import {
  countBooks,
  DATABASES,
  duplicateTotal,
  registerDbosOrderWorkflow,
  resetBooks,
  sampleOrder,
  type Books,
  type DatabaseKey,
  type DbosOrderContext,
  type EngineKey,
} from './support/saga-bench.js';

const progress = progressFor('bench:sagas');

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: '.replikit/bench' },
    seconds: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1,16,64' },
    kills: { type: 'string', default: '5' },
    'kill-concurrency': { type: 'string', default: '16' },
    'pool-size': { type: 'string', default: '10' },
    'service-pool-size': { type: 'string', default: '20' },
    'skip-kill': { type: 'boolean', default: false },
  },
});

function positive(name: Exclude<keyof typeof values, 'skip-kill'>, integer = true): number {
  return positiveOption(name, values[name], integer);
}

const SECONDS = positive('seconds', false);
const WARMUP = positive('warmup', false);
const ROUNDS = positive('rounds');
const KILLS = positive('kills');
const KILL_CONCURRENCY = positive('kill-concurrency');
/** The engine's own pool: replikit's `poolSize`, DBOS's `systemDatabasePoolSize` (both default 10). */
const POOL_SIZE = positive('pool-size');
/** Each service's pool, and DBOS's orders-table pool. */
const SERVICE_POOL_SIZE = positive('service-pool-size');
const CONCURRENCY = values.concurrency.split(',').map((text) => {
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--concurrency: bad level "${text}"`);
  return n;
});
const COMMAND = ['npm run bench:sagas', ...(process.argv.length > 2 ? ['--'] : [])]
  .concat(process.argv.slice(2))
  .join(' ');
const DB_NAMES: readonly string[] = Object.values(DATABASES);

const stop = new AbortController();
process.once('SIGINT', () => {
  progress('interrupted: stopping after the current cell');
  stop.abort();
});

// ---------------------------------------------------------------------------------------------
// Counting statements in the client

/** What a statement is, for the tables. */
type Group = 'engine' | 'order writes' | 'services';

interface KindCount {
  count: number;
  durations: number[];
  /** The first statement of the kind, with its parameters, for EXPLAIN. */
  sample?: { text: string; values: unknown[] };
}

/** Statements counted between two {@link StatementCounter.take} calls. */
interface StatementCounts {
  /** By `<database> <kind>`. */
  readonly kinds: ReadonlyMap<string, KindCount>;
  readonly byGroup: Readonly<Record<Group, number>>;
  /** Transactions that wrote something, as the client sees them: COMMITs after a write, and writes in autocommit. */
  readonly writeCommits: number;
}

const WRITE = /^\s*(insert|update|delete|with\b[\s\S]*\b(insert|update|delete)\b)/i;

function kindOf(text: string): string {
  const sql = text.replace(/\s+/g, ' ').trim();
  if (/^(begin|start transaction)/i.test(sql)) return 'BEGIN';
  if (/^commit/i.test(sql)) return 'COMMIT';
  if (/^rollback/i.test(sql)) return 'ROLLBACK';
  if (sql.includes('insert into replikit_sagas')) return 'saga insert (with first step intent)';
  if (/update replikit_sagas s set status/.test(sql)) return 'checkpoint (saga row + step log)';
  if (sql.startsWith('select * from replikit_sagas where id')) return 'saga read (engine.wait)';
  if (sql.includes('for update skip locked')) return 'claim poll';
  if (sql.includes('lease_until = greatest')) return 'lease renewal';
  if (sql.includes('group by saga, status')) return 'unfinished-saga counts';
  if (sql.includes('into orders')) return 'order insert';
  if (/^update orders set status = 'confirmed'/.test(sql)) return 'order confirm';
  if (/^update orders set status = 'rejected'/.test(sql)) return 'order reject';
  return sql.replace(/\$\d+/g, '?').slice(0, 60);
}

function groupOf(database: string, kind: string): Group {
  if (database === DATABASES.payments || database === DATABASES.inventory) return 'services';
  if (database === DATABASES.shipping) return 'services';
  if (kind.startsWith('order ')) return 'order writes';
  return 'engine';
}

/**
 * Counts every query of `pg` clients in this process (one round trip each, whatever library
 * issues it: replikit, DBOS and the services all use `pg`), by database and kind, with its
 * duration, while `counting` is set.
 */
class StatementCounter {
  counting = false;
  #kinds = new Map<string, KindCount>();
  #writeCommits = 0;
  readonly #tx = new WeakMap<object, { open: boolean; wrote: boolean }>();

  install(): void {
    const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
    const original = proto.query;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const counter = this;
    proto.query = function (this: object, ...args: unknown[]): unknown {
      if (!counter.counting) return original.apply(this, args);
      const first = args[0];
      const text =
        typeof first === 'string' ? first : ((first as { text?: string } | null)?.text ?? '');
      const database =
        (this as { connectionParameters?: { database?: string } }).connectionParameters?.database ??
        '?';
      const kind = kindOf(text);
      counter.#note(this, text, kind);
      const key = `${database} ${kind}`;
      let entry = counter.#kinds.get(key);
      if (entry === undefined) {
        const values: unknown = Array.isArray(args[1])
          ? args[1]
          : (first as { values?: unknown } | null)?.values;
        entry = { count: 0, durations: [] };
        if (Array.isArray(values) || typeof first === 'string')
          entry.sample = { text, values: Array.isArray(values) ? [...(values as unknown[])] : [] };
        counter.#kinds.set(key, entry);
      }
      entry.count++;
      const started = performance.now();
      const record = entry;
      const last = args.at(-1);
      if (typeof last === 'function') {
        args[args.length - 1] = (...results: unknown[]) => {
          record.durations.push(performance.now() - started);
          return (last as (...r: unknown[]) => unknown)(...results);
        };
        return original.apply(this, args);
      }
      const result = original.apply(this, args);
      if (result !== null && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(
          () => record.durations.push(performance.now() - started),
          () => record.durations.push(performance.now() - started),
        );
      }
      return result;
    };
  }

  #note(client: object, text: string, kind: string): void {
    let state = this.#tx.get(client);
    if (state === undefined) this.#tx.set(client, (state = { open: false, wrote: false }));
    if (kind === 'BEGIN') {
      state.open = true;
      state.wrote = false;
    } else if (kind === 'COMMIT') {
      if (state.open && state.wrote) this.#writeCommits++;
      state.open = false;
    } else if (kind === 'ROLLBACK') {
      state.open = false;
    } else if (WRITE.test(text)) {
      if (state.open) state.wrote = true;
      else this.#writeCommits++;
    }
  }

  /** What was counted since the last call, and starts again from zero. */
  take(): StatementCounts {
    const kinds = this.#kinds;
    const byGroup: Record<Group, number> = { engine: 0, 'order writes': 0, services: 0 };
    for (const [key, entry] of kinds) {
      const space = key.indexOf(' ');
      byGroup[groupOf(key.slice(0, space), key.slice(space + 1))] += entry.count;
    }
    const counts = { kinds, byGroup, writeCommits: this.#writeCommits };
    this.#kinds = new Map();
    this.#writeCommits = 0;
    return counts;
  }
}

const counter = new StatementCounter();
counter.install();

// ---------------------------------------------------------------------------------------------
// Server counters

interface ServerCounters {
  readonly commits: Readonly<Record<string, number>>;
  readonly walFsyncs: number;
  readonly walBytes: number;
}

async function serverCounters(stack: LocalStack): Promise<ServerCounters> {
  const rows = await stack.query<{ datname: string; commits: string }>(
    'primary',
    'select datname, xact_commit::text as commits from pg_stat_database where datname = any($1)',
    [DB_NAMES],
  );
  const [wal] = await stack.query<{ fsyncs: string; bytes: string }>(
    'primary',
    `select (select coalesce(sum(fsyncs), 0) from pg_stat_io where object = 'wal')::text as fsyncs,
            (select wal_bytes from pg_stat_wal)::text as bytes`,
  );
  return {
    commits: Object.fromEntries(rows.map((row) => [row.datname, Number(row.commits)])),
    walFsyncs: Number(wal?.fsyncs ?? 0),
    walBytes: Number(wal?.bytes ?? 0),
  };
}

function counterDelta(before: ServerCounters, after: ServerCounters): ServerCounters {
  return {
    commits: Object.fromEntries(
      DB_NAMES.map((db) => [db, (after.commits[db] ?? 0) - (before.commits[db] ?? 0)]),
    ),
    walFsyncs: after.walFsyncs - before.walFsyncs,
    walBytes: after.walBytes - before.walBytes,
  };
}

/** Waits until no backend is connected to the bench's databases, so their statistics are published. */
async function waitForDisconnect(stack: LocalStack): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await stack.query<{ n: number }>(
      'primary',
      `select count(*)::int as n from pg_stat_activity where datname = any($1) and pid <> pg_backend_pid()`,
      [DB_NAMES],
    );
    if (row!.n === 0) return;
    await sleep(50);
  }
  throw new Error('connections to the bench databases are still open after 10 s');
}

// ---------------------------------------------------------------------------------------------
// Set-up

async function prepare(stack: LocalStack): Promise<void> {
  for (const name of DB_NAMES) {
    await stack.query('primary', `drop database if exists ${name} with (force)`);
    await stack.query('primary', `create database ${name}`);
  }
  const migrateOn = async (db: DatabaseKey, migrations: Parameters<typeof migrate>[1]) => {
    const pool = new pg.Pool({ connectionString: stack.url('primary', DATABASES[db]), max: 1 });
    try {
      await migrate(pool, migrations);
    } finally {
      await pool.end();
    }
  };
  await migrateOn('orders', [...ORDERS_MIGRATIONS, ...SAGA_MIGRATIONS]);
  await migrateOn('dbosOrders', ORDERS_MIGRATIONS);
  await migrateOn('payments', PAYMENTS_MIGRATIONS);
  await migrateOn('inventory', INVENTORY_MIGRATIONS);
  await migrateOn('shipping', SHIPPING_MIGRATIONS);
  // DBOS creates its system schema on its first launch; do it now, outside any measurement.
  // (It says so on stdout, which is the report's: hush it.)
  const log = console.log;
  console.log = () => undefined;
  try {
    await DBOS.migrate(stack.url('primary', DATABASES.dbosSystem));
  } finally {
    console.log = log;
  }
}

function adminQuery(stack: LocalStack) {
  return (db: DatabaseKey, sql: string) => stack.query('primary', sql, [], DATABASES[db]);
}

/** Pools on the orders table and the three services, for the books. */
function bookPools(stack: LocalStack, orders: DatabaseKey) {
  const pool = (db: DatabaseKey) =>
    new pg.Pool({ connectionString: stack.url('primary', DATABASES[db]), max: 1 });
  return {
    orders: pool(orders),
    payments: pool('payments'),
    inventory: pool('inventory'),
    shipping: pool('shipping'),
  };
}

async function checkBooks(stack: LocalStack, orders: DatabaseKey): Promise<Books> {
  const pools = bookPools(stack, orders);
  try {
    return await countBooks(pools);
  } finally {
    await Promise.all(Object.values(pools).map((p) => p.end()));
  }
}

// ---------------------------------------------------------------------------------------------
// The two engines

type Variant = 'replikit' | 'dbos';
const LABEL: Record<EngineKey, string> = {
  replikit: 'replikit',
  dbos: 'DBOS 5.3.0',
  'dbos-fresh': 'DBOS 5.3.0, fresh key per step execution (control)',
};

interface Session {
  /** Runs one saga to its end; true when the order was confirmed. */
  runSaga(order: OrderInput): Promise<{ id: string; ok: boolean }>;
  /** Sum of the step bodies' durations per saga id, and durations by step name. */
  readonly stepSums: Map<string, number>;
  readonly byStep: Map<string, number[]>;
  close(): Promise<void>;
}

function servicePools(stack: LocalStack) {
  const pool = (db: DatabaseKey) => {
    const created = new pg.Pool({
      connectionString: stack.url('primary', DATABASES[db]),
      max: SERVICE_POOL_SIZE,
    });
    created.on('error', () => undefined);
    return created;
  };
  return { payments: pool('payments'), inventory: pool('inventory'), shipping: pool('shipping') };
}

function stepRecorder() {
  const stepSums = new Map<string, number>();
  const byStep = new Map<string, number[]>();
  return {
    stepSums,
    byStep,
    record(id: string, step: string, durationMs: number) {
      stepSums.set(id, (stepSums.get(id) ?? 0) + durationMs);
      let list = byStep.get(step);
      if (list === undefined) byStep.set(step, (list = []));
      list.push(durationMs);
    },
  };
}

async function openReplikit(stack: LocalStack): Promise<Session> {
  const pools = servicePools(stack);
  const services: OrderServices = {
    payments: new PaymentsService(pools.payments),
    inventory: new InventoryService(pools.inventory),
    shipping: new ShippingService(pools.shipping),
  };
  const saga = createOrderSaga(services);
  const steps = stepRecorder();
  const engine = createSagaEngine({
    database: stack.url('primary', DATABASES.orders),
    sagas: [saga],
    poolSize: POOL_SIZE,
    observer: {
      onStep: (event) => steps.record(event.sagaId, event.step, event.durationMs),
    },
  });
  await engine.start();
  return {
    stepSums: steps.stepSums,
    byStep: steps.byStep,
    async runSaga(order) {
      const { id } = await engine.run(saga, order);
      const record = await engine.wait(id, { timeoutMs: 60_000 });
      return { id, ok: record.state.status === 'completed' };
    },
    async close() {
      await engine.close();
      await Promise.all(Object.values(pools).map((p) => p.end()));
    },
  };
}

/** DBOS is one per process: its workflow is registered once, against a context each session fills in. */
const dbosContext: DbosOrderContext = {
  orders: undefined as unknown as pg.Pool,
  services: undefined as unknown as OrderServices,
  keys: 'stable',
  faults: false,
};
const dbosWorkflow = registerDbosOrderWorkflow(dbosContext);

async function openDbos(stack: LocalStack): Promise<Session> {
  const pools = servicePools(stack);
  const orders = new pg.Pool({
    connectionString: stack.url('primary', DATABASES.dbosOrders),
    max: SERVICE_POOL_SIZE,
  });
  orders.on('error', () => undefined);
  const steps = stepRecorder();
  dbosContext.orders = orders;
  dbosContext.services = {
    payments: new PaymentsService(pools.payments),
    inventory: new InventoryService(pools.inventory),
    shipping: new ShippingService(pools.shipping),
  };
  dbosContext.onStep = (id, step, durationMs) => steps.record(id, step, durationMs);
  await DBOS.launch();
  return {
    stepSums: steps.stepSums,
    byStep: steps.byStep,
    async runSaga(order) {
      const id = randomUUID();
      const result = await DBOS.withNextWorkflowID(id, () => dbosWorkflow(order));
      return { id, ok: result.status === 'confirmed' };
    },
    async close() {
      await DBOS.shutdown();
      await Promise.all([...Object.values(pools), orders].map((p) => p.end()));
    },
  };
}

const OPEN: Record<Variant, (stack: LocalStack) => Promise<Session>> = {
  replikit: openReplikit,
  dbos: openDbos,
};
const ORDERS_DB: Record<Variant, DatabaseKey> = { replikit: 'orders', dbos: 'dbosOrders' };
/** The databases each engine's sagas touch, for `xact_commit`. */
const INVOLVED: Record<Variant, readonly DatabaseKey[]> = {
  replikit: ['orders', 'payments', 'inventory', 'shipping'],
  dbos: ['dbosSystem', 'dbosOrders', 'payments', 'inventory', 'shipping'],
};

// ---------------------------------------------------------------------------------------------
// Timed cells

interface Cell {
  readonly variant: Variant;
  readonly concurrency: number;
  readonly round: number;
  readonly timed: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  /** Sagas that ended other than confirmed, or threw. */
  readonly failed: number;
  /** Every saga the session ran (warm-up included): the divisor of the per-saga counts. */
  readonly total: number;
  readonly statements: StatementCounts;
  readonly server: ServerCounters;
  readonly books: Books;
  /** Medians over the timed sagas: the step bodies' total, and the rest of the saga's latency. */
  readonly inSteps: number;
  readonly outsideSteps: number;
  readonly stepMedians: Readonly<Record<string, number>>;
}

/** Server counters of a session opened and closed with no saga, per variant: subtracted from every cell. */
const idle: Partial<Record<Variant, ServerCounters>> = {};

async function measureIdle(stack: LocalStack, variant: Variant): Promise<void> {
  await waitForDisconnect(stack);
  const before = await serverCounters(stack);
  const session = await OPEN[variant](stack);
  await session.close();
  await waitForDisconnect(stack);
  await sleep(300);
  idle[variant] = counterDelta(before, await serverCounters(stack));
}

async function runCell(
  stack: LocalStack,
  variant: Variant,
  concurrency: number,
  round: number,
  seconds = SECONDS,
): Promise<Cell> {
  await resetBooks(adminQuery(stack), ORDERS_DB[variant]);
  await stack.query('primary', 'checkpoint');
  await waitForDisconnect(stack);
  await sleep(300);
  const before = await serverCounters(stack);
  const session = await OPEN[variant](stack);
  const latencies: { id: string; ms: number }[] = [];
  let failed = 0;
  let total = 0;
  let lastEnd = 0;
  counter.take();
  counter.counting = true;
  const measureFrom = performance.now() + WARMUP * 1000;
  const deadline = measureFrom + seconds * 1000;
  let statements: StatementCounts;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < deadline && !stop.signal.aborted) {
          const began = performance.now();
          let outcome: { id: string; ok: boolean } | undefined;
          try {
            outcome = await session.runSaga(sampleOrder());
          } catch (err) {
            progress(
              `${variant}: a saga threw: ${err instanceof Error ? err.message : String(err)}`,
            );
          }
          total++;
          if (outcome?.ok !== true) failed++;
          if (began < measureFrom) continue;
          const ended = performance.now();
          lastEnd = Math.max(lastEnd, ended);
          if (outcome?.ok === true) latencies.push({ id: outcome.id, ms: ended - began });
        }
      }),
    );
  } finally {
    counter.counting = false;
    statements = counter.take();
    await session.close();
  }
  await waitForDisconnect(stack);
  await sleep(300);
  const after = await serverCounters(stack);
  const books = await checkBooks(stack, ORDERS_DB[variant]);
  const elapsed = Math.max(lastEnd - measureFrom, 1);
  const stepMedians = Object.fromEntries(
    [...session.byStep].map(([step, list]) => [step, median(list)]),
  );
  return {
    variant,
    concurrency,
    round,
    timed: latencies.length,
    perSecond: (latencies.length * 1000) / elapsed,
    p50: median(latencies.map((l) => l.ms)),
    p99: percentile(
      latencies.map((l) => l.ms),
      0.99,
    ),
    failed,
    total,
    statements,
    server: counterDelta(before, after),
    books,
    inSteps: median(latencies.map((l) => session.stepSums.get(l.id) ?? 0)),
    outsideSteps: median(latencies.map((l) => l.ms - (session.stepSums.get(l.id) ?? 0))),
    stepMedians,
  };
}

function booksVerdict(books: Books, expectedConfirmed: number): string {
  const problems = [...books.problems];
  if (books.pending > 0) problems.push(`${books.pending} orders pending`);
  if (books.rejected > 0) problems.push(`${books.rejected} orders rejected`);
  if (books.confirmed !== expectedConfirmed)
    problems.push(`${books.confirmed} orders confirmed, ${expectedConfirmed} sagas completed`);
  if (duplicateTotal(books.duplicates) > 0)
    problems.push(`duplicated effects ${JSON.stringify(books.duplicates)}`);
  return problems.length === 0 ? 'ok' : `**${problems.slice(0, 3).join('; ')}**`;
}

// ---------------------------------------------------------------------------------------------
// Server time of the engines' main statements

/**
 * Re-runs a recorded sample of each of the engine's frequent statements (at least once per saga,
 * transaction control aside) under `EXPLAIN (ANALYZE)`, 15 times each inside a transaction that
 * is rolled back, for the server's planning and execution times: what a round trip costs the
 * server, as against the client and the wire.
 */
async function explainSamples(stack: LocalStack, cells: readonly Cell[]): Promise<string> {
  const rows: string[][] = [];
  for (const variant of ['replikit', 'dbos'] as const) {
    const mine = cellsOf(cells, CONCURRENCY[0]!, variant);
    const sagas = mine.reduce((n, c) => n + c.total, 0);
    const merged = new Map<
      string,
      { count: number; durations: number[]; sample?: KindCount['sample'] }
    >();
    for (const cell of mine) {
      for (const [key, entry] of cell.statements.kinds) {
        const m = merged.get(key) ?? { count: 0, durations: [] };
        m.count += entry.count;
        m.durations.push(...entry.durations);
        m.sample ??= entry.sample;
        merged.set(key, m);
      }
    }
    for (const [key, entry] of [...merged].sort(([, a], [, b]) => b.count - a.count)) {
      const space = key.indexOf(' ');
      const database = key.slice(0, space);
      const kind = key.slice(space + 1);
      if (groupOf(database, kind) !== 'engine' || entry.count / sagas < 0.9) continue;
      if (/^(BEGIN|COMMIT|ROLLBACK)$/.test(kind) || entry.sample === undefined) continue;
      const client = new pg.Client({ connectionString: stack.url('primary', database) });
      await client.connect();
      const planning: number[] = [];
      const execution: number[] = [];
      let error = '';
      try {
        await client.query('begin');
        for (let i = 0; i < 15; i++) {
          await client.query('savepoint s');
          try {
            const { rows: plan } = await client.query<{ 'QUERY PLAN': unknown }>(
              `explain (analyze, format json) ${entry.sample.text}`,
              entry.sample.values,
            );
            const top = (
              plan[0]?.['QUERY PLAN'] as { 'Planning Time': number; 'Execution Time': number }[]
            )[0];
            planning.push(top?.['Planning Time'] ?? Number.NaN);
            execution.push(top?.['Execution Time'] ?? Number.NaN);
          } catch (err) {
            error = err instanceof Error ? err.message : String(err);
          }
          await client.query('rollback to savepoint s');
        }
        await client.query('rollback');
      } finally {
        await client.end();
      }
      rows.push([
        LABEL[variant],
        `\`${kind.replaceAll('|', '\\|')}\``,
        fmt(entry.count / sagas, 2),
        planning.length === 0 ? `– (${error.slice(0, 60)})` : ms(median(planning)),
        execution.length === 0 ? '–' : ms(median(execution)),
        ms(median(entry.durations)),
      ]);
    }
  }
  return table(
    [
      'engine',
      'statement',
      'per saga (sequential)',
      'server planning p50 (ms)',
      'server execution p50 (ms, without commit)',
      'round trip p50 in the bench (ms, with commit when autocommit)',
    ],
    rows,
  );
}

// ---------------------------------------------------------------------------------------------
// The kill test

interface KillResult {
  readonly engine: EngineKey;
  readonly kills: number;
  /** Unfinished sagas in the log at each kill. */
  readonly inFlight: readonly number[];
  readonly sagas: Readonly<Record<string, number>>;
  readonly books: Books;
  /** Service calls made more than once for the same order and method: pairs, and extra calls. */
  readonly repeated: Readonly<Record<string, { pairs: number; extra: number; keys: number }>>;
  readonly drainMs: number;
  readonly errors: number;
}

interface Child {
  readonly process: ChildProcess;
  output(): string;
  exited: Promise<void>;
}

function spawnWorker(stack: LocalStack, engine: EngineKey, mode: 'run' | 'drain'): Child {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/support/saga-kill-worker.ts'], {
    env: {
      ...process.env,
      ENGINE: engine === 'replikit' ? 'replikit' : 'dbos',
      KEYS: engine === 'dbos-fresh' ? 'fresh' : 'stable',
      MODE: mode,
      CONCURRENCY: String(KILL_CONCURRENCY),
      ORDERS_URL: stack.url('primary', DATABASES[engine === 'replikit' ? 'orders' : 'dbosOrders']),
      DBOS_SYSTEM_URL: stack.url('primary', DATABASES.dbosSystem),
      PAYMENTS_URL: stack.url('primary', DATABASES.payments),
      INVENTORY_URL: stack.url('primary', DATABASES.inventory),
      SHIPPING_URL: stack.url('primary', DATABASES.shipping),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  child.stdout?.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  child.stderr?.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  return { process: child, output: () => text, exited };
}

async function waitForReady(child: Child, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!/^ready$/m.test(child.output())) {
    if (child.process.exitCode !== null || child.process.signalCode !== null)
      throw new Error(`kill-test worker exited before it was ready:\n${child.output()}`);
    if (Date.now() > deadline)
      throw new Error(`kill-test worker not ready after ${timeoutMs} ms:\n${child.output()}`);
    await sleep(50);
  }
}

async function kill(child: Child): Promise<void> {
  if (child.process.exitCode === null && child.process.signalCode === null)
    child.process.kill('SIGKILL');
  await child.exited;
}

async function unfinished(stack: LocalStack, engine: EngineKey): Promise<number> {
  const [row] =
    engine === 'replikit'
      ? await stack.query<{ n: number }>(
          'primary',
          "select count(*)::int as n from replikit_sagas where status in ('running', 'compensating')",
          [],
          DATABASES.orders,
        )
      : await stack.query<{ n: number }>(
          'primary',
          "select count(*)::int as n from dbos.workflow_status where status in ('PENDING', 'ENQUEUED')",
          [],
          DATABASES.dbosSystem,
        );
  return row!.n;
}

async function sagaStatuses(
  stack: LocalStack,
  engine: EngineKey,
  since: Date,
): Promise<Record<string, number>> {
  const rows =
    engine === 'replikit'
      ? await stack.query<{ status: string; n: number }>(
          'primary',
          'select status, count(*)::int as n from replikit_sagas where created_at >= $1 group by status',
          [since],
          DATABASES.orders,
        )
      : await stack.query<{ status: string; n: number }>(
          'primary',
          'select status, count(*)::int as n from dbos.workflow_status where created_at >= $1 group by status',
          [since.getTime()],
          DATABASES.dbosSystem,
        );
  return Object.fromEntries(rows.map((row) => [row.status.toLowerCase(), row.n]));
}

function repeatedCalls(outputs: readonly string[]): KillResult['repeated'] {
  const calls = new Map<string, { n: number; keys: Set<string> }>();
  for (const output of outputs) {
    for (const match of output.matchAll(/^C (\w+) (\S+) (\S+)$/gm)) {
      const id = `${match[1]} ${match[2]}`;
      let entry = calls.get(id);
      if (entry === undefined) calls.set(id, (entry = { n: 0, keys: new Set() }));
      entry.n++;
      entry.keys.add(match[3]!);
    }
  }
  const result: Record<string, { pairs: number; extra: number; keys: number }> = {};
  for (const [id, entry] of calls) {
    const method = id.slice(0, id.indexOf(' '));
    const row = (result[method] ??= { pairs: 0, extra: 0, keys: 0 });
    if (entry.n > 1) {
      row.pairs++;
      row.extra += entry.n - 1;
    }
    if (entry.keys.size > 1) row.keys++;
  }
  return result;
}

async function killTest(stack: LocalStack, engine: EngineKey): Promise<KillResult> {
  const variant: Variant = engine === 'replikit' ? 'replikit' : 'dbos';
  await resetBooks(adminQuery(stack), ORDERS_DB[variant]);
  const [{ now } = { now: new Date() }] = await stack.query<{ now: Date }>(
    'primary',
    'select now()',
  );
  const outputs: string[] = [];
  const inFlight: number[] = [];
  for (let k = 0; k < KILLS; k++) {
    stop.signal.throwIfAborted();
    const child = spawnWorker(stack, engine, 'run');
    try {
      await waitForReady(child);
      await sleep(300 + Math.random() * 1700);
      inFlight.push(await unfinished(stack, engine));
    } finally {
      await kill(child);
      outputs.push(child.output());
    }
    progress(
      `kill test ${engine}: kill ${k + 1}/${KILLS}, ${inFlight.at(-1) ?? '?'} sagas unfinished`,
    );
  }
  const drainStarted = performance.now();
  const drain = spawnWorker(stack, engine, 'drain');
  let drainMs = Number.NaN;
  try {
    await waitForReady(drain);
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      if ((await unfinished(stack, engine)) === 0) {
        drainMs = performance.now() - drainStarted;
        break;
      }
      await sleep(200);
    }
  } finally {
    await kill(drain);
    outputs.push(drain.output());
  }
  const books = await checkBooks(stack, ORDERS_DB[variant]);
  const errors = outputs.reduce((n, output) => n + (output.match(/^E /gm) ?? []).length, 0);
  return {
    engine,
    kills: KILLS,
    inFlight,
    sagas: await sagaStatuses(stack, engine, now),
    books,
    repeated: repeatedCalls(outputs),
    drainMs,
    errors,
  };
}

// ---------------------------------------------------------------------------------------------
// Tables

const fmt = (n: number, digits = 1): string =>
  Number.isNaN(n) ? '–' : Number.isInteger(n) ? String(n) : n.toFixed(digits);

function cellsOf(cells: readonly Cell[], concurrency: number, variant: Variant): Cell[] {
  return cells.filter((c) => c.concurrency === concurrency && c.variant === variant);
}

function ratios(cells: readonly Cell[], concurrency: number): number[] {
  return cellsOf(cells, concurrency, 'replikit').flatMap((c) => {
    const partner = cellsOf(cells, concurrency, 'dbos').find((d) => d.round === c.round);
    return partner === undefined ? [] : [c.perSecond / partner.perSecond];
  });
}

function throughputTable(cells: readonly Cell[]): string {
  const rows: string[][] = [];
  for (const concurrency of CONCURRENCY) {
    const r = ratios(cells, concurrency);
    for (const variant of ['replikit', 'dbos'] as const) {
      const mine = cellsOf(cells, concurrency, variant);
      if (mine.length === 0) continue;
      const bad = mine.filter((c) => booksVerdict(c.books, c.total - c.failed) !== 'ok');
      rows.push([
        concurrency === 1 ? '1 (sequential)' : String(concurrency),
        LABEL[variant],
        median(mine.map((c) => c.perSecond)).toFixed(0),
        mine.map((c) => c.perSecond.toFixed(0)).join(', '),
        ms(median(mine.map((c) => c.p50))),
        ms(median(mine.map((c) => c.p99))),
        variant === 'replikit' && r.length > 0
          ? `${median(r).toFixed(2)} (${r.map((x) => x.toFixed(2)).join(', ')})`
          : '–',
        String(mine.reduce((n, c) => n + c.timed, 0)),
        String(mine.reduce((n, c) => n + c.failed, 0)),
        bad.length === 0
          ? `ok (${mine.length}/${mine.length})`
          : bad.map((c) => booksVerdict(c.books, c.total - c.failed)).join('; '),
      ]);
    }
  }
  return table(
    [
      'concurrency',
      'engine',
      'sagas/s (median)',
      'sagas/s per round',
      'p50 (ms)',
      'p99 (ms)',
      'replikit / DBOS (per round)',
      'sagas timed',
      'failed',
      'books after each cell',
    ],
    rows,
  );
}

function perSaga(cells: readonly Cell[], value: (c: Cell) => number): number {
  return median(cells.map((c) => value(c) / Math.max(1, c.total)));
}

function commitsPerSaga(c: Cell): number {
  const base = idle[c.variant];
  return INVOLVED[c.variant].reduce(
    (n, db) => n + (c.server.commits[DATABASES[db]] ?? 0) - (base?.commits[DATABASES[db]] ?? 0),
    0,
  );
}

function countsTable(cells: readonly Cell[]): string {
  const rows: string[][] = [];
  for (const concurrency of CONCURRENCY) {
    for (const variant of ['replikit', 'dbos'] as const) {
      const mine = cellsOf(cells, concurrency, variant);
      if (mine.length === 0) continue;
      const total = (c: Cell) =>
        c.statements.byGroup.engine +
        c.statements.byGroup['order writes'] +
        c.statements.byGroup.services;
      rows.push([
        String(concurrency),
        LABEL[variant],
        fmt(perSaga(mine, total)),
        fmt(perSaga(mine, (c) => c.statements.byGroup.engine)),
        fmt(perSaga(mine, (c) => c.statements.byGroup['order writes'])),
        fmt(perSaga(mine, (c) => c.statements.byGroup.services)),
        fmt(perSaga(mine, (c) => c.statements.writeCommits)),
        fmt(perSaga(mine, commitsPerSaga)),
        INVOLVED[variant]
          .map(
            (db) =>
              `${DATABASES[db].replace('bench_sagas_', '')} ${fmt(
                perSaga(
                  mine,
                  (c) =>
                    (c.server.commits[DATABASES[db]] ?? 0) -
                    (idle[variant]?.commits[DATABASES[db]] ?? 0),
                ),
              )}`,
          )
          .join(', '),
        fmt(
          perSaga(mine, (c) => c.server.walFsyncs - (idle[variant]?.walFsyncs ?? 0)),
          2,
        ),
        fmt(
          perSaga(mine, (c) => (c.server.walBytes - (idle[variant]?.walBytes ?? 0)) / 1024),
          1,
        ),
      ]);
    }
  }
  return table(
    [
      'concurrency',
      'engine',
      'statements per saga',
      'engine (log, state, tx control)',
      'order writes',
      'service calls',
      'transactions that wrote (client count)',
      '`xact_commit` per saga',
      '`xact_commit` by database',
      'WAL fsyncs per saga (server-wide)',
      'WAL KiB per saga (server-wide)',
    ],
    rows,
  );
}

function kindsTable(cells: readonly Cell[], concurrency: number): string {
  const rows: string[][] = [];
  for (const variant of ['replikit', 'dbos'] as const) {
    const mine = cellsOf(cells, concurrency, variant);
    if (mine.length === 0) continue;
    const sagas = mine.reduce((n, c) => n + c.total, 0);
    const merged = new Map<string, { count: number; durations: number[] }>();
    for (const cell of mine) {
      for (const [key, entry] of cell.statements.kinds) {
        const space = key.indexOf(' ');
        if (groupOf(key.slice(0, space), key.slice(space + 1)) !== 'engine') continue;
        const m = merged.get(key) ?? { count: 0, durations: [] };
        m.count += entry.count;
        m.durations.push(...entry.durations);
        merged.set(key, m);
      }
    }
    const sorted = [...merged].sort(([, a], [, b]) => b.count - a.count);
    for (const [key, entry] of sorted) {
      const space = key.indexOf(' ');
      if (entry.count / sagas < 0.005) continue;
      rows.push([
        LABEL[variant],
        key.slice(0, space).replace('bench_sagas_', ''),
        `\`${key.slice(space + 1).replaceAll('|', '\\|')}\``,
        fmt(entry.count / sagas, 2),
        ms(median(entry.durations)),
      ]);
    }
  }
  return table(['engine', 'database', 'statement', 'per saga', 'round trip p50 (ms)'], rows);
}

function timeTable(cells: readonly Cell[]): string {
  const steps = [
    'create_order',
    'reserve_stock',
    'charge_payment',
    'schedule_shipment',
    'confirm_order',
  ];
  const rows: string[][] = [];
  for (const concurrency of CONCURRENCY) {
    for (const variant of ['replikit', 'dbos'] as const) {
      const mine = cellsOf(cells, concurrency, variant);
      if (mine.length === 0) continue;
      rows.push([
        String(concurrency),
        LABEL[variant],
        ms(median(mine.map((c) => c.p50))),
        ...steps.map((step) => {
          const values = mine.flatMap((c) =>
            c.stepMedians[step] === undefined ? [] : [c.stepMedians[step]],
          );
          return values.length === 0 ? '–' : ms(median(values));
        }),
        ms(median(mine.map((c) => c.inSteps))),
        ms(median(mine.map((c) => c.outsideSteps))),
      ]);
    }
  }
  return table(
    [
      'concurrency',
      'engine',
      'saga p50 (ms)',
      ...steps.map((s) => `${s} p50`),
      'all step bodies p50',
      'outside the step bodies p50',
    ],
    rows,
  );
}

function killTable(results: readonly KillResult[]): string {
  const methods = ['reserve', 'charge', 'schedule', 'release', 'refund', 'cancel'];
  return table(
    [
      'engine',
      'kills (unfinished sagas at each)',
      'sagas (final status)',
      'orders confirmed / rejected / pending',
      'charged twice',
      'refunded twice',
      'stock taken twice',
      'released twice',
      'shipped twice',
      'books',
      'service calls repeated (orders; extra calls)',
      'resume after last kill',
    ],
    results.map((r) => [
      LABEL[r.engine],
      `${r.kills} (${r.inFlight.join(', ')})`,
      Object.entries(r.sagas)
        .map(([status, n]) => `${status} ${n}`)
        .join(', '),
      `${r.books.confirmed} / ${r.books.rejected} / ${r.books.pending}`,
      String(r.books.duplicates.charges),
      String(r.books.duplicates.refunds),
      String(r.books.duplicates.stock),
      String(r.books.duplicates.releases),
      String(r.books.duplicates.shipments),
      r.books.problems.length === 0
        ? 'balance'
        : `**${r.books.problems.length} problems**: ${r.books.problems.slice(0, 2).join('; ')}`,
      methods
        .flatMap((m) => {
          const row = r.repeated[m];
          return row === undefined || row.pairs === 0 ? [] : [`${m} ${row.pairs}; ${row.extra}`];
        })
        .join(', ') || 'none',
      Number.isNaN(r.drainMs) ? '**not finished in 120 s**' : `${(r.drainMs / 1000).toFixed(1)} s`,
    ]),
  );
}

// ---------------------------------------------------------------------------------------------

const startedAt = performance.now();
const loadAtStart = loadavg()
  .map((value) => value.toFixed(2))
  .join(' ');
progress(`opening the bench stack in ${values.dir}`);
const stack = await LocalStack.start({ dir: resolve(values.dir), log: progress });
const [settings] = await stack.query<{
  version: string;
  fsync: string;
  sync: string;
  standby: string;
  method: string;
}>(
  'primary',
  `select current_setting('server_version') as version, current_setting('fsync') as fsync,
          current_setting('synchronous_commit') as sync,
          current_setting('synchronous_standby_names') as standby,
          current_setting('wal_sync_method') as method`,
);
progress(
  `PostgreSQL ${settings!.version}: show fsync = ${settings!.fsync}, show synchronous_commit = ${settings!.sync}, ` +
    `synchronous_standby_names = '${settings!.standby}', wal_sync_method = ${settings!.method}`,
);
if (settings!.fsync !== 'on' || settings!.sync !== 'on')
  throw new Error('the bench needs fsync and synchronous_commit on: equal, full durability');

progress('creating and migrating the databases');
await prepare(stack);
DBOS.setConfig({
  name: 'replikit-bench-sagas',
  systemDatabaseUrl: stack.url('primary', DATABASES.dbosSystem),
  systemDatabasePoolSize: POOL_SIZE,
  logLevel: 'error',
});

progress('idle sessions (open and close, no saga), subtracted from the server counters');
for (const variant of ['replikit', 'dbos'] as const) await measureIdle(stack, variant);
progress(`warm-up: 2 s of each engine at concurrency ${CONCURRENCY[0]}, not recorded`);
for (const variant of ['replikit', 'dbos'] as const)
  await runCell(stack, variant, CONCURRENCY[0]!, -1, 1);

const cells: Cell[] = [];
for (const concurrency of CONCURRENCY) {
  for (let round = 0; round < ROUNDS; round++) {
    const order: Variant[] = round % 2 === 0 ? ['replikit', 'dbos'] : ['dbos', 'replikit'];
    for (const variant of order) {
      stop.signal.throwIfAborted();
      const cell = await runCell(stack, variant, concurrency, round);
      cells.push(cell);
      const s = cell.statements.byGroup;
      progress(
        `concurrency ${concurrency}, round ${round + 1}/${ROUNDS}, ${variant}: ` +
          `${cell.perSecond.toFixed(0)} sagas/s, p50 ${ms(cell.p50)} ms, p99 ${ms(cell.p99)} ms, ` +
          `${fmt((s.engine + s['order writes'] + s.services) / Math.max(1, cell.total))} statements/saga ` +
          `(engine ${fmt(s.engine / Math.max(1, cell.total))}), ` +
          `xact_commit/saga ${fmt(commitsPerSaga(cell) / Math.max(1, cell.total))}, ` +
          `books ${booksVerdict(cell.books, cell.total - cell.failed)}`,
      );
    }
  }
}

progress(
  "server planning and execution time of the engines' frequent statements (EXPLAIN ANALYZE)",
);
const explained = await explainSamples(stack, cells);

const kills: KillResult[] = [];
if (!values['skip-kill']) {
  for (const engine of ['replikit', 'dbos', 'dbos-fresh'] as const) {
    progress(`kill test: ${LABEL[engine]}, ${KILLS} SIGKILLs at concurrency ${KILL_CONCURRENCY}`);
    const result = await killTest(stack, engine);
    kills.push(result);
    progress(
      `kill test ${engine}: ${JSON.stringify(result.sagas)}, duplicates ${JSON.stringify(result.books.duplicates)}, ` +
        `${result.books.problems.length} book problems, repeated calls ${JSON.stringify(result.repeated)}`,
    );
  }
}

// Targets (issue 4).
const top = CONCURRENCY.at(-1)!;
const topRatios = ratios(cells, top);
/** Statements the engine runs on its own schedule (not per saga): claim polls, lease renewals, counts. */
const BACKGROUND = new Set(['claim poll', 'lease renewal', 'unfinished-saga counts']);
function replikitEngineStatements(concurrency: number): { path: number; background: number } {
  const mine = cellsOf(cells, concurrency, 'replikit');
  const background = (c: Cell) =>
    [...c.statements.kinds].reduce(
      (n, [key, entry]) => n + (BACKGROUND.has(key.slice(key.indexOf(' ') + 1)) ? entry.count : 0),
      0,
    );
  return {
    path: median(
      mine.map((c) => (c.statements.byGroup.engine - background(c)) / Math.max(1, c.total)),
    ),
    background: median(mine.map((c) => background(c) / Math.max(1, c.total))),
  };
}
const statementLevels = CONCURRENCY.map((c) => ({ c, ...replikitEngineStatements(c) }));
const worstPath = Math.max(...statementLevels.map((l) => l.path));
const replikitKill = kills.find((k) => k.engine === 'replikit');
const targets = table(
  ['target (issue 4)', 'measured', 'met'],
  [
    [
      `≥ 3× DBOS's throughput at concurrency ${top}`,
      `${fmt(median(topRatios), 2)}× (per round ${topRatios.map((r) => r.toFixed(2)).join(', ')})`,
      median(topRatios) >= 3 ? 'yes' : '**no**',
    ],
    [
      '≤ 12 statements per saga (the engine’s own: saga log, `engine.wait`, transaction control; not the order writes or the services)',
      statementLevels
        .map((l) => `${fmt(l.path, 2)} + ${fmt(l.background, 2)} background at concurrency ${l.c}`)
        .join('; '),
      worstPath <= 12 ? 'yes' : '**no**',
    ],
    [
      'zero duplicated effects in the kill test',
      replikitKill === undefined
        ? 'not run'
        : `${duplicateTotal(replikitKill.books.duplicates)} (books: ${replikitKill.books.problems.length} problems)`,
      replikitKill === undefined
        ? '–'
        : duplicateTotal(replikitKill.books.duplicates) === 0 &&
            replikitKill.books.problems.length === 0
          ? 'yes'
          : '**no**',
    ],
  ],
);

const output = [
  `Command: \`${COMMAND}\``,
  '',
  `PostgreSQL ${settings!.version} (\`show fsync\` = ${settings!.fsync}, \`show synchronous_commit\` = ${settings!.sync}, ` +
    `synchronous_standby_names = '${settings!.standby}', wal_sync_method = ${settings!.method}), ` +
    `Node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? 'CPU'}, load average ${loadAtStart} at the start ` +
    `and ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')} at the end; total ${((performance.now() - startedAt) / 1000).toFixed(0)} s.`,
  '',
  '### Targets',
  '',
  targets,
  '',
  '### Throughput and latency',
  '',
  `${ROUNDS} rounds per concurrency level, the engines alternating (replikit first in odd rounds), ` +
    `each cell ${WARMUP} s unrecorded then ${SECONDS} s timed, the engine opened (fresh pools) before ` +
    `and closed after; latency per saga as the caller sees it (replikit: \`engine.run\` + \`engine.wait\`; ` +
    `DBOS: the workflow call). Pools: the engine's own ${POOL_SIZE} (replikit \`poolSize\`, DBOS ` +
    `\`systemDatabasePoolSize\`), ${SERVICE_POOL_SIZE} per service and for DBOS's orders table. ` +
    `Books: the invariants of \`countBooks\` plus effects applied twice, after each cell.`,
  '',
  throughputTable(cells),
  '',
  '### Statements and commits per saga',
  '',
  `Per cell, divided by every saga the session ran (warm-up included), medians across rounds. ` +
    `Statements: every \`pg\` query of the bench process (one round trip each) while sagas ran, ` +
    `background work included (replikit: lease renewal, claim polls, counts; DBOS: its own). ` +
    `"Engine" = statements on the saga log's database (replikit) or the system database (DBOS) ` +
    `other than the order writes, BEGIN/COMMIT included. Transactions that wrote: COMMITs after a ` +
    `write plus writes in autocommit, counted in the client (each one waits for a WAL flush). ` +
    `\`xact_commit\`: \`pg_stat_database\` deltas over the engine's databases (read-only ` +
    `transactions included), from before the engine opened to after it closed, minus a session ` +
    `with no saga. WAL fsyncs: \`pg_stat_io\`, the whole server (anything else running on it included).`,
  '',
  countsTable(cells),
  '',
  `### The engines' statements by kind`,
  '',
  ...CONCURRENCY.filter((c, i) => i === 0 || c === top).flatMap((c) => [
    `Concurrency ${c}; "per saga" over every saga of the cells; round trip = from the call to its result, queueing for a connection excluded.`,
    '',
    kindsTable(cells, c),
    '',
  ]),
  `Server time of the engines' frequent statements: a sample of each (recorded in the sequential ` +
    `cells) re-run 15 times under \`EXPLAIN (ANALYZE)\` in a transaction rolled back; no statement ` +
    `is prepared by either engine, so every execution is planned.`,
  '',
  explained,
  '',
  '### Where a saga spends its time',
  '',
  `Medians over the timed sagas of each cell, then across rounds. A step body: replikit's ` +
    `\`onStep\` duration (the step's \`run\`; for the local step, inside its transaction before the ` +
    `checkpoint); DBOS: the function given to \`DBOS.runStep\`. DBOS confirms the order in a fifth ` +
    `step; replikit in the transaction of the last checkpoint. "Outside" = the saga's latency ` +
    `minus its step bodies: the engine's own work (log writes, waits for a connection or a batch).`,
  '',
  timeTable(cells),
  '',
  ...(kills.length === 0
    ? []
    : [
        '### Kill test',
        '',
        `A child process runs sagas at concurrency ${KILL_CONCURRENCY} (80 % complete, 10 % ask for ` +
          `more stock than exists, 10 % have their shipment refused so the payment is refunded); ` +
          `${KILLS} times it is SIGKILLed 0.3–2 s after it is ready and a new one started, which ` +
          `resumes the dead one's sagas (replikit: leases of 2 s; DBOS: pending workflows recovered ` +
          `on launch) and starts more; after the last kill one more resumes what is left, without ` +
          `starting any. Duplicates are counted per order from the service databases; repeated ` +
          `calls (the same service method for the same order more than once) from the children's ` +
          `logs, printed before each call.`,
        '',
        killTable(kills),
        '',
      ]),
].join('\n');

progress(
  'done (the bench stack keeps running; `npm run stack -- stop --dir .replikit/bench` stops it)',
);
process.stdout.write(output);
