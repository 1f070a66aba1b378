import { trace, type Tracer } from '@opentelemetry/api';
import type { BulkheadPolicy } from 'cockatiel';
import type pg from 'pg';

import type { Cluster, ReadResult } from '../routing/cluster.js';
import type { Consistency } from '../routing/consistency.js';
import { mergeTokens, type ConsistencyToken } from '../routing/consistency-token.js';
import { normalizeInsertLsn, parseLsn } from '../routing/lsn.js';
import { currentSession, recordToken } from '../routing/session.js';
import { waitInSlot } from '../routing/wait-slots.js';
import { EventStoreError } from './event-store-error.js';
import type { EventStore } from './event-store.js';
import { formatPosition, type GlobalPosition } from './position.js';

/** Options for {@link createReadModel}. */
export interface ReadModelOptions {
  /** The store whose projection builds the read model. Its connection must be the cluster's primary. */
  readonly store: EventStore;
  /** Routes the read-model queries. */
  readonly cluster: Cluster;
  /** The projection whose active version the queries read. */
  readonly projection: string;
  /** How long a query waits for the projection. Default 2000 ms. */
  readonly waitTimeoutMs?: number;
  /**
   * When the projection does not get there in time: read anyway from the primary and say
   * `stale: true` (the default), or throw `PROJECTION_WAIT_TIMEOUT`.
   */
  readonly onTimeout?: 'stale' | 'error';
  /**
   * Bounds how many queries may wait for the projection at once (cockatiel's `bulkhead(n)`): one
   * that would wait beyond it is refused at once with `PROJECTION_WAIT_BUSY`. The cluster's
   * `waitBulkhead` may be the same one. Default: unbounded.
   */
  readonly waitBulkhead?: BulkheadPolicy;
  readonly tracer?: Tracer;
}

/** Options of one read-model query. */
export interface ReadModelQueryOptions {
  /**
   * The read must reflect the events up to here: an append's `position` (read-your-writes on the
   * read model), or `'latest'` for everything committed so far. Default: no requirement, the
   * read is as fresh as its consistency makes it.
   */
  readonly after?: GlobalPosition | 'latest';
  /**
   * Routing of the read itself. Default: the session's, else the cluster's. With `after`, a level
   * weaker than read-your-writes becomes read-your-writes: the replica must have replayed the
   * projection's batch.
   */
  readonly consistency?: Consistency;
  readonly token?: ConsistencyToken;
  readonly waitTimeoutMs?: number;
  readonly onTimeout?: 'stale' | 'error';
  readonly signal?: AbortSignal;
}

/** A read-model query's rows, where they came from, and whether they meet the requirement. */
export interface ReadModelResult<R> extends ReadResult<R> {
  /**
   * True when `after` was given and the projection did not reach it within the bound: the rows
   * come from the primary but may not show the events asked for.
   */
  readonly stale: boolean;
  /** The projection's checkpoint the read is known to reflect at least (with `after`). */
  readonly checkpoint: GlobalPosition | undefined;
}

/**
 * Queries a projection's read model with read-your-writes: a caller that appended events passes
 * the append's position, the query waits (bounded) for the projection to apply them, then reads
 * from any replica that has replayed the projection's batch — the projection's position and the
 * LSN token together. Without a position the query is an ordinary routed read.
 *
 * ```ts
 * const profiles = createReadModel({ store, cluster, projection: 'profiles' });
 * const { position } = await store.append(`user-${id}`, [followed]);
 * const { rows, stale } = await profiles.query(
 *   'select follower_count from user_profiles where user_id = $1', [targetId], { after: position });
 * ```
 */
export function createReadModel(options: ReadModelOptions): ReadModel {
  return new ReadModel(options);
}

/** See {@link createReadModel}. */
export class ReadModel {
  readonly #options: ReadModelOptions;
  readonly #tracer: Tracer;
  #blockSize: Promise<number> | undefined;

  constructor(options: ReadModelOptions) {
    this.#options = options;
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
  }

