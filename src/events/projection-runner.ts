import { SpanStatusCode, type Link, type Tracer } from '@opentelemetry/api';
import pg from 'pg';

import { inTransaction, type DatabaseConnection } from '../db/checkout.js';
import { EventStoreError } from './event-store-error.js';
import type { EventStoreLogger, EventStoreObserver } from './event-store-observer.js';
import { comparePositions, START, type GlobalPosition } from './position.js';
import { EVENT_COLUMNS, type EventRow, type RecordedEvent } from './recorded-event.js';
import { EVENTS_CHANNEL, EVENTS_TABLE, PROJECTIONS_CHANNEL, PROJECTIONS_TABLE } from './schema.js';
import { parseTraceparent } from './trace-context.js';
import { errorMessage } from '../errors.js';

/** What a projection's code gets to know about the version it is building. */
export interface ProjectionContext {
  readonly name: string;
  readonly version: number;
  /**
   * The physical table of a read model for this version, `<readModel>_v<version>`. Each version
   * writes its own tables, so a rebuild never disturbs the version being served; readers query
   * the view named `<readModel>`, which points at the active version.
   */
  table(readModel: string): string;
}

/** The connection a projection writes through: the batch's transaction. */
export interface ProjectionClient {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/**
 * An asynchronous projection: a read model built from the log by a runner, batch by batch, each
 * batch's writes committed together with the checkpoint.
 *
 * ```ts
 * const followers: ProjectionDefinition = {
 *   name: 'followers',
 *   readModels: ['follower_counts'],
 *   handles: ['UserFollowed'],
 *   setup: (db, ctx) =>
 *     db.query(`create table ${ctx.table('follower_counts')} (user_id uuid primary key, n int not null)`),
 *   apply: async (events, db, ctx) => {
 *     for (const event of events) {
 *       await db.query(
 *         `insert into ${ctx.table('follower_counts')} values ($1, 1)
 *          on conflict (user_id) do update set n = excluded.n + ${ctx.table('follower_counts')}.n`,
 *         [(event.data as { targetId: string }).targetId],
 *       );
 *     }
 *   },
 * };
 * ```
 */
export interface ProjectionDefinition {
  /** Lower-case letters, digits and `_`; names metrics and locks, keep it stable. */
  readonly name: string;
  /**
   * Read models (lower-case SQL identifiers) this projection writes: version N writes
   * `<name>_vN` (see {@link ProjectionContext.table}), and a view `<name>` points at the active
   * version. Default none (the projection manages its own tables and cannot be rebuilt beside itself).
   */
  readonly readModels?: readonly string[];
  /** Event types to apply; others only move the checkpoint. Default: all. */
  readonly handles?: readonly string[];
  /** Creates a version's tables; runs once per version, in the transaction that registers it. */
  setup?(client: ProjectionClient, context: ProjectionContext): Promise<void>;
  /** Applies a batch, in order, inside the batch's transaction. Must not commit or roll back. */
  apply(
    events: readonly RecordedEvent[],
    client: ProjectionClient,
    context: ProjectionContext,
  ): Promise<void>;
}

/** A projection run inside the append's own transaction: its read model is never behind. */
export interface InlineProjection {
  readonly name: string;
  /** Event types to apply. Default: all. */
  readonly handles?: readonly string[];
  apply(events: readonly RecordedEvent[], client: ProjectionClient): Promise<void>;
}

/** Options of a projection runner. */
export interface ProjectionRunnerOptions {
  /** The version to run. Default: the active one, or 1 for a new projection. */
  readonly version?: number;
  /** Events per batch (one transaction). Default 500. */
  readonly batchSize?: number;
  /** How often an idle runner looks for new events. Default 20 ms. */
  readonly pollIntervalMs?: number;
  /** How often a standby runner tries to take the lock. Default 250 ms. */
  readonly lockRetryMs?: number;
  /** How often the running runner samples its lag for the observer. Default 1000 ms. */
  readonly statusIntervalMs?: number;
  /** Lag counts stop at this many events, to keep the sample cheap. Default 100000. */
  readonly lagCountLimit?: number;
  /** A building version takes over when caught up (`auto`, the default) or only when asked (`manual`). */
  readonly switchOver?: 'auto' | 'manual';
  /** Stops the runner when aborted. */
  readonly signal?: AbortSignal;
  /** Fault injection for tests and demos: called after a batch is applied, before it commits. */
  readonly faults?: {
    readonly beforeCommit?: (batch: readonly RecordedEvent[]) => Promise<void> | void;
  };
}

/** Where a runner is in its life. */
export type ProjectionRunnerState =
  | { readonly state: 'starting' }
  /** Another process holds this version's lock; this one takes over when it goes. */
  | { readonly state: 'standby' }
  | { readonly state: 'running'; readonly status: 'active' | 'building' }
  /** A newer version took over: this one has stopped for good. */
  | { readonly state: 'retired' }
  | { readonly state: 'stopped' }
  | { readonly state: 'failed'; readonly error: string };

/** What a runner needs of its store. */
export interface StoreAccess {
  readonly pool: pg.Pool;
  readonly connection: DatabaseConnection;
  readonly idleInTransactionTimeoutMs: number;
  readonly tracer: Tracer;
  readonly observer?: EventStoreObserver;
  readonly logger?: EventStoreLogger;
  toEvent(row: EventRow): RecordedEvent;
}

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,47}$/;
const MAX_LINKS = 32;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

