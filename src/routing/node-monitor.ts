import { setTimeout as sleep } from 'node:timers/promises';

import {
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleWhen,
  type CircuitBreakerPolicy,
} from 'cockatiel';
import pg from 'pg';

import { isConnectionError } from './connection-errors.js';
import { parseLsn, type Lsn } from './lsn.js';

/** What one look at a replica showed. Positions only ever move forward on one server. */
export interface ReplicaSample {
  /** Local time (ms) when the answer arrived; the positions were true at or before it. */
  readonly at: number;
  readonly inRecovery: boolean;
  readonly replayLsn: Lsn | undefined;
  readonly receiveLsn: Lsn | undefined;
  /** Commit time (ms) of the last transaction replayed, from the primary's clock. */
  readonly lastReplayAt: number | undefined;
  /** Whether the WAL receiver is streaming from the primary. */
  readonly streaming: boolean;
  readonly systemId: string | undefined;
  /** `pg_postmaster_start_time()` in seconds since the epoch, as text: changes at every restart. */
  readonly startedAt: string | undefined;
  /**
   * The timeline the replica streams (`pg_stat_wal_receiver.received_tli`) while its WAL receiver
   * runs, else the timeline of its latest restartpoint, which lags behind a timeline switch (so a
   * replica may look diverged a little longer than it is, never the other way round).
   */
  readonly timeline?: number | undefined;
}

/** What one look at the primary showed. */
export interface PrimarySample {
  readonly at: number;
  /**
   * Local time (ms) just before the sample was asked for: every transaction that had committed
   * by then ends at or below `insertLsn`.
   */
  readonly sentAt: number;
  readonly inRecovery: boolean;
  /** `pg_current_wal_insert_lsn()`: at or past the end of every committed transaction. */
  readonly insertLsn: Lsn;
  readonly systemId: string;
  readonly timeline: number;
  /** `pg_postmaster_start_time()` in seconds since the epoch, as text: changes at every restart. */
  readonly startedAt: string;
  readonly walBlockSize: number;
}

/**
 * The server a position was read from. Positions only move forward on one running server: a
 * restart (it may come back from an older backup, or replay from an earlier restart point) or
 * another server behind the same address makes a cached position mean nothing. The timeline is
 * not part of it: a running replica moves to a new timeline when it follows a promotion, and
 * whether its positions still compare with the primary's is the timeline check's to say
 * (timeline.ts); a primary's timeline is compared as well ({@link samePrimary}).
 */
export interface ServerIdentity {
  readonly systemId: string | undefined;
  readonly startedAt: string | undefined;
}

/** Asks a connection which server it reached; see {@link ServerIdentity}. */
export const SERVER_IDENTITY = `select (select system_identifier::text from pg_control_system()) as system_id,
  extract(epoch from pg_postmaster_start_time())::text as started_at`;

/** Whether two identities name the same running server; an unknown one names none. */
export function sameServer(a: ServerIdentity, b: ServerIdentity): boolean {
  return (
    a.systemId !== undefined &&
    a.startedAt !== undefined &&
    a.systemId === b.systemId &&
    a.startedAt === b.startedAt
  );
}

/** Whether two primary samples come from the same server on the same timeline. */
export function samePrimary(a: PrimarySample, b: PrimarySample): boolean {
  return sameServer(a, b) && a.timeline === b.timeline;
}

/**
 * The primary sample to keep once `fresh` arrives. On the same server and timeline the position
 * never goes down: one observed after a commit may be newer than the sample, and still bounds
 * every commit before the sample was asked for. Another server, a restart or a new timeline (a
 * failover) replaces everything, even with a lower position: the old one was another server's.
 */
export function nextPrimarySample(
  previous: PrimarySample | undefined,
  fresh: PrimarySample,
): PrimarySample {
  if (
    previous === undefined ||
    !samePrimary(previous, fresh) ||
    fresh.insertLsn >= previous.insertLsn
  )
    return fresh;
  return { ...fresh, insertLsn: previous.insertLsn };
}

