/**
 * Two-phase commit against its ceiling, measured in one run on a stack of its own
 * (`.replikit/bench-twopc`, a primary without replicas, started here and stopped at the end):
 *
 * 1. The ceiling: a transfer as one local transaction in one database (`ledger_one`, both ledgers'
 *    tables side by side in schemas `a` and `b`) on a plain `pg.Pool`.
 * 2. The same statements split across `ledger_a` and `ledger_b`, committed by the coordinator
 *    (`src/twopc`), its decisions in `coordinator`.
 * 3. The same transfer as a saga (`src/saga`, the transfers demo's saga: debit, then credit as
 *    the pivot, a reversal of the debit as its compensation) over `saga_ledger_a` and
 *    `saga_ledger_b`, its log in `coordinator`: `engine.run`, then `engine.wait`.
 *
 * At each concurrency level the three run in interleaved rounds, the order rotating from round to
 * round (ceiling, 2PC, saga / 2PC, saga, ceiling / …); the tables give medians across rounds, and
 * the ratios to the ceiling are taken within each round. Then a sequential pass counts the
 * statements and WAL flushes per transfer, and the end state is checked: money conserved, nothing
 * left prepared, both 2PC ledgers holding the same transfers, every completed saga holding one
 * applied debit and one applied credit, no saga left unfinished.
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

import { commitTransaction } from '../src/db/checkout.js';
import { migrate } from '../src/db/migrate.js';
import { createSagaEngine, SAGA_MIGRATIONS, type StepEvent } from '../src/saga/index.js';
import { LocalStack } from '../src/stack/index.js';
import {
  createCoordinator,
  TwoPhaseError,
  type DistributedTransaction,
  type TransactionEvent,
} from '../src/twopc/index.js';
import { median, ms, percentile, progressFor, table, positiveOption } from './support/report.js';
import {
  BENCH_TRANSFER_SAGA,
  createBenchTransferSaga,
  sagaLedgerSchema,
  type BenchTransferInput,
  type LedgerSide,
} from './support/twopc-saga.js';

const progress = progressFor('bench:twopc');

const USAGE = `Usage: npm run bench:twopc -- [options]

Transfers/s and p50/p99 latency of one local transaction (the ceiling), 2PC across two databases
and a saga, in interleaved rounds on a stack of its own; markdown on stdout, progress on stderr.

  --dir DIR             the bench stack's directory (default .replikit/bench-twopc)
  --seconds S           timed seconds per cell (default 5)
  --warmup S            unrecorded seconds at the start of each cell (default 1)
  --concurrency LIST    concurrency levels, comma-separated (default 1,16,64)
  --accounts N          accounts per ledger (default 1000)
  --rounds N            rounds per concurrency level (default 3)
  --count N             sequential transfers for the statement and WAL counts (default 200)
  --pool-size N         the coordinator's poolSize, the saga engine's and its ledger pools'
                        (default concurrency + 1)
  -h, --help            this text
`;

const { values } = parseArgs({
  options: {
    help: { type: 'boolean', short: 'h', default: false },
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
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

function positiveNumber(
  name: Exclude<keyof typeof values, 'pool-size' | 'help'>,
  integer = true,
): number {
  return positiveOption(name, values[name], integer);
}

const SECONDS = positiveNumber('seconds', false);
const WARMUP_SECONDS = positiveNumber('warmup', false);
const ACCOUNTS = positiveNumber('accounts');
const ROUNDS = positiveNumber('rounds');
const COUNT = positiveNumber('count');
/**
 * The coordinator's `poolSize`, and the saga engine's and its ledger pools' sizes; by default one
 * more than the concurrency (see {@link twoPhaseVariant}).
 */
const POOL_SIZE =
  values['pool-size'] === undefined ? undefined : positiveOption('pool-size', values['pool-size']);
