/**
 * The sampler behind `replikit measure`: it checks that the servers are a primary and replicas of
 * it, writes rows to a table of its own on the primary, reads them back on every replica after a
 * delay t, and samples byte lag, for a bounded time.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { errorMessage } from '../errors.js';
import { parseLsn } from '../routing/lsn.js';
import { MeasureError } from './measure-error.js';
import {
  DEFAULT_DELAYS_MS,
  type ByteLagSample,
  type MeasureSamples,
  type ReadTrial,
  type VisibilityTime,
} from './statistics.js';
import { redactUrl } from '../db/database-url.js';

/** A server to measure, with the name the report gives it. */
export interface MeasureTarget {
  readonly name: string;
  readonly url: string;
}

/** Where a running measurement stands, reported about once a second. */
export interface MeasureProgress {
  readonly elapsedMs: number;
  readonly durationMs: number;
  readonly writes: number;
  readonly reads: number;
}

/** Options of {@link measureStaleness}. */
export interface MeasureOptions {
  readonly primary: MeasureTarget;
  readonly replicas: readonly MeasureTarget[];
  /** How long to write and read; the run stops by itself after this. */
  readonly durationMs: number;
  /** Read delays t after COMMIT, in ms (default {@link DEFAULT_DELAYS_MS}). */
  readonly delaysMs?: readonly number[];
  /** How long a write may take to show on a replica before it counts as never visible (default 5 s). */
  readonly visibilityCapMs?: number;
  /** How often byte lag is sampled (default 250 ms). */
  readonly lagIntervalMs?: number;
  /** Stops the run early; the table is dropped all the same. */
  readonly signal?: AbortSignal;
  readonly onProgress?: (progress: MeasureProgress) => void;
  /** Called once the table exists, with its name. */
  readonly onTable?: (table: string) => void;
}

interface Connected {
  readonly target: MeasureTarget;
  readonly client: pg.Client;
}

/** A short name for a server: `host:port`. */
export function targetName(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port === '' ? '5432' : parsed.port}`;
  } catch {
    return redactUrl(url);
  }
}

async function connect(target: MeasureTarget, role: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: target.url,
    connectionTimeoutMillis: 5000,
    statement_timeout: 10_000,
    application_name: 'replikit measure',
  });
  // An error on an idle connection must not crash the process; the next query reports it.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw new MeasureError(
      'MEASURE_CONNECT',
      `cannot connect to ${role} ${redactUrl(target.url)}: ${errorMessage(err)}`,
      { cause: err },
    );
  }
  return client;
}

interface ServerFacts {
  inRecovery: boolean;
  systemId: string;
  database: string;
}

async function factsOf(node: Connected, role: string): Promise<ServerFacts> {
  try {
    const { rows } = await node.client.query<{
      in_recovery: boolean;
      system_id: string;
      database: string;
    }>(
      `select pg_is_in_recovery() as in_recovery,
              (select system_identifier::text from pg_control_system()) as system_id,
              current_database() as database`,
    );
    const row = rows[0];
    if (row === undefined) throw new Error('no answer');
    return { inRecovery: row.in_recovery, systemId: row.system_id, database: row.database };
  } catch (err) {
    throw new MeasureError(
      'MEASURE_NOT_A_PAIR',
      `cannot tell what ${role} ${redactUrl(node.target.url)} is: ${errorMessage(err)}`,
      { cause: err },
    );
  }
}

/**
 * Refuses (with `MEASURE_NOT_A_PAIR`) unless `primary` is a primary and every replica is in
 * recovery, belongs to the same cluster (same system identifier), serves the same database, and
 * streams WAL (its WAL receiver is streaming, or the primary lists replication connections when the
 * receiver's status is hidden from this user).
 */
async function checkPair(primary: Connected, replicas: readonly Connected[]): Promise<void> {
  const refuse = (message: string): never => {
    throw new MeasureError('MEASURE_NOT_A_PAIR', message);
  };
  const primaryFacts = await factsOf(primary, '--primary');
  if (primaryFacts.inRecovery)
    refuse(
      `--primary ${redactUrl(primary.target.url)} is in recovery: it is a replica, not a primary`,
    );
  const { rows: senders } = await primary.client.query<{ n: number }>(
    'select count(*)::int as n from pg_stat_replication',
  );
  const primarySenders = senders[0]?.n ?? 0;
  for (const replica of replicas) {
    const shown = redactUrl(replica.target.url);
    const facts = await factsOf(replica, '--replica');
    if (!facts.inRecovery)
      refuse(`--replica ${shown} is not in recovery: it is a primary, not a replica`);
    if (facts.systemId !== primaryFacts.systemId)
      refuse(
        `--replica ${shown} is not a replica of the primary: system identifier ${facts.systemId}, the primary's is ${primaryFacts.systemId}`,
      );
    if (facts.database !== primaryFacts.database)
      refuse(
        `--replica ${shown} names database "${facts.database}" but --primary names "${primaryFacts.database}"`,
      );
    const { rows } = await replica.client.query<{ status: string | null }>(
      'select status from pg_stat_wal_receiver',
    );
    const status = rows[0]?.status;
    const streaming = status === 'streaming' || (status === null && primarySenders > 0);
    if (!streaming)
      refuse(
        `--replica ${shown} does not stream from the primary (WAL receiver ${status ?? 'not running'})`,
      );
  }
}