/**
 * Health of a replica, saved and restored as plain data.
 * - `starting`: not yet sampled;
 * - `healthy`: in rotation for every level;
 * - `lagging`: behind more than the lag threshold; still serves reads that it has caught up
 *   for (read-your-writes, monotonic), not eventual or bounded ones, until its lag falls below
 *   half the threshold (hysteresis);
 * - `down`: unreachable, timing out or failing; its circuit breaker is open;
 * - `promoted`: no longer in recovery, so no longer a replica of this primary;
 * - `primary`: with candidate nodes, the writable node the cluster sends writes to;
 * - `foreign`: a replica of another cluster;
 * - `diverged`: on another timeline than the primary (`timeline`, `primaryTimeline`) and past the
 *   position where the primary's timeline forked off it (`forkLsn`), so it holds WAL the primary
 *   never wrote and can never follow it (rebuild it); `forkLsn` is absent when the primary's
 *   timeline history could not be read to prove that the replica can follow.
 */
export type ReplicaHealth =
  | { readonly state: 'starting' }
  | { readonly state: 'healthy' }
  | { readonly state: 'lagging'; readonly since: number }
  | { readonly state: 'down'; readonly since: number; readonly error: string }
  | { readonly state: 'promoted'; readonly since: number }
  | { readonly state: 'primary' }
  | { readonly state: 'foreign'; readonly systemId: string }
  | {
      readonly state: 'diverged';
      readonly since: number;
      readonly timeline?: number;
      readonly primaryTimeline: number;
      readonly forkLsn?: string;
    };

/** Options shared by the monitors. */
export interface MonitorOptions {
  /** Sampling interval when nobody waits. */
  readonly intervalMs: number;
  /** Interval between position polls while reads wait on this replica. */
  readonly waitPollMs: number;
  /** Connection and statement timeout of the monitor's own connection. */
  readonly timeoutMs: number;
  /** Consecutive failures that open the breaker, and how long it stays open before a trial. */
  readonly breakerFailures: number;
  readonly breakerHalfOpenAfterMs: number;
}

const REPLICA_SAMPLE = `select pg_is_in_recovery() as in_recovery,
  pg_last_wal_replay_lsn()::text as replay_lsn,
  pg_last_wal_receive_lsn()::text as receive_lsn,
  (extract(epoch from pg_last_xact_replay_timestamp()) * 1000)::float8 as last_replay_at,
  coalesce((select status = 'streaming' from pg_stat_wal_receiver), false) as streaming,
  (select system_identifier::text from pg_control_system()) as system_id,
  extract(epoch from pg_postmaster_start_time())::text as started_at,
  case when pg_is_in_recovery()
    then coalesce((select received_tli from pg_stat_wal_receiver),
      (select timeline_id from pg_control_checkpoint()))
    -- Not in recovery (promoted, or a candidate node that is the primary): the timeline it
    -- writes, which its control file shows only after the first checkpoint on it.
    else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  end as timeline`;

// While reads wait, only the replay position matters: the cheapest query that answers it.
const REPLICA_POLL = 'select pg_last_wal_replay_lsn()::text as replay_lsn';

const PRIMARY_SAMPLE = `select pg_is_in_recovery() as in_recovery,
  pg_current_wal_insert_lsn()::text as insert_lsn,
  (select system_identifier::text from pg_control_system()) as system_id,
  ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int as timeline,
  current_setting('wal_block_size')::int as wal_block_size,
  extract(epoch from pg_postmaster_start_time())::text as started_at`;

/** One connection of its own to a node, re-opened after a failure. */
class MonitorConnection {
  #client: pg.Client | undefined;
  #opened = 0;
  readonly #config: pg.ClientConfig;

  constructor(config: pg.ClientConfig) {
    this.#config = config;
  }

  /** How many connections have been opened: a new one may have reached another server. */
  get opened(): number {
    return this.#opened;
  }