const CONCURRENCY = values.concurrency.split(',').map((text) => {
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--concurrency: bad level "${text}"`);
  return n;
});

const COMMAND = ['npm run bench:twopc', ...(process.argv.length > 2 ? ['--'] : [])]
  .concat(process.argv.slice(2))
  .join(' ');

const LEDGERS = ['ledger_a', 'ledger_b'] as const;
const SAGA_LEDGERS = { a: 'saga_ledger_a', b: 'saga_ledger_b' } as const;
const CEILING_DB = 'ledger_one';
const COORDINATOR_DB = 'coordinator';
const DATABASES = [...LEDGERS, COORDINATOR_DB, CEILING_DB, ...Object.values(SAGA_LEDGERS)];
const OPENING_BALANCE = 1_000_000;
const MAX_AMOUNT = 100;
/** The coordinator's default; the ceiling retries as often. */
const MAX_ATTEMPTS = 5;
/** The same as the coordinator's default retry policy: deadlock, serialization failure, lock timeout. */
const RETRYABLE = new Set(['40P01', '40001', '55P03']);
const CEILING_APP = 'replikit-bench-ceiling';
const COORDINATOR_APPS = ['coordinator', ...LEDGERS].map((name) => `replikit-2pc-${name}`);
/** The saga engine's pool keeps its default name; the bench names the ledger pools the steps use. */
const SAGA_LOG_APP = 'replikit-saga';
const SAGA_APPS = [SAGA_LOG_APP, ...Object.values(SAGA_LEDGERS).map((db) => `replikit-saga-${db}`)];

const stop = new AbortController();
process.once('SIGINT', () => {
  progress('interrupted: stopping after the current cell');
  stop.abort();
});

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** A saga that did not complete: its status, and the failure the log records. */
class SagaNotCompleted extends Error {
  constructor(readonly reason: string) {
    super(`saga ${reason}`);
  }
}

/**
 * Why a transfer failed, for the tables: the coordinator's code and the SQLSTATE under it; for a
 * saga, how it ended and why.
 */
function abortReason(err: unknown): string {
  if (err instanceof SagaNotCompleted) return err.reason;
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
  for (const ledger of Object.values(SAGA_LEDGERS))
    await stack.query('primary', sagaLedgerSchema(ACCOUNTS, OPENING_BALANCE), [], ledger);
  // The saga log beside the coordinator's decisions (each engine's start finds it there).
  const log = new pg.Pool({ connectionString: stack.url('primary', COORDINATOR_DB), max: 1 });
  try {
    await migrate(log, SAGA_MIGRATIONS);
  } finally {
    await log.end();
  }
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
// The three variants

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
  /**
   * Milliseconds by phase, while `recording` is set: the coordinator's phases (2PC), each attempt
   * of a saga step (saga).
   */
  readonly phases: Map<string, number[]>;
  recording: boolean;
  close(): Promise<void>;
}

type VariantKey = 'ceiling' | 'twopc' | 'saga';

interface Variant {
  readonly key: VariantKey;
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
        phases: new Map(),
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
              await commitTransaction(client);
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
      const phases = new Map<string, number[]>();
      const session = {
        phases,
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
          onTransaction: (event: TransactionEvent) => {
            if (!session.recording) return;
            for (const [phase, millis] of Object.entries(event.phases))
              record(phases, phase, millis);
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

function record(phases: Map<string, number[]>, phase: string, millis: number | undefined): void {
  if (millis === undefined) return;
  let samples = phases.get(phase);
  if (samples === undefined) phases.set(phase, (samples = []));
  samples.push(millis);
}

/**
 * The transfer as a saga: one engine per session with its log in `coordinator` (its pool sized
 * like each of the coordinator's), and one pool per saga ledger for the steps, sized the same.
 * A transfer is `engine.run` and then `engine.wait` until the saga settles; one that did not
 * complete (compensated, needing attention, or still running after 30 s) counts as failed.
 */
function sagaVariant(stack: LocalStack): Variant {
  return {
    key: 'saga',
    label: 'saga, two databases',
    open(concurrency) {
      const poolSize = POOL_SIZE ?? concurrency + 1;
      const ledgers = Object.fromEntries(
        Object.entries(SAGA_LEDGERS).map(([side, db]) => {
          const pool = new pg.Pool({
            connectionString: stack.url('primary', db),
            max: poolSize,
            application_name: `replikit-saga-${db}`,
          });
          pool.on('error', () => undefined);
          return [side, pool];
        }),
      ) as Record<LedgerSide, pg.Pool>;
      const definition = createBenchTransferSaga((side) => ledgers[side]);
      const phases = new Map<string, number[]>();
      /** Step attempts after the first, by saga, until its transfer returns. */
      const retries = new Map<string, number>();
      const session = { phases, recording: false };
      const engine = createSagaEngine({
        database: stack.url('primary', COORDINATOR_DB),
        sagas: [definition],
        poolSize,
        // Room for every caller's saga at once (the default is 64): a saga the engine has no
        // room for waits in the log for the next poll (every second).
        concurrency: Math.max(64, concurrency),
        observer: {
          onStep: (event: StepEvent) => {
            if (event.attempt > 1) retries.set(event.sagaId, (retries.get(event.sagaId) ?? 0) + 1);
            if (session.recording && event.outcome === 'completed')
              record(
                phases,
                `${event.step}${event.phase === 'run' ? '' : ' (undo)'}`,
                event.durationMs,
              );
          },
        },
      });
      let started: Promise<void> | undefined;
      return Object.assign(session, {
        async transfer(t: Transfer): Promise<Outcome> {
          await (started ??= engine.start());
          const input: BenchTransferInput = {
            transferId: t.id,
            from: { side: t.from, account: t.fromAccount },
            to: { side: t.to, account: t.toAccount },
            amount: t.amount,
          };
          const { id } = await engine.run(definition, input, { id: t.id });
          const saga = await engine.wait(id, { timeoutMs: 30_000 });
          const retried = retries.get(id) ?? 0;
          retries.delete(id);
          const { status, failure } = saga.state;
          if (status !== 'completed')
            throw new SagaNotCompleted(
              failure === null ? status : `${status} (${failure.step}: ${failure.reason})`,
            );
          return { attempts: 1 + retried, pending: 0 };
        },
        async close() {
          await engine.close();
          await Promise.all(Object.values(ledgers).map((pool) => pool.end()));
        },
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Timed cells

interface Cell {
  readonly variant: VariantKey;
  readonly concurrency: number;
  readonly round: number;
  readonly transfers: number;
  readonly perSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly retried: number;
  readonly aborted: Readonly<Record<string, number>>;
  readonly pending: number;
  /** Median milliseconds of each coordinator phase (2PC), of each saga step (saga). */
  readonly phases: Readonly<Record<string, number>>;
}

/**
 * Transfers acknowledged as committed (for a saga: completed), and failed, per variant (warm-ups
 * included), for the end-state checks.
 */
const acknowledged: Record<VariantKey, number> = { ceiling: 0, twopc: 0, saga: 0 };
const failedTotal: Record<VariantKey, number> = { ceiling: 0, twopc: 0, saga: 0 };

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
  const phases: Record<string, number> = {};
  for (const [phase, samples] of session.phases) phases[phase] = median(samples);
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
    const of = (key: VariantKey): Cell[] =>
      cells.filter((c) => c.concurrency === concurrency && c.variant === key);
    const ceiling = of('ceiling');
    for (const variant of variants) {
      const mine = of(variant.key);
      if (mine.length === 0) continue;
      // Within each round: this variant's throughput over the ceiling's.
      const ratios = mine.flatMap((c) => {
        const partner = ceiling.find((t) => t.round === c.round);
        return partner === undefined ? [] : [c.perSecond / partner.perSecond];
      });
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
        variant.key !== 'ceiling' && ratios.length > 0
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
      '2PC or saga / ceiling throughput (per round)',
      'transfers timed',
      'retries',
      'aborted',
      'commits left to recovery',
    ],
    rows,
  );
}

/** Median end-to-end p50 and the median of each phase's per-cell medians, by concurrency. */
function phasesTable(cells: readonly Cell[], key: VariantKey, phases: readonly string[]): string {
  return table(
    ['concurrency', 'end to end p50 (ms)', ...phases.map((phase) => `${phase} p50 (ms)`)],
    CONCURRENCY.flatMap((concurrency) => {
      const mine = cells.filter((c) => c.concurrency === concurrency && c.variant === key);
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
  const apps = { ceiling: [CEILING_APP], twopc: COORDINATOR_APPS, saga: SAGA_APPS }[variant.key];
  const databases = {
    ceiling: [CEILING_DB],
    twopc: [...LEDGERS, COORDINATOR_DB],
    saga: [...Object.values(SAGA_LEDGERS), COORDINATOR_DB],
  }[variant.key];
  const connection = (app: string): string =>
    app === CEILING_APP
      ? CEILING_DB
      : app === SAGA_LOG_APP
        ? `${COORDINATOR_DB} (saga log)`
        : app.replace(/^replikit-(2pc|saga)-/, '');
  const per = (a: number, b: number): number => (b - a) / COUNT;
  return {
    label: variant.label,
    databases,
    statements: Object.fromEntries(
      apps.map((app) => [connection(app), counter.count(app) / COUNT]),
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
          .map(([name, n]) => `${name} ${fmt(n)}`)
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
  readonly saga: string;
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
    saga: '–',
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
  const sagaMoney =
    (await sumOf(SAGA_LEDGERS.a, 'accounts')) + (await sumOf(SAGA_LEDGERS.b, 'accounts'));
  checks.push({
    check: `total money (expected ${expected})`,
    ceiling: String(ceilingMoney),
    twopc: String(twopcMoney),
    saga: String(sagaMoney),
    ok: ceilingMoney === expected && twopcMoney === expected && sagaMoney === expected,
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
  // A saga ledger records its entries in `saga_entries`; only applied ones moved money.
  const sagaDrift: number[] = [];
  for (const db of Object.values(SAGA_LEDGERS)) {
    sagaDrift.push(
      Number(
        await scalar<string>(
          stack,
          db,
          `select ((select sum(balance) from accounts) - ${ACCOUNTS * OPENING_BALANCE}
                  - (select coalesce(sum(amount), 0) from saga_entries where status = 'applied'))::text as v`,
        ),
      ),
    );
  }
  checks.push({
    check:
      'balances minus opening minus recorded transfers (saga: applied entries), per side (expected 0, 0)',
    ceiling: ceilingDrift.join(', '),
    twopc: twopcDrift.join(', '),
    saga: sagaDrift.join(', '),
    ok: [...ceilingDrift, ...twopcDrift, ...sagaDrift].every((n) => n === 0),
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
  // Every completed saga: exactly one applied debit (`<id>/debit`, on the side it names, of minus
  // the amount) and one applied credit (`<id>/credit`, plus the amount); every other saga: no
  // applied entry (a compensated debit is `reversed`, or `cancelled` if the reversal came first).
  const sagas = await stack.query<{ id: string; status: string; input: BenchTransferInput }>(
    'primary',
    'select id, status, input from replikit_sagas where saga = $1',
    [BENCH_TRANSFER_SAGA],
    COORDINATOR_DB,
  );
  const entries = new Map<string, { side: LedgerSide; account: string; amount: number }>();
  let orphanEntries = 0;
  for (const [side, db] of Object.entries(SAGA_LEDGERS) as [LedgerSide, string][]) {
    for (const row of await stack.query<{ key: string; account: string; amount: string }>(
      'primary',
      "select key, account, amount::text as amount from saga_entries where status = 'applied'",
      [],
      db,
    )) {
      if (entries.has(row.key)) orphanEntries++;
      entries.set(row.key, { side, account: row.account, amount: Number(row.amount) });
    }
  }
  const byStatus: Record<string, number> = {};
  let sagaMismatch = 0;
  for (const saga of sagas) {
    byStatus[saga.status] = (byStatus[saga.status] ?? 0) + 1;
    const debit = entries.get(`${saga.id}/debit`);
    const credit = entries.get(`${saga.id}/credit`);
    entries.delete(`${saga.id}/debit`);
    entries.delete(`${saga.id}/credit`);
    const { from, to, amount } = saga.input;
    const ok =
      saga.status === 'completed'
        ? debit?.side === from.side &&
          debit.account === from.account &&
          debit.amount === -amount &&
          credit?.side === to.side &&
          credit.account === to.account &&
          credit.amount === amount
        : debit === undefined && credit === undefined;
    if (!ok) sagaMismatch++;
  }
  orphanEntries += entries.size;
  checks.push({
    check:
      'transfer ids on one side only, or amounts that do not cancel (saga: sagas whose applied entries are not exactly a debit and a credit when completed, none otherwise; applied entries of no saga)',
    ceiling: String(ceilingMismatch),
    twopc: String(twopcMismatch),
    saga: `${sagaMismatch}; ${orphanEntries}`,
    ok: ceilingMismatch === 0 && twopcMismatch === 0 && sagaMismatch === 0 && orphanEntries === 0,
  });

  const ceilingRows = await scalar<number>(
    stack,
    CEILING_DB,
    'select count(*)::int as v from a.transfers',
  );
  const completed = byStatus.completed ?? 0;
  checks.push({
    check:
      'transfers recorded (saga: completed) / acknowledged as committed (warm-ups and counting pass included)',
    ceiling: `${ceilingRows} / ${acknowledged.ceiling}`,
    twopc: `${sideA.size} / ${acknowledged.twopc}`,
    saga: `${completed} / ${acknowledged.saga}`,
    ok:
      ceilingRows === acknowledged.ceiling &&
      sideA.size === acknowledged.twopc &&
      completed === acknowledged.saga,
  });
  checks.push({
    check: 'transfers that failed (none of them may be recorded; saga: none may be completed)',
    ceiling: String(failedTotal.ceiling),
    twopc: String(failedTotal.twopc),
    saga: String(failedTotal.saga),
    ok: true,
  });
  const unfinished = sagas.length - completed - (byStatus.compensated ?? 0);
  checks.push({
    check: 'sagas by status; left running, compensating or needing attention (expected 0)',
    ceiling: '–',
    twopc: '–',
    saga:
      Object.entries(byStatus)
        .map(([status, n]) => `${status} ${n}`)
        .join(', ') + `; ${unfinished}`,
    ok: unfinished === 0,
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
    saga: '–',
    ok: true,
  });
  return checks;
}

function checksTable(checks: readonly Check[]): string {
  return table(
    [
      'check',
      'ceiling (`ledger_one`)',
      '2PC (`ledger_a` + `ledger_b`)',
      'saga (`saga_ledger_a` + `saga_ledger_b`)',
      'result',
    ],
    checks.map((c) => [c.check, c.ceiling, c.twopc, c.saga, c.ok ? 'ok' : '**FAILED**']),
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
  const variants = [ceilingVariant(stack), twoPhaseVariant(stack), sagaVariant(stack)];

  progress(
    `warm-up: ${WARMUP_SECONDS + 1} s of each variant at concurrency ${CONCURRENCY[0]}, not recorded`,
  );
  for (const variant of variants) await runCell(stack, variant, CONCURRENCY[0]!, -1, 1);

  const cells: Cell[] = [];
  for (const concurrency of CONCURRENCY) {
    for (let round = 0; round < ROUNDS; round++) {
      // Rotate which variant goes first, so drift on the shared machine is spread.
      const first = round % variants.length;
      const order = [...variants.slice(first), ...variants.slice(0, first)];
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
      `${ROUNDS} rounds per concurrency level, the three variants in an order rotating from ` +
      `round to round, each cell ${WARMUP_SECONDS} s unrecorded then ${SECONDS} s timed. ` +
      `Throughput, p50 and p99 are medians across rounds; the ratios are taken within each ` +
      `round; retries, aborts and pending commits are summed over the rounds. Latency is per ` +
      `transfer as the caller sees it, retries included (for a saga: \`engine.run\` until ` +
      `\`engine.wait\` returns it completed; a saga that did not complete counts as aborted, ` +
      `with its status and failure; a retry is a step attempt after the first). Pools: the ` +
      `ceiling's holds one connection per caller; the coordinator's \`poolSize\` is ` +
      `${POOL_SIZE ?? 'concurrency + 1'} (each of its three pools), recovery every 5 s (its ` +
      `defaults otherwise); the saga engine's \`poolSize\` and each saga ledger's pool are ` +
      `${POOL_SIZE ?? 'concurrency + 1'} too, the engine's \`concurrency\` at least the ` +
      `callers (default 64), its defaults otherwise.`,
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
    phasesTable(cells, 'twopc', ['work', 'prepare', 'decide', 'commit']),
    '',
    '### Where a saga transfer spends its time',
    '',
    `The saga engine's step timings (its observer), medians: debit and credit = one attempt of ` +
      `the step, \`applyEntry\`'s one statement on the ledger's pool. The rest of the end-to-end ` +
      `time is the saga log: the saga's insert with its first step's intent, a checkpoint after ` +
      `each step (batched across sagas), and \`engine.wait\`.`,
    '',
    phasesTable(cells, 'saga', ['debit', 'credit']),
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