function positionOf(row: { tx_id: string; position: string }): GlobalPosition {
  return { transactionId: BigInt(row.tx_id), position: BigInt(row.position) };
}

interface CheckpointRow {
  status: 'active' | 'building' | 'retired';
  tx_id: string;
  position: string;
}

/**
 * Runs one version of an asynchronous projection; see `EventStore.startProjection`.
 *
 * Exactly-once effects rest on the checkpoint row, not on the lock: each batch locks the row,
 * reads the events after the checkpoint it finds there, applies them, and moves the checkpoint
 * with a compare-and-set, all in one transaction. A runner that lost its lock without noticing
 * can only waste a batch, never apply an event twice. The session advisory lock only keeps one
 * runner busy per version and lets a standby notice at once when the holder's session ends.
 */
export class ProjectionRunner {
  readonly name: string;
  readonly #access: StoreAccess;
  readonly #definition: ProjectionDefinition;
  readonly #options: ProjectionRunnerOptions;
  readonly #abort = new AbortController();
  readonly #onExit: () => void;
  #version: number | undefined;
  #status: 'active' | 'building' | 'retired' | undefined;
  #state: ProjectionRunnerState = { state: 'starting' };
  #checkpoint: GlobalPosition = START;
  #lastEventAt: Date | undefined;
  #done: Promise<void> = Promise.resolve();
  #wake: (() => void) | undefined;
  #lastStatusAt = 0;
  #activated: { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void };

