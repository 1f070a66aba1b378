import { context, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import pg from 'pg';

import { inTransaction, type DatabaseConnection } from '../db/checkout.js';
import { GroupCommit } from '../db/group-commit.js';
import { newEventId } from './event-id.js';
import { EventStoreError } from './event-store-error.js';
import type {
  AppendOutcome,
  EventStoreLogger,
  EventStoreObserver,
  HorizonSample,
} from './event-store-observer.js';
import { START, type GlobalPosition } from './position.js';
import {
  ProjectionRunner,
  type InlineProjection,
  type ProjectionDefinition,
  type ProjectionRunnerOptions,
  type StoreAccess,
} from './projection-runner.js';
import { ProjectionWaiter, type ProjectionWaitResult } from './projection-waiter.js';
import {
  EVENT_COLUMNS,
  type EventInput,
  type EventMetadata,
  type EventRow,
  type RecordedEvent,
} from './recorded-event.js';
import { EVENTS_TABLE, PROJECTIONS_TABLE } from './schema.js';
import { traceparentOf } from './trace-context.js';
import { createUpcasterChain, type Upcaster, type UpcasterChain } from './upcaster.js';
import { errorMessage } from '../errors.js';

/**
 * What an append expects of the stream, checked under the stream's lock:
 * - `'any'`: nothing;
 * - `'no_stream'`: the stream has no events yet;
 * - `'stream_exists'`: it has at least one;
 * - a number: exactly that many events (`0` is the same as `'no_stream'`).
 */
export type ExpectedVersion = 'any' | 'no_stream' | 'stream_exists' | number;

/** Options of one append. */
export interface AppendOptions {
  /** Default `'any'`. */
  readonly expectedVersion?: ExpectedVersion;
  /** Stored in every event's metadata. */
  readonly correlationId?: string;
  /** Stored in every event's metadata. */
  readonly causationId?: string;
  /** Checked before the append starts; a statement already sent runs to its end. */
  readonly signal?: AbortSignal;
}

/** What an append did. */
export interface AppendResult {
  readonly streamId: string;
  /** The stream's version after the append: pass it as the next `expectedVersion`. */
  readonly nextExpectedVersion: number;
  /**
   * The last appended event's place in the global order. A read-model query can require a
   * projection to have reached it (read-your-writes on a read model).
   */
  readonly position: GlobalPosition;
  /** Each event's place, in the order given. */
  readonly positions: readonly GlobalPosition[];
  /** True when these events were already stored (same ids): nothing was written this time. */
  readonly duplicate: boolean;
}

/** Options of {@link EventStore.readStream}. */
export interface ReadStreamOptions {
  /** First stream version to return. Default 1. */
  readonly fromVersion?: number;
  /** At most this many events. Default: all. */
  readonly limit?: number;
  readonly signal?: AbortSignal;
}

/** Options of {@link EventStore.readAll}. */
export interface ReadAllOptions {
  /** Return events after this place. Default: from the start. */
  readonly after?: GlobalPosition;
  /** Default 1000. */
  readonly limit?: number;
  readonly signal?: AbortSignal;
}

/** A page of the global log. */
export interface ReadAllResult {
  readonly events: readonly RecordedEvent[];
  /** Pass as `after` to continue: the last event's place, or `after` when the page is empty. */
  readonly next: GlobalPosition;
}

/** The client a {@link EventStore.transaction} callback gets: the store's connection, in one transaction. */
export interface EventTransaction {
  /** Appends in this transaction; inline projections run in it too. Visible when it commits. */
  append(
    streamId: string,
    events: readonly EventInput[],
    options?: AppendOptions,
  ): Promise<AppendResult>;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/** Options for {@link createEventStore}. */
export interface EventStoreOptions {
  /**
   * The primary holding the store (after `migrate(pool, EVENT_STORE_MIGRATIONS)`). The store
   * opens a pool of its own on it, plus one connection per running projection (its lock) and one
   * for read-your-writes waits (LISTEN).
   */
  readonly connection: DatabaseConnection;
  /** Connections in the store's pool. Default 10. */
  readonly poolSize?: number;
  /**
   * `idle_in_transaction_session_timeout` of the store's sessions. A transaction left open holds
   * back every projection (docs/events.md): the server ends one that sits idle this long. Default
   * 60000 ms; 0 turns it off.
   */
  readonly idleInTransactionTimeoutMs?: number;
  /** Projections run inside every append's transaction. */
  readonly inlineProjections?: readonly InlineProjection[];
  /** Applied on every read: readStream, readAll, projections. */
  readonly upcasters?: readonly Upcaster[];
  /**
   * NOTIFY on every append, so runners wake at once instead of at their next poll. Off by
   * default: a notifying commit takes a database-wide lock in PostgreSQL, which serialises
   * concurrent appends' commits.
   */
  readonly notifyOnAppend?: boolean;
  /** How often the xmin age is sampled for {@link EventStoreObserver.onHorizon}. Default 5000 ms; 0 turns it off. */
  readonly horizonSampleIntervalMs?: number;
  readonly observer?: EventStoreObserver;
  readonly tracer?: Tracer;
  readonly logger?: EventStoreLogger;
}

/** Default `idleInTransactionTimeoutMs`. */
const IDLE_IN_TRANSACTION_MS = 60_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function isIdConflict(err: unknown): boolean {
  const e = err as { code?: unknown; constraint?: unknown } | undefined;
  return e?.code === '23505' && e.constraint === `${EVENTS_TABLE}_event_id_key`;
}

/** `pg` pool configuration for a connection, with the store's session settings. */
export function storePoolConfig(
  connection: DatabaseConnection,
  options: { max?: number; idleInTransactionTimeoutMs?: number; applicationName?: string },
): pg.PoolConfig {
  const base = typeof connection === 'string' ? { connectionString: connection } : connection;
  const idle = options.idleInTransactionTimeoutMs ?? IDLE_IN_TRANSACTION_MS;
  return {
    max: options.max ?? 10,
    connectionTimeoutMillis: 5_000,
    application_name: options.applicationName ?? 'replikit-events',
    keepAlive: true,
    ...(idle > 0 ? { idle_in_transaction_session_timeout: idle } : {}),
    ...base,
  };
}

interface AppendRow {
  outcome: 'appended' | 'duplicate' | 'conflict' | 'id_conflict' | 'busy';
  stream_version: string;
  tx_id: string | null;
  positions: string[] | null;
}

/** A standalone append waiting to be written with the others queued meanwhile. */
interface QueuedAppend {
  readonly streamId: string;
  readonly expectedText: string;
  readonly payload: readonly AppendPayload[];
}

/**
 * What became of one queued append: its row, its own error, or (when it is being written on its
 * own, after the batch) the promise of either.
 */
type QueuedResult =
  | { readonly row: AppendRow }
  | { readonly error: unknown }
  | { readonly later: Promise<QueuedResult> };

/** How long a lone standalone append holds up the next batch, at most. */
const LONE_APPEND_WAIT_MS = 20;
/** Standalone appends in one batch, at most. */
const APPEND_BATCH_MAX = 64;
/**
 * Batches of standalone appends being written at once. One: the next batch gathers while the
 * current one commits. Two made smaller batches and measured slower at 16 and 64 writers
 * (`npm run bench:events -- --only append`: about 6,000 against 7,000 appends/s at 16).
 */
const APPEND_BATCHES_IN_FLIGHT = 1;

/**
 * Creates an event store on PostgreSQL (docs/events.md): streams with optimistic concurrency, one
 * global order that readers never skip through, inline and asynchronous projections, upcasting
 * on read, and read-your-writes on read models.
 *
 * ```ts
 * await migrate(pool, EVENT_STORE_MIGRATIONS);
 * const store = createEventStore({ connection: 'postgres://app@db-primary/app' });
 * const { nextExpectedVersion, position } = await store.append(
 *   `user-${id}`,
 *   [{ type: 'UserFollowed', data: { userId: id, targetId } }],
 *   { expectedVersion: 'any' },
 * );
 * ```
 */
export function createEventStore(options: EventStoreOptions): EventStore {
  return new EventStore(options);
}

/** See {@link createEventStore}. */
export class EventStore {
  /** The store's pool on the primary (for queries next to the store's, such as read-model reads on the primary). */
  readonly pool: pg.Pool;
  readonly #options: EventStoreOptions;
  readonly #tracer: Tracer;
  readonly #upcast: UpcasterChain;
  readonly #inline: readonly InlineProjection[];
  readonly #runners = new Set<ProjectionRunner>();
  readonly #access: StoreAccess;
  readonly #appends: GroupCommit<QueuedAppend, QueuedResult>;
  #waiter: ProjectionWaiter | undefined;
  #horizonTimer: NodeJS.Timeout | undefined;
  #lastHorizon: HorizonSample | undefined;
  #closed = false;

  constructor(options: EventStoreOptions) {
    this.#options = options;
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    this.#upcast = createUpcasterChain(options.upcasters ?? []);
    this.#inline = options.inlineProjections ?? [];
    this.#appends = new GroupCommit((items) => this.#flushAppends(items), {
      maxBatch: APPEND_BATCH_MAX,
      maxInFlight: APPEND_BATCHES_IN_FLIGHT,
    });
    this.pool = new pg.Pool(
      storePoolConfig(options.connection, {
        ...(options.poolSize === undefined ? {} : { max: options.poolSize }),
        ...(options.idleInTransactionTimeoutMs === undefined
          ? {}
          : { idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs }),
      }),
    );
    this.pool.on('error', (err) =>
      options.logger?.warn({ err: err.message }, 'idle event store connection lost'),
    );
    this.#access = {
      pool: this.pool,
      connection: options.connection,
      idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs ?? IDLE_IN_TRANSACTION_MS,
      tracer: this.#tracer,
      toEvent: (row) => this.#toEvent(row),
      ...(options.observer === undefined ? {} : { observer: options.observer }),
      ...(options.logger === undefined ? {} : { logger: options.logger }),
    };
    const interval = options.horizonSampleIntervalMs ?? 5000;
    if (interval > 0 && options.observer?.onHorizon !== undefined) {
      this.#horizonTimer = setInterval(() => {
        this.sampleHorizon().catch((err: unknown) =>
          options.logger?.warn({ err: errorMessage(err) }, 'xmin age sample failed'),
        );
      }, interval);
      this.#horizonTimer.unref();
    }
  }

  /** The latest horizon sample, if one was taken. */
  get lastHorizon(): HorizonSample | undefined {
    return this.#lastHorizon;
  }

  /**
   * Appends events to a stream, atomically and in order, after checking `expectedVersion` under
   * the stream's lock. Without inline projections this is one statement; appends made while
   * another is being written go together in the next statement and share its commit, each with
   * its own expectation, outcome and error (a lone append is written at once). The promise
   * resolves once the commit that carried the append is durable.
   *
   * @throws EventStoreError `EVENTSTORE_CONCURRENCY` with `details.expected` and `details.actual`
   *   when the stream is not where the append expected it; nothing is written.
   * @throws EventStoreError `EVENTSTORE_EVENT_ID_CONFLICT` when some ids are stored already, but
   *   not as this same append.
   */
  async append(
    streamId: string,
    events: readonly EventInput[],
    options: AppendOptions = {},
  ): Promise<AppendResult> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    if (this.#inline.length > 0) {
      return this.transaction((tx) => tx.append(streamId, events, options), options);
    }
    return this.#append(this.pool, streamId, events, options, false);
  }

  /**
   * Runs `fn` in one transaction on the store's connection: appends and other statements (an
   * outbox row, a uniqueness table) commit or roll back together. Keep it short: while it is
   * open it holds back every projection.
   */
  async transaction<T>(
    fn: (tx: EventTransaction) => Promise<T>,
    options: { readonly signal?: AbortSignal } = {},
  ): Promise<T> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    return inTransaction(this.pool, (client) =>
      fn({
        append: (streamId, events, appendOptions = {}) =>
          this.#append(client, streamId, events, appendOptions, true),
        query: (sql, params) => client.query(sql, params as unknown[]),
      }),
    );
  }

  /**
   * Reads one stream in version order, upcasted.
   *
   * ```ts
   * const events = await store.readStream(`user-${id}`);
   * const state = events.reduce(evolve, initialState);
   * ```
   */
  async readStream(streamId: string, options: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const { rows } = await this.pool.query<EventRow>(
      `select ${EVENT_COLUMNS} from ${EVENTS_TABLE} e
       where stream_id = $1 and stream_version >= $2
       order by e.stream_version limit $3`,
      [streamId, options.fromVersion ?? 1, options.limit ?? null],
    );
    return rows.map((row) => this.#toEvent(row));
  }

  /**
   * Reads the global log after a place, in `(transactionId, position)` order, and only below the
   * transaction horizon: an event whose transaction may still be followed by an earlier one
   * committing is not returned yet. Reading page after page with `next` never skips an event.
   */
  async readAll(options: ReadAllOptions = {}): Promise<ReadAllResult> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const after = options.after ?? START;
    const { rows } = await this.pool.query<EventRow>(
      `select ${EVENT_COLUMNS} from ${EVENTS_TABLE} e
       where (tx_id, position) > ($1::xid8, $2::bigint)
         and tx_id < pg_snapshot_xmin(pg_current_snapshot())
       order by e.tx_id, e.position limit $3`,
      [after.transactionId.toString(), after.position.toString(), options.limit ?? 1000],
    );
    const events = rows.map((row) => this.#toEvent(row));
    return { events, next: events.at(-1)?.globalPosition ?? after };
  }

  /**
   * The place of the latest committed event, `START` when the log is empty: a read that must
   * reflect everything committed so far waits for a projection to reach it.
   */
  async latestPosition(options: { readonly signal?: AbortSignal } = {}): Promise<GlobalPosition> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const { rows } = await this.pool.query<{ tx_id: string; position: string }>(
      `select e.tx_id::text as tx_id, e.position::text as position from ${EVENTS_TABLE} e
       order by e.tx_id desc, e.position desc limit 1`,
    );
    const row = rows[0];
    return row === undefined
      ? START
      : { transactionId: BigInt(row.tx_id), position: BigInt(row.position) };
  }

  /**
   * Starts a runner for a projection version (by default the active one, else version 1): it
   * takes the version's lock — one runner per version across all processes; the others wait and
   * take over when the holder dies — and applies events in batches, each batch in one
   * transaction with its checkpoint.
   */
  startProjection(
    definition: ProjectionDefinition,
    options: ProjectionRunnerOptions = {},
  ): ProjectionRunner {
    this.#assertOpen();
    const runner = new ProjectionRunner(this.#access, definition, options, () =>
      this.#runners.delete(runner),
    );
    this.#runners.add(runner);
    runner.start();
    return runner;
  }

  /**
   * Rebuilds a projection without downtime: starts a new version (one above the highest) that
   * builds its own tables from the start of the log beside the serving version while writes go
   * on, and takes over (its views replace the old ones, the old version retires) once it has
   * caught up. Returns the new version's runner; `runner.activated` resolves at the switch.
   */
  async rebuildProjection(
    definition: ProjectionDefinition,
    options: Omit<ProjectionRunnerOptions, 'version'> = {},
  ): Promise<ProjectionRunner> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const { rows } = await this.pool.query<{ version: number | null }>(
      `select max(version) as version from ${PROJECTIONS_TABLE} where name = $1`,
      [definition.name],
    );
    const version = (rows[0]?.version ?? 0) + 1;
    return this.startProjection(definition, { ...options, version });
  }

  /**
   * Every version of every projection (or of one), with its status and checkpoint.
   */
  async projections(name?: string): Promise<ProjectionInfo[]> {
    this.#assertOpen();
    const { rows } = await this.pool.query<{
      name: string;
      version: number;
      status: ProjectionInfo['status'];
      tx_id: string;
      position: string;
      events_applied: string;
      last_event_at: Date | null;
    }>(
      `select name, version, status, tx_id::text as tx_id, position::text as position,
              events_applied::text as events_applied, last_event_at
       from ${PROJECTIONS_TABLE} where $1::text is null or name = $1 order by name, version`,
      [name ?? null],
    );
    return rows.map((row) => ({
      name: row.name,
      version: row.version,
      status: row.status,
      checkpoint: { transactionId: BigInt(row.tx_id), position: BigInt(row.position) },
      eventsApplied: Number(row.events_applied),
      lastEventAt: row.last_event_at ?? undefined,
    }));
  }

  /**
   * Waits until the active version of a projection has applied everything up to `target` (an
   * append's `position`, or `'latest'` for everything committed so far). Woken by the runners'
   * NOTIFY, with polling as the fallback; one poll serves every waiter. Never throws on timeout:
   * the result says whether the projection got there.
   *
   * @throws EventStoreError `PROJECTION_POSITION_AHEAD` for a `target` past the last event in the
   *   log, which no append returned: refused at the first poll after the call, never waited on.
   */
  async waitForProjection(
    name: string,
    target: GlobalPosition | 'latest',
    options: { readonly timeoutMs?: number; readonly signal?: AbortSignal } = {},
  ): Promise<ProjectionWaitResult> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const position = target === 'latest' ? await this.latestPosition(options) : target;
    this.#waiter ??= new ProjectionWaiter(this.#access, () => this.latestPosition());
    return this.#waiter.wait(name, position, options.timeoutMs ?? 5000, options.signal);
  }

  /**
   * Samples the age of the oldest transaction holding back the horizon (see {@link HorizonSample})
   * and reports it to the observer. Needs `pg_read_all_stats` (or the same role as the sessions)
   * to see other roles' transactions.
   */
  async sampleHorizon(): Promise<HorizonSample> {
    const { rows } = await this.pool.query<{ age: number | null }>(
      `select extract(epoch from now() - least(
         (select min(xact_start) from pg_stat_activity
           where backend_xid is not null and pid <> pg_backend_pid()),
         (select min(prepared) from pg_prepared_xacts)))::float8 as age`,
    );
    const sample = { xminAgeSeconds: Math.max(0, rows[0]?.age ?? 0) };
    this.#lastHorizon = sample;
    this.#options.observer?.onHorizon?.(sample);
    return sample;
  }

  /** Stops every runner of this store, the waiter and the horizon sampler, and closes the pool. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#horizonTimer !== undefined) clearInterval(this.#horizonTimer);
    await Promise.all([...this.#runners].map((runner) => runner.stop()));
    await this.#waiter?.close();
    await this.pool.end();
  }

  async #append(
    client: pg.Pool | pg.PoolClient,
    streamId: string,
    events: readonly EventInput[],
    options: AppendOptions,
    inTransaction: boolean,
  ): Promise<AppendResult> {
    this.#assertOpen();
    options.signal?.throwIfAborted();
    const expected = options.expectedVersion ?? 'any';
    const expectedText = checkExpected(expected);
    if (typeof streamId !== 'string' || streamId === '') {
      throw new EventStoreError(
        'EVENTSTORE_INVALID_EVENT',
        'a stream id must be a non-empty string',
      );
    }
    const started = performance.now();
    return this.#tracer.startActiveSpan(
      'replikit.eventstore.append',
      {
        attributes: {
          'db.system.name': 'postgresql',
          'db.operation.name': 'append',
          'replikit.stream.id': streamId,
          'replikit.events.count': events.length,
          'replikit.expected_version': String(expected),
        },
      },
      async (span) => {
        let outcome: AppendOutcome = 'error';
        try {
          const traceparent = traceparentOf(context.active());
          const payload = events.map((event, index) =>
            toPayload(event, index, options, traceparent),
          );
          let result: AppendResult;
          if (payload.length === 0) {
            result = await this.#emptyAppend(client, streamId, expectedText, expected);
          } else {
            const row = inTransaction
              ? await this.#callAppend(client, streamId, expectedText, payload, true)
              : await this.#submitAppend({ streamId, expectedText, payload });
            result = this.#interpret(row, streamId, expected);
            if (inTransaction && !result.duplicate && this.#inline.length > 0) {
              const recorded = payload.map((event, index) =>
                this.#toEvent({
                  position: result.positions[index]!.position.toString(),
                  tx_id: result.position.transactionId.toString(),
                  stream_id: streamId,
                  stream_version: String(result.nextExpectedVersion - payload.length + index + 1),
                  event_id: event.id,
                  type: event.type,
                  schema_version: event.schemaVersion,
                  data: event.data,
                  metadata: event.metadata,
                  created_at: new Date(),
                }),
              );
              for (const projection of this.#inline) {
                const handled =
                  projection.handles === undefined
                    ? recorded
                    : recorded.filter((event) => projection.handles!.includes(event.type));
                if (handled.length > 0)
                  await projection.apply(handled, {
                    query: (sql, params) => client.query(sql, params as unknown[]),
                  });
              }
            }
          }
          outcome = result.duplicate ? 'duplicate' : 'appended';
          span.setAttributes({
            'replikit.append.outcome': outcome,
            'replikit.stream.version': result.nextExpectedVersion,
          });
          return result;
        } catch (err) {
          if (err instanceof EventStoreError && err.code === 'EVENTSTORE_CONCURRENCY') {
            outcome = 'conflict';
            span.setAttribute('replikit.append.outcome', outcome);
          } else {
            span.recordException(err as Error);
            span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
          }
          throw err;
        } finally {
          span.end();
          const durationMs = performance.now() - started;
          try {
            this.#options.observer?.onAppend?.({ outcome, events: events.length, durationMs });
          } catch (err) {
            this.#options.logger?.warn({ err: errorMessage(err) }, 'append observer failed');
          }
        }
      },
    );
  }

  async #callAppend(
    client: pg.Pool | pg.PoolClient,
    streamId: string,
    expectedText: string,
    payload: readonly AppendPayload[],
    inTransaction: boolean,
  ): Promise<AppendRow> {
    // A named statement: each connection parses and plans it once, not on every append.
    const query: pg.QueryConfig = {
      name: 'replikit_append',
      text: 'select * from replikit_append($1, $2, $3::jsonb, $4)',
      values: [
        streamId,
        expectedText,
        JSON.stringify(payload),
        this.#options.notifyOnAppend ?? false,
      ],
    };
    try {
      const { rows } = await client.query<AppendRow>(query);
      return rows[0]!;
    } catch (err) {
      // The same ids appended concurrently to another stream: the unique index made this one
      // wait for that one, then fail. Looking again (outside a transaction, where a retry is
      // possible) tells a duplicate from a conflict.
      if (!isIdConflict(err) || inTransaction) {
        if (isIdConflict(err)) throw idConflict(streamId, err);
        throw err;
      }
      const { rows } = await client.query<AppendRow>(query);
      return rows[0]!;
    }
  }

  async #submitAppend(item: QueuedAppend): Promise<AppendRow> {
    let result = await this.#appends.submit(item);
    while ('later' in result) result = await result.later;
    if ('error' in result) throw result.error;
    return result.row;
  }

  /**
   * Writes queued standalone appends in one statement (and so one transaction and one commit) that
   * takes them in stream order and returns each one's outcome. A lone append is one call of
   * `replikit_append`, as cheap as before; should it take longer than {@link LONE_APPEND_WAIT_MS}
   * (waiting for a stream another transaction holds), the next batch goes on without it.
   * When that statement fails (an id stored concurrently by another stream's append, a deadlock
   * with a caller's transaction), nothing of it was committed: each append is then written on its
   * own, so an error belongs to the append that caused it alone.
   */
  async #flushAppends(items: readonly QueuedAppend[]): Promise<readonly QueuedResult[]> {
    if (items.length === 1) {
      const later = this.#settleAppend(items[0]!);
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<QueuedResult>((resolve) => {
        timer = setTimeout(() => resolve({ later }), LONE_APPEND_WAIT_MS);
      });
      try {
        return [await Promise.race([later, waited])];
      } finally {
        clearTimeout(timer);
      }
    }
    let rows: (AppendRow & { ord: number })[];
    try {
      ({ rows } = await this.pool.query<AppendRow & { ord: number }>({
        name: 'replikit_append_batch',
        text: 'select * from replikit_append_batch($1::jsonb, $2)',
        values: [
          JSON.stringify(
            items.map((item) => ({
              stream: item.streamId,
              expected: item.expectedText,
              events: item.payload,
            })),
          ),
          this.#options.notifyOnAppend ?? false,
        ],
      }));
    } catch (err) {
      if (!(err instanceof pg.DatabaseError)) throw err;
      return this.#appendAlone(
        items,
        items.map(() => undefined),
        items.map((_, index) => index),
      );
    }
    const byPlace = new Map(rows.map((row) => [Number(row.ord), row]));
    const results: QueuedResult[] = items.map((_, index) => {
      const row = byPlace.get(index + 1);
      return row === undefined
        ? { error: new Error('a batched append returned no outcome') }
        : { row };
    });
    // Appends to streams another transaction holds: each on its own, waiting for the stream as a
    // lone append would.
    const busy = results.flatMap((result, index) =>
      'row' in result && result.row.outcome === 'busy' ? [index] : [],
    );
    return busy.length === 0 ? results : this.#appendAlone(items, results, busy);
  }

  /**
   * Starts writing `items[indexes]` each on its own, streams at once and one stream's appends in
   * order, and puts the promise of each one's outcome in `results` without waiting: the batch is
   * done, and the next one need not wait for a stream another transaction holds.
   */
  #appendAlone(
    items: readonly QueuedAppend[],
    results: (QueuedResult | undefined)[],
    indexes: readonly number[],
  ): QueuedResult[] {
    const previous = new Map<string, Promise<QueuedResult>>();
    for (const index of indexes) {
      const item = items[index]!;
      const before = previous.get(item.streamId) ?? Promise.resolve(undefined);
      const later = before.then(() => this.#settleAppend(item));
      previous.set(item.streamId, later);
      results[index] = { later };
    }
    return results as QueuedResult[];
  }

  #settleAppend(item: QueuedAppend): Promise<QueuedResult> {
    return this.#callAppend(this.pool, item.streamId, item.expectedText, item.payload, false).then(
      (row) => ({ row }),
      (error: unknown) => ({ error }),
    );
  }

  #interpret(row: AppendRow, streamId: string, expected: ExpectedVersion): AppendResult {
    const version = Number(row.stream_version);
    if (row.outcome === 'conflict') {
      throw new EventStoreError(
        'EVENTSTORE_CONCURRENCY',
        `stream ${streamId} is at version ${version}, but the append expected ${describeExpected(expected)}`,
        { details: { streamId, expected, actual: version } },
      );
    }
    if (row.outcome === 'id_conflict') throw idConflict(streamId);
    const transactionId = BigInt(row.tx_id!);
    const positions = row.positions!.map((p) => ({ transactionId, position: BigInt(p) }));
    return {
      streamId,
      nextExpectedVersion: version,
      position: positions.at(-1)!,
      positions,
      duplicate: row.outcome === 'duplicate',
    };
  }

  /** An empty append writes nothing but still checks the expectation, as a caller would assume. */
  async #emptyAppend(
    client: pg.Pool | pg.PoolClient,
    streamId: string,
    expectedText: string,
    expected: ExpectedVersion,
  ): Promise<AppendResult> {
    const { rows } = await client.query<{ version: string }>(
      'select version::text as version from replikit_streams where stream_id = $1',
      [streamId],
    );
    const version = Number(rows[0]?.version ?? 0);
    const ok =
      expectedText === 'any' ||
      (expectedText === 'no_stream' && version === 0) ||
      (expectedText === 'stream_exists' && version > 0) ||
      expectedText === String(version);
    if (!ok) {
      throw new EventStoreError(
        'EVENTSTORE_CONCURRENCY',
        `stream ${streamId} is at version ${version}, but the append expected ${describeExpected(expected)}`,
        { details: { streamId, expected, actual: version } },
      );
    }
    return {
      streamId,
      nextExpectedVersion: version,
      position: START,
      positions: [],
      duplicate: false,
    };
  }

  #toEvent(row: EventRow): RecordedEvent {
    const metadata = (row.metadata ?? {}) as EventMetadata;
    const upcasted = this.#upcast({
      type: row.type,
      schemaVersion: row.schema_version,
      data: row.data,
      metadata,
    });
    return {
      id: row.event_id,
      streamId: row.stream_id,
      streamVersion: Number(row.stream_version),
      type: upcasted.type,
      schemaVersion: upcasted.schemaVersion,
      storedSchemaVersion: row.schema_version,
      data: upcasted.data,
      metadata,
      recordedAt: row.created_at,
      globalPosition: { transactionId: BigInt(row.tx_id), position: BigInt(row.position) },
    };
  }

  #assertOpen(): void {
    if (this.#closed) throw new EventStoreError('EVENTSTORE_CLOSED', 'the event store is closed');
  }
}