async function dropTable(primary: Connected, table: string): Promise<void> {
  const sql = `drop table if exists ${table}`;
  try {
    await primary.client.query(sql);
    return;
  } catch {
    // The run's connection may be what failed: try once more on a fresh one.
  }
  let client: pg.Client | undefined;
  try {
    client = await connect(primary.target, '--primary');
    await client.query(sql);
  } catch (err) {
    throw new MeasureError(
      'MEASURE_CLEANUP',
      `could not drop table ${table} on the primary; drop it by hand: ${errorMessage(err)}`,
      { cause: err, details: { table } },
    );
  } finally {
    await client?.end().catch(() => undefined);
  }
}

async function waitForTable(
  replicas: readonly Connected[],
  table: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const deadline = performance.now() + 30_000;
  for (const replica of replicas) {
    for (;;) {
      const { rows } = await replica.client.query<{ ok: boolean }>(
        'select to_regclass($1) is not null as ok',
        [table],
      );
      if (rows[0]?.ok === true) break;
      if (signal?.aborted === true) return;
      if (performance.now() > deadline)
        throw new MeasureError(
          'MEASURE_CONNECT',
          `--replica ${redactUrl(replica.target.url)} did not replay the creation of ${table} within 30 s`,
        );
      await sleep(20);
    }
  }
}

const sleepQuietly = (ms: number): Promise<void> =>
  ms > 0 ? sleep(ms).then(() => undefined) : Promise.resolve();

/**
 * Measures staleness between a primary and its replicas for `durationMs` and returns the raw
 * samples (see `buildReport` for the statistics).
 *
 * Each round inserts a row on the primary (autocommit, so the INSERT returning means COMMIT
 * returned), then reads it on every replica t ms later, t cycling through `delaysMs` so every
 * (replica, t) pair gets a share of the rounds. At t = 0 a stale read is followed by polls that
 * time when the row became visible: this commit-to-visible time is the replica's time behind,
 * which, unlike `now() - pg_last_xact_replay_timestamp()`, does not grow while the primary is idle.
 *
 * It writes only to a table `replikit_measure_<random>` that it creates and always drops.
 *
 * ```ts
 * const samples = await measureStaleness({
 *   primary: { name: 'primary', url: 'postgres://postgres@127.0.0.1:5432/postgres' },
 *   replicas: [{ name: 'replica1', url: 'postgres://postgres@127.0.0.1:5433/postgres' }],
 *   durationMs: 10_000,
 * });
 * console.log(formatSummary(buildReport(samples, { primary: 'primary', waitBudgetMs: 1000 })));
 * ```
 */
export async function measureStaleness(options: MeasureOptions): Promise<MeasureSamples> {
  const delaysMs = options.delaysMs ?? DEFAULT_DELAYS_MS;
  const visibilityCapMs = options.visibilityCapMs ?? 5000;
  const lagIntervalMs = options.lagIntervalMs ?? 250;
  const signal = options.signal;
  if (options.replicas.length === 0)
    throw new MeasureError('MEASURE_NOT_A_PAIR', 'at least one --replica is needed');

  const opened: pg.Client[] = [];
  const open = async (target: MeasureTarget, role: string): Promise<Connected> => {
    const client = await connect(target, role);
    opened.push(client);
    return { target, client };
  };
  try {
    const primary = await open(options.primary, '--primary');
    const replicas: Connected[] = [];
    for (const target of options.replicas) replicas.push(await open(target, '--replica'));
    await checkPair(primary, replicas);
    // Lag is sampled on connections of its own, so that it never delays a timed read.
    const lagPrimary = await open(options.primary, '--primary');
    const lagReplicas: Connected[] = [];
    for (const target of options.replicas) lagReplicas.push(await open(target, '--replica'));

    const table = `replikit_measure_${randomBytes(6).toString('hex')}`;
    await primary.client.query(
      `create table ${table} (id bigint generated always as identity primary key)`,
    );
    options.onTable?.(table);
    try {
      await waitForTable(replicas, table, signal);
      return await sample({
        ...options,
        primary,
        replicas,
        lagPrimary,
        lagReplicas,
        table,
        delaysMs,
        visibilityCapMs,
        lagIntervalMs,
      });
    } finally {
      await dropTable(primary, table);
    }
  } finally {
    await Promise.all(opened.map((client) => client.end().catch(() => undefined)));
  }
}