  async query<R extends pg.QueryResultRow>(sql: string): Promise<R | undefined> {
    if (this.#client === undefined) {
      const client = new pg.Client(this.#config);
      client.on('error', () => this.#drop(client));
      try {
        await client.connect();
      } catch (err) {
        await client.end().catch(() => undefined);
        throw err;
      }
      this.#client = client;
      this.#opened++;
    }
    const client = this.#client;
    try {
      return (await client.query<R>(sql)).rows[0];
    } catch (err) {
      if (isConnectionError(err)) this.#drop(client);
      throw err;
    }
  }

  #drop(client: pg.Client): void {
    if (this.#client === client) this.#client = undefined;
    client.end().catch(() => undefined);
  }

  async close(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
  }
}

function monitorConfig(
  connection: pg.ClientConfig,
  options: MonitorOptions,
  role: string,
): pg.ClientConfig {
  return {
    ...connection,
    connectionTimeoutMillis: options.timeoutMs,
    query_timeout: options.timeoutMs,
    application_name: `replikit-monitor-${role}`,
  };
}

/**
 * Samples one replica on an interval, and much more often while reads wait on it. Every sample
 * goes through the replica's circuit breaker, which routed reads share: a replica that refuses
 * connections or times out is taken out of rotation, and a later sample is the trial that puts it
 * back.
 */
export class ReplicaMonitor {
  readonly name: string;
  readonly breaker: CircuitBreakerPolicy;
  #sample: ReplicaSample | undefined;
  #lastError: string | undefined;
  #lastFailureAt: number | undefined;
  #polls = 0;
  /** The connection the latest full sample came from (see MonitorConnection.opened). */
  #sampledOn = -1;
  readonly #connection: MonitorConnection;
  readonly #options: MonitorOptions;
  readonly #onSample: (monitor: ReplicaMonitor) => void;
  readonly #hasWaiters: () => boolean;
  #wake: AbortController = new AbortController();
  #running: Promise<void> | undefined;
  #closed = false;

  constructor(
    name: string,
    connection: pg.ClientConfig,
    options: MonitorOptions,
    hooks: { onSample: (monitor: ReplicaMonitor) => void; hasWaiters: () => boolean },
  ) {
    this.name = name;
    this.#options = options;
    this.#connection = new MonitorConnection(monitorConfig(connection, options, name));
    this.#onSample = hooks.onSample;
    this.#hasWaiters = hooks.hasWaiters;
    this.breaker = circuitBreaker(handleWhen(isConnectionError), {
      halfOpenAfter: options.breakerHalfOpenAfterMs,
      breaker: new ConsecutiveBreaker(options.breakerFailures),
    });
  }

  /** The latest successful sample. */
  get sample(): ReplicaSample | undefined {
    return this.#sample;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Local time of the latest failed sample, if the latest sample failed. */
  get failingSince(): number | undefined {
    return this.#lastFailureAt;
  }

  /** Whether routed reads may use this replica as far as its breaker is concerned. */
  get closed(): boolean {
    return this.breaker.state === CircuitState.Closed;
  }

  /** How many position queries this monitor has sent (samples and wait polls). */
  get polls(): number {
    return this.#polls;
  }

  /** Starts sampling; resolves after the first sample, successful or not. */
  async start(): Promise<void> {
    await this.#sampleOnce(true);
    this.#running = this.#loop();
  }

  /** Cuts the current pause short: a read has started waiting. */
  wake(): void {
    this.#wake.abort();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#wake.abort();
    await this.#running;
    await this.#connection.close();
  }

  async #loop(): Promise<void> {
    let full = 0;
    while (!this.#closed) {
      const waiting = this.#hasWaiters();
      const pause = waiting ? this.#options.waitPollMs : this.#options.intervalMs;
      if (!waiting || pause > 0) {
        await sleep(pause, undefined, { signal: this.#wake.signal }).catch(() => undefined);
      }
      if (this.#wake.signal.aborted) this.#wake = new AbortController();
      if (this.#closed) break;
      // While reads wait, poll only the position; still take a full sample every interval.
      const now = Date.now();
      const fullDue = now - full >= this.#options.intervalMs;
      if (fullDue) full = now;
      await this.#sampleOnce(fullDue || this.#sample === undefined);
    }
  }

  async #sampleOnce(fullSample: boolean): Promise<void> {
    try {
      this.#polls++;
      // A polled position carries the identity of the last full sample, which is only right on
      // the connection that sample came over: a new one may have reached another server, or
      // this one restarted.
      if (fullSample || this.#connection.opened !== this.#sampledOn || !(await this.#poll()))
        await this.#full();
      this.#lastError = undefined;
      this.#lastFailureAt = undefined;
    } catch (err) {
      this.#lastError = err instanceof Error ? err.message : String(err);
      this.#lastFailureAt ??= Date.now();
    }
    this.#onSample(this);
  }

  async #full(): Promise<void> {
    const row = await this.breaker.execute(() =>
      this.#connection.query<{
        in_recovery: boolean;
        replay_lsn: string | null;
        receive_lsn: string | null;
        last_replay_at: number | null;
        streaming: boolean;
        system_id: string;
        started_at: string;
        timeline: number | null;
      }>(REPLICA_SAMPLE),
    );
    if (row === undefined) throw new Error('the replica sample returned no row');
    this.#sampledOn = this.#connection.opened;
    this.#sample = {
      at: Date.now(),
      inRecovery: row.in_recovery,
      replayLsn: row.replay_lsn === null ? undefined : parseLsn(row.replay_lsn),
      receiveLsn: row.receive_lsn === null ? undefined : parseLsn(row.receive_lsn),
      lastReplayAt: row.last_replay_at ?? undefined,
      streaming: row.streaming,
      systemId: row.system_id,
      startedAt: row.started_at,
      timeline: row.timeline ?? undefined,
    };
  }

  /** Polls the replay position only; false when the answer came over a new connection. */
  async #poll(): Promise<boolean> {
    const row = await this.breaker.execute(() =>
      this.#connection.query<{ replay_lsn: string | null }>(REPLICA_POLL),
    );
    if (this.#connection.opened !== this.#sampledOn) return false;
    const previous = this.#sample;
    if (previous !== undefined && row?.replay_lsn != null) {
      const replayLsn = parseLsn(row.replay_lsn);
      this.#sample = {
        ...previous,
        at: Date.now(),
        replayLsn: replayLsn ?? previous.replayLsn,
      };
    }
    return true;
  }
}

/** Samples the primary: its WAL position (for lag), identity and timeline (for tokens). */
export class PrimaryMonitor {
  #sample: PrimarySample | undefined;
  #inflight: Promise<PrimarySample> | undefined;
  #polls = 0;
  #lastError: string | undefined;
  readonly #connection: MonitorConnection;
  readonly #options: MonitorOptions;
  readonly #onSample: (sample: PrimarySample) => void;
  #running: Promise<void> | undefined;
  readonly #stop = new AbortController();

  constructor(
    connection: pg.ClientConfig,
    options: MonitorOptions,
    onSample: (sample: PrimarySample) => void,
  ) {
    this.#options = options;
    this.#connection = new MonitorConnection(monitorConfig(connection, options, 'primary'));
    this.#onSample = onSample;
  }

  get sample(): PrimarySample | undefined {
    return this.#sample;
  }

  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** Starts sampling; resolves after the first sample, successful or not. */
  async start(): Promise<void> {
    await this.refresh().catch(() => undefined);
    this.#running = this.#loop();
  }

  /** How many samples this monitor has taken. */
  get polls(): number {
    return this.#polls;
  }

  /**
   * Samples now; used when a token claims a position beyond the cached one. Concurrent callers
   * share one query in flight: a thousand reads with fresh tokens cost one round trip, not a
   * thousand queued on this connection.
   */
  refresh(): Promise<PrimarySample> {
    this.#inflight ??= this.#sampleNow().finally(() => {
      this.#inflight = undefined;
    });
    return this.#inflight;
  }