  /** @internal Created by `EventStore.startProjection`. */
  constructor(
    access: StoreAccess,
    definition: ProjectionDefinition,
    options: ProjectionRunnerOptions,
    onExit: () => void,
  ) {
    if (!IDENTIFIER.test(definition.name)) {
      throw new EventStoreError(
        'PROJECTION_STATE',
        `projection name "${definition.name}" must be lower-case letters, digits and _ (at most 48)`,
      );
    }
    for (const model of definition.readModels ?? []) {
      if (!IDENTIFIER.test(model)) {
        throw new EventStoreError(
          'PROJECTION_STATE',
          `read model "${model}" of ${definition.name} must be a lower-case SQL identifier of at most 48 characters`,
        );
      }
    }
    if (
      options.version !== undefined &&
      !(Number.isInteger(options.version) && options.version >= 1)
    ) {
      throw new EventStoreError(
        'PROJECTION_STATE',
        `projection version must be a whole number ≥ 1`,
      );
    }
    this.name = definition.name;
    this.#access = access;
    this.#definition = definition;
    this.#options = options;
    this.#version = options.version;
    this.#onExit = onExit;
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined);
    this.#activated = { promise, resolve, reject };
    options.signal?.addEventListener('abort', () => void this.stop(), { once: true });
  }

  /** The version this runner runs, once known. */
  get version(): number | undefined {
    return this.#version;
  }

  /** Where the runner is in its life. */
  get state(): ProjectionRunnerState {
    return this.#state;
  }

  /** The checkpoint as of the runner's last batch. */
  get checkpoint(): GlobalPosition {
    return this.#checkpoint;
  }

  /**
   * Resolves when this version is the active one (at once for a version that already is);
   * rejects if the runner stops first.
   */
  get activated(): Promise<void> {
    return this.#activated.promise;
  }

  /** Resolves when the runner has stopped, for whatever reason. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** @internal */
  start(): void {
    this.#done = this.#run();
  }

  /** Stops after the current batch (which commits or rolls back whole) and releases the lock. */
  async stop(): Promise<void> {
    this.#abort.abort();
    this.#wake?.();
    await this.#done;
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    try {
      await this.#register();
      while (!signal.aborted && this.#status !== 'retired') {
        this.#state = { state: 'standby' };
        const lock = await this.#acquireLock(signal);
        if (lock === undefined) break;
        try {
          await this.#work(lock, signal);
        } catch (err) {
          if (signal.aborted) break;
          this.#access.logger?.warn(
            { projection: this.name, version: this.#version, err: errorMessage(err) },
            'projection batch failed; retrying',
          );
          await sleep(Math.max(100, this.#options.lockRetryMs ?? 250), signal);
        } finally {
          await lock.release();
          this.#gone();
        }
      }
      this.#state = this.#status === 'retired' ? { state: 'retired' } : { state: 'stopped' };
    } catch (err) {
      this.#state = { state: 'failed', error: errorMessage(err) };
      this.#access.logger?.warn(
        { projection: this.name, version: this.#version, err: errorMessage(err) },
        'projection runner failed',
      );
    } finally {
      if (this.#status !== 'active') {
        this.#activated.reject(
          new EventStoreError(
            'PROJECTION_STATE',
            `the runner of ${this.name} v${this.#version ?? '?'} stopped before the version became active`,
          ),
        );
      }
      this.#onExit();
    }
  }

  #context(): ProjectionContext {
    const version = this.#version!;
    const name = this.name;
    return { name, version, table: (readModel) => `${readModel}_v${version}` };
  }

  /** Registers the version (creating its tables) if it is new, and learns its status. */
  async #register(): Promise<void> {
    await inTransaction(this.#access.pool, async (client) => {
      // Processes starting together would both find the version missing: serialise them.
      await client.query(`select pg_advisory_xact_lock(hashtextextended($1, 0))`, [
        `replikit_projection_setup:${this.name}`,
      ]);
      const { rows } = await client.query<{ version: number; status: CheckpointRow['status'] }>(
        `select version, status from ${PROJECTIONS_TABLE} where name = $1`,
        [this.name],
      );
      const active = rows.find((row) => row.status === 'active');
      this.#version ??= active?.version ?? Math.max(1, ...rows.map((row) => row.version));
      const mine = rows.find((row) => row.version === this.#version);
      if (mine !== undefined) {
        this.#status = mine.status;
      } else {
        this.#status = active === undefined ? 'active' : 'building';
        await client.query(
          `insert into ${PROJECTIONS_TABLE} (name, version, status, activated_at)
           values ($1, $2, $3, case when $3 = 'active' then now() end)`,
          [this.name, this.#version, this.#status],
        );
        await this.#definition.setup?.(client, this.#context());
        if (this.#status === 'active') await this.#pointViews(client);
        this.#access.logger?.info?.(
          { projection: this.name, version: this.#version, status: this.#status },
          'projection version registered',
        );
      }
    });
    if (this.#status === 'active') this.#activated.resolve();
  }

  /** Points each read model's view at this version's table. */
  async #pointViews(client: ProjectionClient): Promise<void> {
    const context = this.#context();
    for (const model of this.#definition.readModels ?? []) {
      await client.query(
        `drop view if exists ${model}; create view ${model} as select * from ${context.table(model)}`,
      );
    }
  }

  /**
   * Takes this version's session lock on a connection of its own, waiting (as a standby) while
   * another process holds it. The same connection LISTENs for appends, to wake the runner.
   */
  async #acquireLock(
    signal: AbortSignal,
  ): Promise<{ client: pg.Client; lost: () => boolean; release: () => Promise<void> } | undefined> {
    const base =
      typeof this.#access.connection === 'string'
        ? { connectionString: this.#access.connection }
        : this.#access.connection;
    const key = `replikit_projection:${this.name}:${this.#version}`;
    while (!signal.aborted) {
      const client = new pg.Client({
        connectionTimeoutMillis: 5000,
        keepAlive: true,
        application_name: `replikit-projection-${this.name}`,
        ...base,
      });
      let lost = false;
      client.on('error', () => {
        lost = true;
        this.#wake?.();
      });
      client.on('end', () => {
        lost = true;
        this.#wake?.();
      });
      try {
        await client.connect();
        for (;;) {
          const { rows } = await client.query<{ locked: boolean }>(
            'select pg_try_advisory_lock(hashtextextended($1, 0)) as locked',
            [key],
          );
          if (rows[0]?.locked === true) break;
          if (signal.aborted || lost) throw new Error('stopped while waiting for the lock');
          await sleep(this.#options.lockRetryMs ?? 250, signal);
          if (signal.aborted) throw new Error('stopped while waiting for the lock');
        }
        await client.query(`listen ${EVENTS_CHANNEL}`);
        client.on('notification', () => this.#wake?.());
        return {
          client,
          lost: () => lost,
          // Ending the session releases the lock, also when the server is unreachable.
          release: () => client.end().catch(() => undefined),
        };
      } catch (err) {
        await client.end().catch(() => undefined);
        if (signal.aborted) return undefined;
        this.#access.logger?.warn(
          { projection: this.name, version: this.#version, err: errorMessage(err) },
          'projection lock connection failed; retrying',
        );
        await sleep(this.#options.lockRetryMs ?? 250, signal);
      }
    }
    return undefined;
  }

  async #work(lock: { lost: () => boolean }, signal: AbortSignal): Promise<void> {
    const batchSize = this.#options.batchSize ?? 500;
    this.#checkpoint = await this.#readCheckpoint();
    this.#state = { state: 'running', status: this.#status === 'active' ? 'active' : 'building' };
    while (!signal.aborted && !lock.lost()) {
      const read = await this.#batch(batchSize);
      if (this.#status === 'retired') return;
      this.#state = { state: 'running', status: this.#status === 'active' ? 'active' : 'building' };
      await this.#maybeSampleStatus();
      if (this.#retired()) return;
      if (read >= batchSize) continue;
      if (this.#status === 'building' && (this.#options.switchOver ?? 'auto') === 'auto') {
        await this.switchOver();
        continue;
      }
      await this.#idle(signal, lock);
    }
  }

  async #readCheckpoint(): Promise<GlobalPosition> {
    const { rows } = await this.#access.pool.query<CheckpointRow>(
      `select status, tx_id::text as tx_id, position::text as position from ${PROJECTIONS_TABLE}
       where name = $1 and version = $2`,
      [this.name, this.#version],
    );
    const row = rows[0];
    if (row === undefined) {
      throw new EventStoreError(
        'PROJECTION_STATE',
        `projection ${this.name} v${this.#version} is not registered`,
      );
    }
    this.#status = row.status;
    return positionOf(row);
  }

  /**
   * Waits for the next poll, an append's NOTIFY or a stop. Checks cheaply first (no transaction,
   * so an idle runner writes nothing): a batch transaction locks the checkpoint row, which takes
   * a transaction id and writes WAL.
   */
  async #idle(signal: AbortSignal, lock: { lost: () => boolean }): Promise<void> {
    const interval = this.#options.pollIntervalMs ?? 20;
    while (!signal.aborted && !lock.lost()) {
      const { rows } = await this.#access.pool.query<{ ready: boolean }>(
        `select exists (select 1 from ${EVENTS_TABLE}
           where (tx_id, position) > ($1::xid8, $2::bigint)
             and tx_id < pg_snapshot_xmin(pg_current_snapshot())) as ready`,
        [this.#checkpoint.transactionId.toString(), this.#checkpoint.position.toString()],
      );
      if (rows[0]?.ready === true) return;
      await this.#maybeSampleStatus();
      if (this.#status === 'retired') return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, interval);
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
        this.#wake = done;
      });
      this.#wake = undefined;
    }
  }

  /** One batch in one transaction. Returns how many events it read (0: nothing to do). */
  async #batch(batchSize: number): Promise<number> {
    const started = performance.now();
    const context = this.#context();
    const handles = this.#definition.handles;
    return this.#access.tracer.startActiveSpan(
      'replikit.projection.batch',
      {
        attributes: {
          'db.system.name': 'postgresql',
          'replikit.projection.name': this.name,
          'replikit.projection.version': context.version,
        },
      },
      async (span) => {
        let count = 0;
        try {
          count = await inTransaction(this.#access.pool, async (client) => {
            const { rows: state } = await client.query<CheckpointRow>(
              `select status, tx_id::text as tx_id, position::text as position from ${PROJECTIONS_TABLE}
               where name = $1 and version = $2 for update`,
              [this.name, context.version],
            );
            const row = state[0];
            if (row === undefined) {
              throw new EventStoreError(
                'PROJECTION_STATE',
                `projection ${this.name} v${context.version} is not registered`,
              );
            }
            this.#status = row.status;
            if (row.status === 'retired') return 0;
            // The checkpoint as committed, not as this process last saw it: after a takeover
            // (or a lost lock) it is the only one that counts.
            const from = positionOf(row);
            this.#checkpoint = from;
            const { rows } = await client.query<EventRow>(
              `select ${EVENT_COLUMNS} from ${EVENTS_TABLE} e
               where (tx_id, position) > ($1::xid8, $2::bigint)
                 and tx_id < pg_snapshot_xmin(pg_current_snapshot())
               order by e.tx_id, e.position limit $3`,
              [from.transactionId.toString(), from.position.toString(), batchSize],
            );
            if (rows.length === 0) return 0;
            const events = rows.map((r) => this.#access.toEvent(r));
            const last = events.at(-1)!;
            if (span.isRecording()) {
              span.setAttributes({
                'replikit.projection.events': events.length,
                'replikit.projection.from': `${from.transactionId}.${from.position}`,
                'replikit.projection.to': `${last.globalPosition.transactionId}.${last.globalPosition.position}`,
              });
              span.addLinks(linksOf(events));
            }
            const handled =
              handles === undefined ? events : events.filter((e) => handles.includes(e.type));
            if (handled.length > 0) await this.#definition.apply(handled, client, context);
            await this.#options.faults?.beforeCommit?.(events);
            const moved = await client.query(
              `with moved as (
                 update ${PROJECTIONS_TABLE}
                 set tx_id = $3::xid8, position = $4, events_applied = events_applied + $5,
                     last_event_at = $6, updated_at = now()
                 where name = $1 and version = $2 and tx_id = $7::xid8 and position = $8
                 returning 1)
               select pg_notify('${PROJECTIONS_CHANNEL}', $1 || ':' || $2::text) from moved`,
              [
                this.name,
                context.version,
                last.globalPosition.transactionId.toString(),
                last.globalPosition.position.toString(),
                events.length,
                last.recordedAt,
                from.transactionId.toString(),
                from.position.toString(),
              ],
            );
            if (moved.rowCount !== 1) {
              // Unreachable while the row lock above is held; kept as the compare-and-set's teeth.
              throw new EventStoreError(
                'PROJECTION_STATE',
                `the checkpoint of ${this.name} v${context.version} moved under this batch`,
              );
            }
            this.#checkpoint = last.globalPosition;
            this.#lastEventAt = last.recordedAt;
            return events.length;
          });
          if (count > 0) {
            const durationMs = performance.now() - started;
            this.#observe((o) =>
              o.onProjectionBatch?.({
                projection: this.name,
                version: context.version,
                events: count,
                durationMs,
              }),
            );
          }
          return count;
        } catch (err) {
          span.recordException(err as Error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
          throw err;
        } finally {
          span.end();
        }
      },
    );
  }

  /**
   * Makes this building version the active one if it has caught up with the active version:
   * locks the active version's checkpoint (its runner waits), applies here whatever this version
   * still lacks up to that checkpoint, retires the old version and points the views here, all in
   * one transaction. Readers never see a read model behind the one they saw before. Returns
   * whether this version is now active.
   */
  async switchOver(): Promise<boolean> {
    const context = this.#context();
    const batchSize = this.#options.batchSize ?? 500;
    const switched = await inTransaction(this.#access.pool, async (client) => {
      const { rows: activeRows } = await client.query<CheckpointRow & { version: number }>(
        `select version, status, tx_id::text as tx_id, position::text as position from ${PROJECTIONS_TABLE}
         where name = $1 and status = 'active' for update`,
        [this.name],
      );
      const { rows: ownRows } = await client.query<CheckpointRow & { events_applied: string }>(
        `select status, tx_id::text as tx_id, position::text as position from ${PROJECTIONS_TABLE}
         where name = $1 and version = $2 for update`,
        [this.name, context.version],
      );
      const own = ownRows[0];
      if (own === undefined || own.status !== 'building') return own?.status === 'active';
      const old = activeRows[0];
      let checkpoint = positionOf(own);
      let applied = 0;
      let lastAt: Date | undefined;
      if (old !== undefined) {
        const target = positionOf(old);
        // Everything up to the active version's checkpoint is below the horizon already (that
        // version read it from there), so no horizon filter is needed to close the gap.
        while (comparePositions(checkpoint, target) < 0) {
          const { rows } = await client.query<EventRow>(
            `select ${EVENT_COLUMNS} from ${EVENTS_TABLE} e
             where (tx_id, position) > ($1::xid8, $2::bigint)
               and (tx_id, position) <= ($3::xid8, $4::bigint)
             order by e.tx_id, e.position limit $5`,
            [
              checkpoint.transactionId.toString(),
              checkpoint.position.toString(),
              target.transactionId.toString(),
              target.position.toString(),
              batchSize,
            ],
          );
          if (rows.length === 0) break;
          const events = rows.map((r) => this.#access.toEvent(r));
          const handles = this.#definition.handles;
          const handled =
            handles === undefined ? events : events.filter((e) => handles.includes(e.type));
          if (handled.length > 0) await this.#definition.apply(handled, client, context);
          checkpoint = events.at(-1)!.globalPosition;
          lastAt = events.at(-1)!.recordedAt;
          applied += events.length;
        }
        await client.query(
          `update ${PROJECTIONS_TABLE} set status = 'retired', updated_at = now()
           where name = $1 and version = $2`,
          [this.name, old.version],
        );
      }
      await client.query(
        `update ${PROJECTIONS_TABLE}
         set status = 'active', activated_at = now(), updated_at = now(),
             tx_id = $3::xid8, position = $4, events_applied = events_applied + $5,
             last_event_at = coalesce($6, last_event_at)
         where name = $1 and version = $2`,
        [
          this.name,
          context.version,
          checkpoint.transactionId.toString(),
          checkpoint.position.toString(),
          applied,
          lastAt ?? null,
        ],
      );
      await this.#pointViews(client);
      await client.query(`select pg_notify('${PROJECTIONS_CHANNEL}', $1)`, [
        `${this.name}:${context.version}`,
      ]);
      this.#checkpoint = checkpoint;
      if (lastAt !== undefined) this.#lastEventAt = lastAt;
      this.#access.logger?.info?.(
        { projection: this.name, version: context.version, replaced: old?.version, applied },
        'projection version took over',
      );
      return true;
    });
    if (switched) {
      this.#status = 'active';
      this.#activated.resolve();
    }
    return switched;
  }

  async #maybeSampleStatus(): Promise<void> {
    const interval = this.#options.statusIntervalMs ?? 1000;
    const now = performance.now();
    if (now - this.#lastStatusAt < interval) return;
    this.#lastStatusAt = now;
    const { rows } = await this.#access.pool.query<{
      status: CheckpointRow['status'];
      last_event_at: Date | null;
      n: number;
      age: number | null;
    }>(
      `select p.status, p.last_event_at, l.n, l.age
       from ${PROJECTIONS_TABLE} p
       cross join lateral (
         select count(*)::int as n, extract(epoch from now() - min(x.created_at))::float8 as age
         from (select e.created_at from ${EVENTS_TABLE} e
               where (e.tx_id, e.position) > (p.tx_id, p.position)
               order by e.tx_id, e.position limit $3) x) l
       where p.name = $1 and p.version = $2`,
      [this.name, this.#version, this.#options.lagCountLimit ?? 100_000],
    );
    const row = rows[0];
    if (row === undefined) return;
    this.#status = row.status;
    if (row.status === 'active' || row.status === 'building') {
      const sample = {
        projection: this.name,
        version: this.#version!,
        status: row.status,
        lagEvents: row.n,
        lagSeconds: Math.max(0, row.age ?? 0),
        lastProcessedAt: row.last_event_at ?? this.#lastEventAt,
      };
      this.#observe((o) => o.onProjectionStatus?.(sample));
    }
  }

  /** Read through a method: TypeScript would narrow the field across the awaits that change it. */
  #retired(): boolean {
    return this.#status === 'retired';
  }

  #gone(): void {
    const version = this.#version;
    if (version !== undefined) this.#observe((o) => o.onProjectionGone?.(this.name, version));
    this.#lastStatusAt = 0;
  }

  #observe(fn: (observer: EventStoreObserver) => void): void {
    const observer = this.#access.observer;
    if (observer === undefined) return;
    try {
      fn(observer);
    } catch (err) {
      this.#access.logger?.warn({ err: errorMessage(err) }, 'projection observer failed');
    }
  }
}

/** Links from a batch's span to the traces that appended its events (distinct, at most 32). */
function linksOf(events: readonly RecordedEvent[]): Link[] {
  const seen = new Set<string>();
  const links: Link[] = [];
  for (const event of events) {
    const context = parseTraceparent(event.metadata.traceparent);
    if (context === undefined || seen.has(context.spanId)) continue;
    seen.add(context.spanId);
    links.push({
      context,
      attributes: { 'replikit.event.position': event.globalPosition.position.toString() },
    });
    if (links.length >= MAX_LINKS) break;
  }
  return links;
}