  /**
   * Runs `sql` against the read model; see {@link createReadModel}.
   *
   * @throws EventStoreError `PROJECTION_WAIT_TIMEOUT` when the projection is late and
   *   `onTimeout` is `error`, with the target, the checkpoint reached and the time waited;
   *   `PROJECTION_POSITION_AHEAD` when `after` is past the last event in the log.
   */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: readonly unknown[] = [],
    options: ReadModelQueryOptions = {},
  ): Promise<ReadModelResult<R>> {
    const { cluster, store, projection } = this.#options;
    // The session's signal (a request's budget, its client gone) ends the wait, as in the cluster.
    const signal = options.signal ?? currentSession()?.signal;
    const routing = {
      ...(options.token === undefined ? {} : { token: options.token }),
      ...(signal === undefined ? {} : { signal }),
    };
    if (options.after === undefined) {
      const result = await cluster.read<R>(sql, params, {
        ...routing,
        ...(options.consistency === undefined ? {} : { consistency: options.consistency }),
      });
      return { ...result, stale: false, checkpoint: undefined };
    }

    const timeoutMs = options.waitTimeoutMs ?? this.#options.waitTimeoutMs ?? 2000;
    const target = options.after;
    const waited = await this.#tracer.startActiveSpan(
      'replikit.projection.wait',
      {
        attributes: {
          'replikit.projection.name': projection,
          'replikit.projection.target': target === 'latest' ? 'latest' : formatPosition(target),
          'replikit.wait.timeout_ms': timeoutMs,
        },
      },
      async (span) => {
        try {
          const result = await waitInSlot(
            this.#options.waitBulkhead,
            () =>
              store.waitForProjection(projection, target, {
                timeoutMs,
                ...(signal === undefined ? {} : { signal }),
              }),
            (cause) =>
              new EventStoreError(
                'PROJECTION_WAIT_BUSY',
                `too many reads are already waiting for projection ${projection}; try again shortly`,
                { cause },
              ),
          );
          span.setAttribute('replikit.wait.outcome', result.reached ? 'reached' : 'timeout');
          return result;
        } finally {
          span.end();
        }
      },
    );

    if (!waited.reached) {
      if ((options.onTimeout ?? this.#options.onTimeout ?? 'stale') === 'error') {
        throw new EventStoreError(
          'PROJECTION_WAIT_TIMEOUT',
          `projection ${projection} did not reach ${target === 'latest' ? 'the latest event' : formatPosition(target)} within ${timeoutMs} ms`,
          {
            details: {
              projection,
              target: target === 'latest' ? 'latest' : formatPosition(target),
              checkpoint:
                waited.checkpoint === undefined ? undefined : formatPosition(waited.checkpoint),
              waitedMs: Math.round(waited.waitedMs),
            },
          },
        );
      }
      trace.getActiveSpan()?.addEvent('replikit.projection.stale', {
        'replikit.projection.name': projection,
      });
      const result = await cluster.read<R>(sql, params, {
        ...routing,
        consistency: { level: 'strong' },
      });
      return { ...result, stale: true, checkpoint: waited.checkpoint };
    }

    const token = await this.#tokenAt(waited.walLsn);
    if (token !== undefined) recordToken(token);
    const requested = options.consistency ?? currentSession()?.consistency;
    const consistency: Consistency =
      requested !== undefined &&
      (requested.level === 'strong' ||
        requested.level === 'monotonic' ||
        requested.level === 'read-your-writes')
        ? requested
        : { level: 'read-your-writes' };
    const result = await cluster.read<R>(sql, params, {
      ...routing,
      consistency: token === undefined ? { level: 'strong' } : consistency,
      ...(token === undefined ? {} : { token: mergeTokens(options.token, token)! }),
    });
    return { ...result, stale: false, checkpoint: waited.checkpoint };
  }

  /**
   * A consistency token for everything committed on the store's primary so far, recorded in the
   * current session (under `replikit/express`, the response's `X-Consistency-Token` and cookie).
   * Call it once a write such as an append has resolved: the position is read after that COMMIT
   * returned, so it is at or past the commit record, and a read with read-your-writes that carries
   * the token is served by a node that has the write. Appends return a projection `position`, not
   * a token: this is how a client that only holds tokens asks for its own appends.
   *
   * ```ts
   * const { position } = await store.append(`user-${id}`, [renamed]);
   * const token = await profiles.tokenAfterWrite();
   * ```
   */
  async tokenAfterWrite(): Promise<ConsistencyToken | undefined> {
    const { rows } = await this.#options.store.pool.query<{ lsn: string }>(
      'select pg_current_wal_insert_lsn()::text as lsn',
    );
    const token = await this.#tokenAt(parseLsn(rows[0]?.lsn ?? ''));
    if (token !== undefined) recordToken(token);
    return token;
  }

  /** A token for `lsn` on the cluster's primary; `undefined` when its identity is not known yet. */
  async #tokenAt(lsn: bigint | undefined): Promise<ConsistencyToken | undefined> {
    if (lsn === undefined) return undefined;
    const { cluster, store } = this.#options;
    let primary = cluster.primaryStatus();
    if (primary === undefined) {
      await cluster.ready();
      primary = cluster.primaryStatus();
    }
    if (primary === undefined) return undefined;
    this.#blockSize ??= store.pool
      .query<{ size: number }>(`select current_setting('wal_block_size')::int as size`)
      .then(({ rows }) => rows[0]?.size ?? 8192);
    const blockSize = await this.#blockSize;
    return {
      systemId: primary.systemId,
      timeline: primary.timeline,
      written: normalizeInsertLsn(lsn, blockSize),
      seen: 0n,
      writtenAt: Date.now(),
    };
  }
}
