/**
 * Two-phase commit against its ceiling, measured in one run on a stack of its own
 * (`.replikit/bench-twopc`, a primary without replicas, started here and stopped at the end):
 *
 * 1. The ceiling: a transfer as one local transaction in one database (`ledger_one`, both ledgers'
 *    tables side by side in schemas `a` and `b`) on a plain `pg.Pool`.
 * 2. The same statements split across `ledger_a` and `ledger_b`, committed by the coordinator
 *    (`src/twopc`), its decisions in `coordinator`.
 *
 * At each concurrency level the two run in interleaved rounds (ceiling, 2PC / 2PC, ceiling / …);
 * the tables give medians across rounds, and the 2PC/ceiling ratio is taken within each round.
 * Then a sequential pass counts the statements and WAL flushes per transfer, and the end state is
 * checked: money conserved, nothing left prepared, both ledgers holding the same transfers.
 *
 *   npm run bench:twopc
 *   npm run bench:twopc -- --seconds 10 --concurrency 1,8,32 --accounts 100 --rounds 5
 *
 * Progress goes to stderr, markdown tables to stdout.
 */
import { randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import pg from 'pg';

import { LocalStack } from '../src/stack/index.js';
import {
  createCoordinator,
  TwoPhaseError,
  type DistributedTransaction,
  type TransactionEvent,
  type TwoPhasePhase,
} from '../src/twopc/index.js';
import { median, ms, percentile, progressFor, table } from './support/report.js';

const progress = progressFor('bench:twopc');

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: '.replikit/bench-twopc' },
    seconds: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '1,16,64' },
    accounts: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    count: { type: 'string', default: '200' },
    'pool-size': { type: 'string' },
  },
});

function positiveNumber(name: Exclude<keyof typeof values, 'pool-size'>, integer = true): number {
  const value = Number(values[name]);
  if (!(value > 0) || (integer && !Number.isInteger(value))) {
    throw new RangeError(
      `--${name} must be a ${integer ? 'whole ' : ''}number > 0, got "${values[name]}"`,
    );
  }
  return value;
}