  /**
   * Records a position the primary is known to have reached (read after a commit on another
   * connection), so tokens of this process never need a refresh and lag is measured from it too.
   */
  observe(insertLsn: Lsn, sentAt: number): void {
    const sample = this.#sample;
    if (sample === undefined || insertLsn <= sample.insertLsn) return;
    this.#sample = { ...sample, insertLsn, at: Date.now(), sentAt };
    this.#onSample(this.#sample);
  }

  async #sampleNow(): Promise<PrimarySample> {
    this.#polls++;
    const sentAt = Date.now();
    try {
      const row = await this.#connection.query<{
        in_recovery: boolean;
        insert_lsn: string;
        system_id: string;
        timeline: number;
        wal_block_size: number;
        started_at: string;
      }>(PRIMARY_SAMPLE);
      const insertLsn = row === undefined ? undefined : parseLsn(row.insert_lsn);
      if (row === undefined || insertLsn === undefined) {
        throw new Error('the primary sample returned no position');
      }
      const sample = nextPrimarySample(this.#sample, {
        at: Date.now(),
        sentAt,
        inRecovery: row.in_recovery,
        insertLsn,
        systemId: row.system_id,
        timeline: row.timeline,
        startedAt: row.started_at,
        walBlockSize: row.wal_block_size,
      });
      this.#sample = sample;
      this.#lastError = undefined;
      this.#onSample(sample);
      return sample;
    } catch (err) {
      this.#lastError = err instanceof Error ? err.message : String(err);
      throw err;
    }
  }

  async close(): Promise<void> {
    this.#stop.abort();
    await this.#running;
    await this.#connection.close();
  }

  async #loop(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      await sleep(this.#options.intervalMs, undefined, { signal: this.#stop.signal }).catch(
        () => undefined,
      );
      if (this.#stop.signal.aborted) break;
      await this.refresh().catch(() => undefined);
    }
  }
}