/** A projection version as {@link EventStore.projections} lists it. */
export interface ProjectionInfo {
  readonly name: string;
  readonly version: number;
  readonly status: 'active' | 'building' | 'retired';
  readonly checkpoint: GlobalPosition;
  readonly eventsApplied: number;
  readonly lastEventAt: Date | undefined;
}

interface AppendPayload {
  readonly id: string;
  readonly type: string;
  readonly schemaVersion: number;
  readonly data: unknown;
  readonly metadata: Record<string, unknown>;
}

function toPayload(
  event: EventInput,
  index: number,
  options: AppendOptions,
  traceparent: string | undefined,
): AppendPayload {
  if (typeof event.type !== 'string' || event.type === '') {
    throw new EventStoreError('EVENTSTORE_INVALID_EVENT', `event ${index} has no type`, {
      details: { index },
    });
  }
  const schemaVersion = event.schemaVersion ?? 1;
  if (!Number.isInteger(schemaVersion) || schemaVersion < 1) {
    throw new EventStoreError(
      'EVENTSTORE_INVALID_EVENT',
      `event ${index} (${event.type}) has schema version ${schemaVersion}; versions are whole numbers from 1`,
      { details: { index, type: event.type } },
    );
  }
  const id = event.id ?? newEventId();
  if (!UUID.test(id)) {
    throw new EventStoreError(
      'EVENTSTORE_INVALID_EVENT',
      `event ${index} has id "${id}", not a UUID`,
      {
        details: { index, id },
      },
    );
  }
  return {
    id: id.toLowerCase(),
    type: event.type,
    schemaVersion,
    data: event.data ?? null,
    metadata: {
      ...event.metadata,
      ...(options.correlationId === undefined ? {} : { correlationId: options.correlationId }),
      ...(options.causationId === undefined ? {} : { causationId: options.causationId }),
      ...(traceparent === undefined ? {} : { traceparent }),
    },
  };
}

function checkExpected(expected: ExpectedVersion): string {
  if (expected === 'any' || expected === 'no_stream' || expected === 'stream_exists')
    return expected;
  if (typeof expected === 'number' && Number.isSafeInteger(expected) && expected >= 0) {
    return String(expected);
  }
  throw new EventStoreError(
    'EVENTSTORE_INVALID_EVENT',
    `expectedVersion must be 'any', 'no_stream', 'stream_exists' or a whole number ≥ 0, got ${String(expected)}`,
    { details: { expected: String(expected) } },
  );
}

function describeExpected(expected: ExpectedVersion): string {
  switch (expected) {
    case 'no_stream':
      return 'no stream';
    case 'stream_exists':
      return 'an existing stream';
    case 'any':
      return 'any version';
    default:
      return `version ${expected}`;
  }
}

function idConflict(streamId: string, cause?: unknown): EventStoreError {
  return new EventStoreError(
    'EVENTSTORE_EVENT_ID_CONFLICT',
    `some events appended to ${streamId} have ids already stored by a different append`,
    { ...(cause === undefined ? {} : { cause }), details: { streamId } },
  );
}