const SECONDS = positiveNumber('seconds', false);
const WARMUP_SECONDS = positiveNumber('warmup', false);
const ACCOUNTS = positiveNumber('accounts');
const ROUNDS = positiveNumber('rounds');
const COUNT = positiveNumber('count');
/** The coordinator's `poolSize`; by default one more than the concurrency (see {@link twoPhaseVariant}). */
const POOL_SIZE = values['pool-size'] === undefined ? undefined : Number(values['pool-size']);
if (POOL_SIZE !== undefined && !(Number.isInteger(POOL_SIZE) && POOL_SIZE > 0)) {
  throw new RangeError(`--pool-size must be a whole number > 0, got "${values['pool-size']}"`);
}
const CONCURRENCY = values.concurrency.split(',').map((text) => {
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--concurrency: bad level "${text}"`);
  return n;
});

const COMMAND = ['npm run bench:twopc', ...(process.argv.length > 2 ? ['--'] : [])]
  .concat(process.argv.slice(2))
  .join(' ');

const LEDGERS = ['ledger_a', 'ledger_b'] as const;
const CEILING_DB = 'ledger_one';
const COORDINATOR_DB = 'coordinator';
const DATABASES = [...LEDGERS, COORDINATOR_DB, CEILING_DB];
const OPENING_BALANCE = 1_000_000;
const MAX_AMOUNT = 100;
/** The coordinator's default; the ceiling retries as often. */
const MAX_ATTEMPTS = 5;
/** The same as the coordinator's default retry policy: deadlock, serialization failure, lock timeout. */
const RETRYABLE = new Set(['40P01', '40001', '55P03']);
const CEILING_APP = 'replikit-bench-ceiling';
const COORDINATOR_APPS = ['coordinator', ...LEDGERS].map((name) => `replikit-2pc-${name}`);

const stop = new AbortController();
process.once('SIGINT', () => {
  progress('interrupted: stopping after the current cell');
  stop.abort();
});

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Why a transfer failed, for the tables: the coordinator's code and the SQLSTATE under it. */
function abortReason(err: unknown): string {
  if (err instanceof TwoPhaseError) {
    const cause = sqlState(err.cause);
    return cause === undefined ? err.code : `${err.code} (${cause})`;
  }
  return sqlState(err) ?? (err instanceof Error ? err.message : String(err));
}

function literal(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

// ---------------------------------------------------------------------------------------------
// Set-up

/** The ledger schema of `test/support/ledger.ts`, unqualified or in a schema of `ledger_one`. */
function ledgerSchema(schema?: string): string {
  const q = schema === undefined ? '' : `${schema}.`;
  return `
    ${schema === undefined ? '' : `create schema ${schema};`}
    create table ${q}accounts (id text primary key, balance bigint not null check (balance >= 0));
    create table ${q}transfers (id uuid primary key, amount bigint not null);
    insert into ${q}accounts select 'acct' || g, ${OPENING_BALANCE} from generate_series(1, ${ACCOUNTS}) g;`;
}

async function prepare(stack: LocalStack): Promise<void> {
  // What an interrupted run left prepared holds locks and blocks DROP DATABASE.
  for (const row of await stack.query<{ gid: string; database: string }>(
    'primary',
    'select gid, database from pg_prepared_xacts',
  )) {
    await stack.query('primary', `rollback prepared ${literal(row.gid)}`, [], row.database);
  }
  // Both ledgers share one server, so at C concurrent transfers up to 2 × C transactions are
  // prepared at once; the stack's 64 is not enough for 64. PostgreSQL's manual advises at least
  // max_connections. The setting needs a restart (and replicas at least as high: this stack has none).
  const [settings] = await stack.query<{ prepared: number; connections: number }>(
    'primary',
    "select current_setting('max_prepared_transactions')::int as prepared, current_setting('max_connections')::int as connections",
  );
  if (settings!.prepared < settings!.connections) {
    progress(
      `max_prepared_transactions ${settings!.prepared} → ${settings!.connections}; restarting the primary`,
    );
    await stack.query(
      'primary',
      `alter system set max_prepared_transactions = ${settings!.connections}`,
    );
    await stack.stopNode('primary');
    await stack.startNode('primary');
  }
  for (const db of DATABASES) {
    await stack.query('primary', `drop database if exists ${db} with (force)`);
    await stack.query('primary', `create database ${db}`);
  }
  for (const ledger of LEDGERS) await stack.query('primary', ledgerSchema(), [], ledger);
  await stack.query('primary', ledgerSchema('a') + ledgerSchema('b'), [], CEILING_DB);
  await stack.query('primary', 'checkpoint');
}

/** Waits until the bench's closed pools' server processes are gone, so the next cell can connect. */
async function waitForDisconnect(stack: LocalStack): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const [row] = await stack.query<{ n: number }>(
      'primary',
      `select count(*)::int as n from pg_stat_activity where datname = any($1) and pid <> pg_backend_pid()`,
      [DATABASES],
    );
    if (row!.n === 0) return;
    await sleep(50);
  }
  throw new Error('connections of a closed pool are still open after 5 s');
}

// ---------------------------------------------------------------------------------------------
// The two variants

type Side = 'a' | 'b';

interface Transfer {
  readonly id: string;
  readonly from: Side;
  readonly to: Side;
  readonly fromAccount: string;
  readonly toAccount: string;
  readonly amount: number;
}

function randomTransfer(): Transfer {
  const pick = (): string => `acct${1 + Math.floor(Math.random() * ACCOUNTS)}`;
  const from: Side = Math.random() < 0.5 ? 'a' : 'b';
  return {
    id: randomUUID(),
    from,
    to: from === 'a' ? 'b' : 'a',
    fromAccount: pick(),
    toAccount: pick(),
    amount: 1 + Math.floor(Math.random() * MAX_AMOUNT),
  };
}

interface Outcome {
  readonly attempts: number;
  /** Participants whose COMMIT PREPARED was left to recovery. */
  readonly pending: number;
}

interface Session {
  transfer(transfer: Transfer): Promise<Outcome>;
  /** 2PC only: the coordinator's per-transaction events, while `recording` is set. */
  readonly events: TransactionEvent[];
  recording: boolean;
  close(): Promise<void>;
}

interface Variant {
  readonly key: 'ceiling' | 'twopc';
  readonly label: string;
  open(concurrency: number): Session;
}

function ceilingVariant(stack: LocalStack): Variant {
  return {
    key: 'ceiling',
    label: 'one database, local transaction',
    open(concurrency) {
      const pool = new pg.Pool({
        connectionString: stack.url('primary', CEILING_DB),
        max: concurrency,
        application_name: CEILING_APP,
      });
      pool.on('error', () => undefined);
      return {
        events: [],
        recording: false,
        async transfer(t) {
          for (let attempt = 1; ; attempt++) {
            const client = await pool.connect();
            try {
              await client.query('begin');
              await client.query(
                `update ${t.from}.accounts set balance = balance - $1 where id = $2`,
                [t.amount, t.fromAccount],
              );
              await client.query(`insert into ${t.from}.transfers (id, amount) values ($1, $2)`, [
                t.id,
                -t.amount,
              ]);
              await client.query(
                `update ${t.to}.accounts set balance = balance + $1 where id = $2`,
                [t.amount, t.toAccount],
              );
              await client.query(`insert into ${t.to}.transfers (id, amount) values ($1, $2)`, [
                t.id,
                t.amount,
              ]);
              await client.query('commit');
              client.release();
              return { attempts: attempt, pending: 0 };
            } catch (err) {
              const rolledBack = await client.query('rollback').then(
                () => true,
                () => false,
              );
              client.release(!rolledBack);
              const state = sqlState(err);
              if (state === undefined || !RETRYABLE.has(state) || attempt >= MAX_ATTEMPTS)
                throw err;
              // The coordinator's backoff: exponential from 10 ms, at most 500 ms.
              await sleep(Math.min(500, 10 * 2 ** (attempt - 1)));
            }
          }
        },
        close: () => pool.end(),
      };
    },
  };
}

async function twoPhaseWork(tx: DistributedTransaction, t: Transfer): Promise<void> {
  const from = `ledger_${t.from}`;
  const to = `ledger_${t.to}`;
  await tx.query(from, 'update accounts set balance = balance - $1 where id = $2', [
    t.amount,
    t.fromAccount,
  ]);
  await tx.query(from, 'insert into transfers (id, amount) values ($1, $2)', [t.id, -t.amount]);
  await tx.query(to, 'update accounts set balance = balance + $1 where id = $2', [
    t.amount,
    t.toAccount,
  ]);
  await tx.query(to, 'insert into transfers (id, amount) values ($1, $2)', [t.id, t.amount]);
}

function twoPhaseVariant(stack: LocalStack): Variant {
  return {
    key: 'twopc',
    label: '2PC, two databases',
    open(concurrency) {
      const events: TransactionEvent[] = [];
      const session = {
        events,
        recording: false,
      };
      const coordinator = createCoordinator({
        name: 'bench',
        coordinator: stack.url('primary', COORDINATOR_DB),
        participants: Object.fromEntries(LEDGERS.map((db) => [db, stack.url('primary', db)])),
        // One connection more than there are callers: the coordinator runs COMMIT PREPARED on a
        // second connection of the participant's pool while the transaction's own is still
        // checked out, so with poolSize ≤ callers every connection can end up held by a
        // transaction waiting for one (see BENCHMARKS.md; `--pool-size 10 --concurrency 16`).
        poolSize: POOL_SIZE ?? concurrency + 1,
        observer: {
          onTransaction: (event) => {
            if (session.recording) events.push(event);
          },
        },
      });
      let started: Promise<void> | undefined;
      return Object.assign(session, {
        async transfer(t: Transfer): Promise<Outcome> {
          await (started ??= coordinator.start());
          const result = await coordinator.run((tx) => twoPhaseWork(tx, t));
          return { attempts: result.attempts, pending: result.pending.length };
        },
        close: () => coordinator.close(),
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Timed cells

interface Cell {
  readonly variant: Variant['key'];
  readonly concurrency: number;
  readonly round: number;
  readonly transfers: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly retried: number;
  readonly aborted: Readonly<Record<string, number>>;
  readonly pending: number;
  /** Median milliseconds of each coordinator phase (2PC only). */
  readonly phases: Partial<Record<TwoPhasePhase, number>>;
}

/** Transfers acknowledged as committed, and failed, per variant (warm-ups included), for the end-state checks. */
const acknowledged = { ceiling: 0, twopc: 0 };
const failedTotal = { ceiling: 0, twopc: 0 };

/**
 * `concurrency` workers, each running transfers back to back for `warmup` + `seconds`; only
 * transfers started after the warm-up count, and the window closes when the last of them ends.
 */
async function runCell(
  stack: LocalStack,
  variant: Variant,
  concurrency: number,
  round: number,
  seconds = SECONDS,
): Promise<Cell> {
  await stack.query('primary', 'checkpoint');
  const session = variant.open(concurrency);
  const latencies: number[] = [];
  const aborted: Record<string, number> = {};
  let retried = 0;
  let pending = 0;
  let lastEnd = 0;
  const measureFrom = performance.now() + WARMUP_SECONDS * 1000;
  const deadline = measureFrom + seconds * 1000;
  try {
    setTimeout(() => (session.recording = true), WARMUP_SECONDS * 1000).unref();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < deadline && !stop.signal.aborted) {
          const began = performance.now();
          const counted = began >= measureFrom;
          try {
            const outcome = await session.transfer(randomTransfer());
            acknowledged[variant.key]++;
            if (!counted) continue;
            const ended = performance.now();
            latencies.push(ended - began);
            lastEnd = Math.max(lastEnd, ended);
            retried += outcome.attempts - 1;
            pending += outcome.pending;
          } catch (err) {
            failedTotal[variant.key]++;
            if (!counted) continue;
            lastEnd = Math.max(lastEnd, performance.now());
            const reason = abortReason(err);
            aborted[reason] = (aborted[reason] ?? 0) + 1;
          }
        }
      }),
    );
  } finally {
    session.recording = false;
    await session.close();
    await waitForDisconnect(stack);
  }
  const phases: Partial<Record<TwoPhasePhase, number>> = {};
  for (const phase of ['work', 'prepare', 'decide', 'commit'] as const) {
    const samples = session.events
      .map((event) => event.phases[phase])
      .filter((value) => value !== undefined);
    if (samples.length > 0) phases[phase] = median(samples);
  }
  const elapsed = Math.max(lastEnd - measureFrom, 1);
  return {
    variant: variant.key,
    concurrency,
    round,
    transfers: latencies.length,
    perSecond: (latencies.length * 1000) / elapsed,
    p50: median(latencies),
    p99: percentile(latencies, 0.99),
    retried,
    aborted,
    pending,
    phases,
  };
}

function sumReasons(cells: readonly Cell[]): Record<string, number> {
  const total: Record<string, number> = {};
  for (const cell of cells) {
    for (const [reason, n] of Object.entries(cell.aborted))
      total[reason] = (total[reason] ?? 0) + n;
  }
  return total;
}

function formatReasons(reasons: Readonly<Record<string, number>>): string {
  const entries = Object.entries(reasons).sort(([, a], [, b]) => b - a);
  const total = entries.reduce((n, [, count]) => n + count, 0);
  if (total === 0) return '0';
  return `${total}: ${entries.map(([reason, n]) => `${reason} ${n}`).join(', ')}`;
}

function throughputTable(cells: readonly Cell[], variants: readonly Variant[]): string {
  const rows: string[][] = [];
  for (const concurrency of CONCURRENCY) {
    const ceiling = cells.filter((c) => c.concurrency === concurrency && c.variant === 'ceiling');
    const twopc = cells.filter((c) => c.concurrency === concurrency && c.variant === 'twopc');
    const ratios = ceiling.flatMap((c) => {
      const partner = twopc.find((t) => t.round === c.round);
      return partner === undefined ? [] : [partner.perSecond / c.perSecond];
    });
    for (const variant of variants) {
      const mine = variant.key === 'ceiling' ? ceiling : twopc;
      if (mine.length === 0) continue;
      const transfers = mine.reduce((n, c) => n + c.transfers, 0);
      const retried = mine.reduce((n, c) => n + c.retried, 0);
      const pending = mine.reduce((n, c) => n + c.pending, 0);
      rows.push([
        String(concurrency),
        variant.label,
        median(mine.map((c) => c.perSecond)).toFixed(0),
        `${mine.map((c) => c.perSecond.toFixed(0)).join(', ')}`,
        ms(median(mine.map((c) => c.p50))),
        ms(median(mine.map((c) => c.p99))),
        variant.key === 'twopc' && ratios.length > 0
          ? `${median(ratios).toFixed(2)} (${ratios.map((r) => r.toFixed(2)).join(', ')})`
          : '–',
        String(transfers),
        String(retried),
        formatReasons(sumReasons(mine)),
        variant.key === 'twopc' ? String(pending) : '–',
      ]);
    }
  }
  return table(
    [
      'concurrency',
      'variant',
      'transfers/s (median)',
      'transfers/s per round',
      'p50 (ms)',
      'p99 (ms)',
      '2PC / ceiling throughput (per round)',
      'transfers timed',
      'retries',
      'aborted',
      'commits left to recovery',
    ],
    rows,
  );
}

function phasesTable(cells: readonly Cell[]): string {
  const phases: readonly TwoPhasePhase[] = ['work', 'prepare', 'decide', 'commit'];
  return table(
    ['concurrency', 'end to end p50 (ms)', ...phases.map((phase) => `${phase} p50 (ms)`)],
    CONCURRENCY.flatMap((concurrency) => {
      const mine = cells.filter((c) => c.concurrency === concurrency && c.variant === 'twopc');
      if (mine.length === 0) return [];
      return [
        [
          String(concurrency),
          ms(median(mine.map((c) => c.p50))),
          ...phases.map((phase) =>
            ms(
              median(mine.flatMap((c) => (c.phases[phase] === undefined ? [] : [c.phases[phase]]))),
            ),
          ),
        ],
      ];
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Statements and WAL flushes per transfer

/**
 * Counts `pg` client queries (one round trip each) by the connection's `application_name`: the
 * coordinator names its pools `replikit-2pc-<database>`. Installed for the counting pass only,
 * so the timed cells run unpatched `pg`.
 */
class QueryCounter {
  readonly #counts = new Map<string, number>();
  #original: ((...args: unknown[]) => unknown) | undefined;

  install(): void {
    const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
    const original = proto.query;
    const counts = this.#counts;
    this.#original = original;
    proto.query = function (this: unknown, ...args: unknown[]): unknown {
      const name =
        (this as { connectionParameters?: { application_name?: string } }).connectionParameters
          ?.application_name ?? 'unknown';
      counts.set(name, (counts.get(name) ?? 0) + 1);
      return original.apply(this, args);
    };
  }

  uninstall(): void {
    if (this.#original === undefined) return;
    (pg.Client.prototype as unknown as { query: unknown }).query = this.#original;
    this.#original = undefined;
  }

  count(name: string): number {
    return this.#counts.get(name) ?? 0;
  }
}

interface ServerCounters {
  readonly walFlushes: number;
  readonly commits: Readonly<Record<string, number>>;
}

/** WAL fsyncs (`pg_stat_io`) and commits per database, server-wide. */
async function serverCounters(stack: LocalStack): Promise<ServerCounters> {
  const [wal] = await stack.query<{ flushes: string }>(
    'primary',
    "select coalesce(sum(fsyncs), 0)::text as flushes from pg_stat_io where object = 'wal'",
  );
  const rows = await stack.query<{ datname: string; commits: string }>(
    'primary',
    'select datname, xact_commit::text as commits from pg_stat_database where datname = any($1)',
    [DATABASES],
  );
  return {
    walFlushes: Number(wal!.flushes),
    commits: Object.fromEntries(rows.map((row) => [row.datname, Number(row.commits)])),
  };
}

interface CountResult {
  readonly label: string;
  /** The databases the variant uses (autovacuum elsewhere shows in the server's counters). */
  readonly databases: readonly string[];
  readonly statements: Readonly<Record<string, number>>;
  readonly commits: Readonly<Record<string, number>>;
  readonly walFlushes: number;
}

/** Counter deltas over one session of `transfers` sequential transfers, opened and closed. */
async function sessionDelta(
  stack: LocalStack,
  variant: Variant,
  transfers: number,
  counter?: { readonly from: number; readonly counter: QueryCounter },
): Promise<ServerCounters> {
  const before = await serverCounters(stack);
  const session = variant.open(1);
  try {
    for (let i = 0; i < transfers; i++) {
      if (i === counter?.from) counter.counter.install();
      await session.transfer(randomTransfer());
      acknowledged[variant.key]++;
    }
  } finally {
    counter?.counter.uninstall();
    await session.close();
    await waitForDisconnect(stack);
  }
  // A backend publishes its statistics when it exits (while idle, only every 10 s or so).
  await sleep(300);
  const after = await serverCounters(stack);
  return {
    walFlushes: after.walFlushes - before.walFlushes,
    commits: Object.fromEntries(
      DATABASES.map((db) => [db, (after.commits[db] ?? 0) - (before.commits[db] ?? 0)]),
    ),
  };
}

/**
 * Statements (one round trip each) per transfer, counted in the client over `COUNT` sequential
 * transfers; server work per transfer as the difference between a session of `2 × COUNT` and
 * one of `COUNT` transfers, so that connecting and the coordinator's start-up cancel out. A
 * first, unmeasured session warms up the server's caches.
 */
async function countPass(stack: LocalStack, variant: Variant): Promise<CountResult> {
  await sessionDelta(stack, variant, COUNT);
  const short = await sessionDelta(stack, variant, COUNT);
  const counter = new QueryCounter();
  const long = await sessionDelta(stack, variant, 2 * COUNT, { from: COUNT, counter });
  const apps = variant.key === 'ceiling' ? [CEILING_APP] : COORDINATOR_APPS;
  const per = (a: number, b: number): number => (b - a) / COUNT;
  return {
    label: variant.label,
    databases: variant.key === 'ceiling' ? [CEILING_DB] : [...LEDGERS, COORDINATOR_DB],
    statements: Object.fromEntries(
      apps.map((app) => [app.replace('replikit-2pc-', ''), counter.count(app) / COUNT]),
    ),
    commits: Object.fromEntries(
      DATABASES.map((db) => [db, per(short.commits[db] ?? 0, long.commits[db] ?? 0)]),
    ),
    walFlushes: per(short.walFlushes, long.walFlushes),
  };
}

function countTable(results: readonly CountResult[]): string {
  const fmt = (n: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(2));
  return table(
    [
      'variant',
      'statements (round trips) per transfer',
      'by connection',
      'transactions committed per transfer (`xact_commit`)',
      'WAL flushes per transfer',
    ],
    results.map((result) => {
      const total = Object.values(result.statements).reduce((a, b) => a + b, 0);
      return [
        result.label,
        fmt(total),
        Object.entries(result.statements)
          .map(([name, n]) => `${name === CEILING_APP ? CEILING_DB : name} ${fmt(n)}`)
          .join(', '),
        Object.entries(result.commits)
          .filter(([db]) => result.databases.includes(db))
          .map(([db, n]) => `${db} ${fmt(n)}`)
          .join(', '),
        result.walFlushes.toFixed(2),
      ];
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// End-state checks

interface Check {
  readonly check: string;
  readonly ceiling: string;
  readonly twopc: string;
  readonly ok: boolean;
}

async function scalar<T>(stack: LocalStack, database: string, sql: string): Promise<T> {
  const [row] = await stack.query<{ v: T }>('primary', sql, [], database);
  return row!.v;
}

async function verify(stack: LocalStack): Promise<Check[]> {
  const checks: Check[] = [];
  const preparedCount = (): Promise<number> =>
    scalar<number>(stack, 'postgres', 'select count(*)::int as v from pg_prepared_xacts');

  const preparedAtEnd = await preparedCount();
  let preparedAfterRecovery = preparedAtEnd;
  if (preparedAtEnd > 0) {
    // Pending commits are finished by recovery: one pass, as a restarted coordinator runs.
    const coordinator = createCoordinator({
      name: 'bench',
      coordinator: stack.url('primary', COORDINATOR_DB),
      participants: Object.fromEntries(LEDGERS.map((db) => [db, stack.url('primary', db)])),
      recoveryIntervalMs: 0,
    });
    try {
      await coordinator.start();
    } finally {
      await coordinator.close();
    }
    preparedAfterRecovery = await preparedCount();
  }
  checks.push({
    check: 'prepared transactions left (`pg_prepared_xacts`, whole server)',
    ceiling: '–',
    twopc:
      preparedAtEnd === preparedAfterRecovery
        ? String(preparedAtEnd)
        : `${preparedAtEnd} at the end, ${preparedAfterRecovery} after one recovery pass`,
    ok: preparedAfterRecovery === 0,
  });

  const expected = 2 * ACCOUNTS * OPENING_BALANCE;
  const sumOf = (db: string, table: string): Promise<number> =>
    scalar<string>(stack, db, `select coalesce(sum(balance), 0)::text as v from ${table}`).then(
      Number,
    );
  const ceilingMoney =
    (await sumOf(CEILING_DB, 'a.accounts')) + (await sumOf(CEILING_DB, 'b.accounts'));
  const twopcMoney = (await sumOf('ledger_a', 'accounts')) + (await sumOf('ledger_b', 'accounts'));
  checks.push({
    check: `total money (expected ${expected})`,
    ceiling: String(ceilingMoney),
    twopc: String(twopcMoney),
    ok: ceilingMoney === expected && twopcMoney === expected,
  });

  // Each side's balances moved by exactly the amounts its transfer rows record.
  const drift = async (db: string, schema: string): Promise<number> =>
    Number(
      await scalar<string>(
        stack,
        db,
        `select ((select sum(balance) from ${schema}accounts) - ${ACCOUNTS * OPENING_BALANCE}
                - (select coalesce(sum(amount), 0) from ${schema}transfers))::text as v`,
      ),
    );
  const ceilingDrift = [await drift(CEILING_DB, 'a.'), await drift(CEILING_DB, 'b.')];
  const twopcDrift = [await drift('ledger_a', ''), await drift('ledger_b', '')];
  checks.push({
    check: 'balances minus opening minus recorded transfers, per side (expected 0, 0)',
    ceiling: ceilingDrift.join(', '),
    twopc: twopcDrift.join(', '),
    ok: [...ceilingDrift, ...twopcDrift].every((n) => n === 0),
  });

  // Both sides hold the same transfer ids, with opposite amounts.
  const ceilingMismatch = await scalar<number>(
    stack,
    CEILING_DB,
    `select count(*)::int as v from a.transfers x full join b.transfers y using (id)
      where x.id is null or y.id is null or x.amount + y.amount <> 0`,
  );
  const rows = async (db: string): Promise<Map<string, number>> =>
    new Map(
      (
        await stack.query<{ id: string; amount: string }>(
          'primary',
          'select id, amount::text as amount from transfers',
          [],
          db,
        )
      ).map((row) => [row.id, Number(row.amount)]),
    );
  const [sideA, sideB] = [await rows('ledger_a'), await rows('ledger_b')];
  let twopcMismatch = 0;
  for (const [id, amount] of sideA) if (sideB.get(id) !== -amount) twopcMismatch++;
  for (const id of sideB.keys()) if (!sideA.has(id)) twopcMismatch++;
  checks.push({
    check: 'transfer ids on one side only, or amounts that do not cancel',
    ceiling: String(ceilingMismatch),
    twopc: String(twopcMismatch),
    ok: ceilingMismatch === 0 && twopcMismatch === 0,
  });

  const ceilingRows = await scalar<number>(
    stack,
    CEILING_DB,
    'select count(*)::int as v from a.transfers',
  );
  checks.push({
    check: 'transfers recorded / acknowledged as committed (warm-ups and counting pass included)',
    ceiling: `${ceilingRows} / ${acknowledged.ceiling}`,
    twopc: `${sideA.size} / ${acknowledged.twopc}`,
    ok: ceilingRows === acknowledged.ceiling && sideA.size === acknowledged.twopc,
  });
  checks.push({
    check: 'transfers that failed (none of them may be recorded)',
    ceiling: String(failedTotal.ceiling),
    twopc: String(failedTotal.twopc),
    ok: true,
  });
  const decisions = await scalar<number>(
    stack,
    COORDINATOR_DB,
    'select count(*)::int as v from replikit_2pc_decisions',
  );
  checks.push({
    check:
      'decision rows kept (recovery prunes each a minute after no participant holds its transaction prepared)',
    ceiling: '–',
    twopc: String(decisions),
    ok: true,
  });
  return checks;
}

function checksTable(checks: readonly Check[]): string {
  return table(
    ['check', 'ceiling (`ledger_one`)', '2PC (`ledger_a` + `ledger_b`)', 'result'],
    checks.map((c) => [c.check, c.ceiling, c.twopc, c.ok ? 'ok' : '**FAILED**']),
  );
}

// ---------------------------------------------------------------------------------------------

const startedAt = performance.now();
const load = loadavg()
  .map((value) => value.toFixed(2))
  .join(' ');
progress(`starting the bench stack in ${values.dir}`);
const stack = await LocalStack.start({ dir: resolve(values.dir), replicas: 0, log: progress });
let output: string;
let failed: boolean;
try {
  await prepare(stack);
  const variants = [ceilingVariant(stack), twoPhaseVariant(stack)];

  progress(
    `warm-up: ${WARMUP_SECONDS + 1} s of each variant at concurrency ${CONCURRENCY[0]}, not recorded`,
  );
  for (const variant of variants) await runCell(stack, variant, CONCURRENCY[0]!, -1, 1);

  const cells: Cell[] = [];
  for (const concurrency of CONCURRENCY) {
    for (let round = 0; round < ROUNDS; round++) {
      // Alternate which variant goes first, so drift on the shared machine is spread.
      const order = round % 2 === 0 ? variants : [...variants].reverse();
      for (const variant of order) {
        stop.signal.throwIfAborted();
        const cell = await runCell(stack, variant, concurrency, round);
        cells.push(cell);
        progress(
          `concurrency ${concurrency}, round ${round + 1}/${ROUNDS}, ${variant.key}: ` +
            `${cell.perSecond.toFixed(0)}/s, p50 ${ms(cell.p50)} ms, p99 ${ms(cell.p99)} ms, ` +
            `${cell.retried} retries, aborted ${formatReasons(cell.aborted)}` +
            (variant.key === 'twopc' ? `, ${cell.pending} commits left to recovery` : ''),
        );
      }
    }
  }

  progress(`counting statements and WAL flushes over ${COUNT} sequential transfers per variant`);
  const counts: CountResult[] = [];
  for (const variant of variants) counts.push(await countPass(stack, variant));

  progress('checking the end state');
  const checks = await verify(stack);
  failed = checks.some((c) => !c.ok);

  output = [
    `Command: \`${COMMAND}\``,
    '',
    `${stack.binaries.version}, Node ${process.version}, ${cpus().length} CPUs, ` +
      `load average at start ${load}; total ${((performance.now() - startedAt) / 1000).toFixed(0)} s.`,
    '',
    '### Throughput and latency',
    '',
    `${ACCOUNTS} accounts per side, random transfers of 1–${MAX_AMOUNT} in either direction; ` +
      `${ROUNDS} rounds per concurrency level, ceiling and 2PC alternating, each cell ` +
      `${WARMUP_SECONDS} s unrecorded then ${SECONDS} s timed. Throughput, p50 and p99 are ` +
      `medians across rounds; the ratio is taken within each round; retries, aborts and ` +
      `pending commits are summed over the rounds. Latency is per transfer as the caller sees ` +
      `it, retries included. Pools: the ceiling's holds one connection per caller; the ` +
      `coordinator's \`poolSize\` is ${POOL_SIZE ?? 'concurrency + 1'} (each of its three pools), ` +
      `recovery every 5 s (its defaults otherwise).`,
    '',
    throughputTable(cells, variants),
    '',
    '### Where a 2PC transfer spends its time',
    '',
    `The coordinator's own phase timings (its observer), medians: work = checkout, BEGIN with ` +
      `SET LOCAL (one round trip) and the four statements; prepare = PREPARE TRANSACTION on both, ` +
      `in parallel; decide = the decision row's INSERT (the commit point); commit = COMMIT PREPARED ` +
      `on both, in parallel, on the connections that prepared. Not in any phase: the coordinator ` +
      `connection's checkout, advisory lock and unlock.`,
    '',
    phasesTable(cells),
    '',
    '### Statements and WAL flushes per transfer',
    '',
    `Sequential transfers, one session at a time. Statements are \`pg\` queries (one round ` +
      `trip each) counted per connection pool over ${COUNT} transfers. Transactions ` +
      `(\`pg_stat_database.xact_commit\`) and WAL flushes (\`pg_stat_io\` fsyncs) are ` +
      `server-wide: a session of ${2 * COUNT} transfers minus one of ` +
      `${COUNT}, divided by ${COUNT}, after an unmeasured session of ${COUNT}.`,
    '',
    countTable(counts),
    '',
    '### End state',
    '',
    checksTable(checks),
    '',
  ].join('\n');
} finally {
  progress('stopping the bench stack');
  await stack.stop();
}
process.stdout.write(output);
if (failed) {
  progress('an end-state check FAILED');
  process.exitCode = 1;
}