interface SampleOptions {
  readonly primary: Connected;
  readonly replicas: readonly Connected[];
  readonly lagPrimary: Connected;
  readonly lagReplicas: readonly Connected[];
  readonly table: string;
  readonly durationMs: number;
  readonly delaysMs: readonly number[];
  readonly visibilityCapMs: number;
  readonly lagIntervalMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly onProgress?: ((progress: MeasureProgress) => void) | undefined;
}

async function sample(options: SampleOptions): Promise<MeasureSamples> {
  const { primary, replicas, table, delaysMs, signal } = options;
  const trials: ReadTrial[] = [];
  const visibility: VisibilityTime[] = [];
  const byteLag: ByteLagSample[] = [];
  const started = performance.now();
  const deadline = started + options.durationMs;
  const running = (): boolean => signal?.aborted !== true && performance.now() < deadline;
  const readSql = `select exists (select 1 from ${table} where id = $1) as visible`;
  let writes = 0;

  const ticker = setInterval(() => {
    options.onProgress?.({
      elapsedMs: performance.now() - started,
      durationMs: options.durationMs,
      writes,
      reads: trials.length,
    });
  }, 1000);

  const lagLoop = (async (): Promise<void> => {
    while (running()) {
      const { rows } = await options.lagPrimary.client.query<{ lsn: string }>(
        'select pg_current_wal_lsn()::text as lsn',
      );
      const primaryLsn = parseLsn(rows[0]?.lsn ?? '');
      const atMs = performance.now() - started;
      for (const replica of options.lagReplicas) {
        const { rows: replayed } = await replica.client.query<{ lsn: string | null }>(
          'select pg_last_wal_replay_lsn()::text as lsn',
        );
        const replayLsn = parseLsn(replayed[0]?.lsn ?? '');
        if (primaryLsn === undefined || replayLsn === undefined) continue;
        // The replica is read just after the primary and may have passed that position meanwhile.
        const behind = primaryLsn > replayLsn ? primaryLsn - replayLsn : 0n;
        byteLag.push({ replica: replica.target.name, atMs, bytes: Number(behind) });
      }
      await sleepQuietly(Math.min(options.lagIntervalMs, deadline - performance.now()));
    }
    // A failed lag sample ends the lag series only; the visibility rounds report their own errors.
  })().catch(() => undefined);

  const readOn = async (replica: Connected, id: string, delayMs: number, committed: number) => {
    await sleepQuietly(committed + delayMs - performance.now());
    const { rows } = await replica.client.query<{ visible: boolean }>(readSql, [id]);
    const visible = rows[0]?.visible === true;
    const atMs = committed - started;
    trials.push({ replica: replica.target.name, delayMs, atMs, visible });
    if (delayMs !== 0) return;
    let visibleAfterMs: number | undefined = visible ? performance.now() - committed : undefined;
    // Poll without pausing for the first few ms (most writes show within one), then every ms.
    while (visibleAfterMs === undefined && signal?.aborted !== true) {
      const since = performance.now() - committed;
      if (since > options.visibilityCapMs) break;
      if (since > 5) await sleepQuietly(1);
      const { rows: again } = await replica.client.query<{ visible: boolean }>(readSql, [id]);
      if (again[0]?.visible === true) visibleAfterMs = performance.now() - committed;
    }
    if (visibleAfterMs === undefined && signal?.aborted === true) return;
    visibility.push({
      replica: replica.target.name,
      atMs,
      staleAtFirstRead: !visible,
      visibleAfterMs,
    });
  };

  try {
    for (let round = 0; running(); round += 1) {
      const delayMs = delaysMs[round % delaysMs.length] ?? 0;
      // Autocommit: the INSERT returns once its COMMIT has.
      const { rows } = await primary.client.query<{ id: string }>(
        `insert into ${table} default values returning id`,
      );
      const committed = performance.now();
      writes += 1;
      const id = rows[0]?.id;
      if (id === undefined) continue;
      await Promise.all(replicas.map((replica) => readOn(replica, id, delayMs, committed)));
    }
  } catch (err) {
    throw new MeasureError('MEASURE_CONNECT', `measurement failed: ${errorMessage(err)}`, {
      cause: err,
    });
  } finally {
    clearInterval(ticker);
    await lagLoop;
  }
  return {
    replicas: replicas.map((replica) => replica.target.name),
    delaysMs,
    durationMs: performance.now() - started,
    writes,
    trials,
    visibility,
    byteLag,
  };
}
