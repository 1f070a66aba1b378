import { SpanKind, SpanStatusCode, trace, type Link, type Tracer } from '@opentelemetry/api';
import type pg from 'pg';

import { checkout, commitTransaction, type DatabaseConnection } from '../db/checkout.js';
import { migrate } from '../db/migrate.js';
import { normalizeInsertLsn, parseLsn } from '../routing/lsn.js';
import { isName, Listener, openPool, type MessagingLogger, type OwnedPool } from './connections.js';
import {
  errorMessage,
  extractTraceContext,
  normalizeHeaders,
  withToken,
  type OutgoingMessage,
} from './message.js';
import { MessagingError } from './messaging-error.js';
import { OUTBOX_CHANNEL, OUTBOX_TABLE, outboxMigrations } from './schema.js';
import type { Transport } from './transport.js';

/** A batch the relay published (and removed from the outbox). */
export interface PublishedEvent {
  readonly outbox: string;
  readonly count: number;
  readonly durationMs: number;
}

/** A batch the relay could not publish; it stays in the outbox and is tried again. */
export interface PublishFailedEvent {
  readonly outbox: string;
  readonly count: number;
  readonly error: MessagingError;
}

/** Hooks through which the relay reports what it does (`createOutboxMetrics` makes metrics of them). */
export interface RelayObserver {
  onPublished?(event: PublishedEvent): void;
  onPublishFailed?(event: PublishFailedEvent): void;
}

/** The outbox backlog, as of the relay's latest sample. */
export interface RelayStats {
  readonly outbox: string;
  /** Messages written but not yet published. */
  readonly pending: number;
  /** Age of the oldest of them, 0 when there is none. */
  readonly oldestPendingAgeSeconds: number;
  /** When the sample was taken (ms since the epoch); 0 before the first. */
  readonly sampledAt: number;
}

/** Options for {@link createRelay}. */
export interface RelayOptions {
  /** The producer's database, holding the outbox. */
  readonly database: DatabaseConnection | pg.Pool;
  readonly transport: Transport;
  /** Names this outbox in metrics and logs (a bounded label). Default `default`. */
  readonly name?: string;
  /** Messages taken per transaction. Default 100. */
  readonly batchSize?: number;
  /** Polling fallback when no notification arrives, and the pause after a failed publish. Default 1000 ms. */
  readonly pollIntervalMs?: number;
  /** Minimum interval between two backlog samples for {@link Relay.stats}. Default 1000 ms. */
  readonly statsIntervalMs?: number;
  /** Run {@link outboxMigrations} on start. Default true. */
  readonly migrate?: boolean;
  /** Closes the relay when aborted. */
  readonly signal?: AbortSignal;
  readonly observer?: RelayObserver;
  readonly logger?: MessagingLogger;
  readonly tracer?: Tracer;
}

/**
 * Key of the transaction-level advisory lock a relay holds while it publishes a batch: one per
 * database, since there is one outbox table per database.
 */
const RELAY_LOCK = "hashtextextended('replikit_outbox_relay', 0)";

/** Position and identity of the primary, read after the batch's rows were read. */
const POSITION = `select pg_current_wal_insert_lsn()::text as lsn,
  (select system_identifier::text from pg_control_system()) as system_id,
  ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int as timeline,
  current_setting('wal_block_size')::int as wal_block_size`;

interface OutboxRow {
  position: string;
  id: string;
  topic: string;
  key: string;
  payload: unknown;
  headers: Record<string, unknown>;
  created_ms: number;
}

/**
 * Creates the relay that moves messages from the outbox to a transport.
 *
 * ```ts
 * const relay = createRelay({ database: pool, transport, name: 'orders' });
 * await relay.start();
 * // ... on shutdown
 * await relay.close();
 * ```
 *
 * How it keeps its promises:
 * - **Nothing skipped.** It keeps no "last published position": each batch selects the rows still
 *   in the outbox, in `position` order, and a published row is deleted in the same transaction
 *   that selected it. A row with a lower position whose transaction commits after higher ones
 *   were published (the commit-order gap) is simply in a later batch. Deleting rather than
 *   marking keeps the table the size of the backlog, so the batch query and {@link Relay.stats}
 *   stay cheap without a pruning job; the transport holds the published history.
 * - **Per-key order.** One batch at a time per database (below), taken in position order and
 *   published with each key's messages in that order (the transport contract); a batch's rows are
 *   gone before the next batch is read, so a key's messages leave in position order.
 * - **Several relays.** Each batch runs in a transaction that first takes a transaction-level
 *   advisory lock with `pg_try_advisory_xact_lock`; a relay that does not get it leaves the batch
 *   to the one that did. The lock is released only when the rows are deleted and committed, so
 *   two relays never publish the same row in the normal case, and never interleave one key's
 *   messages. Extra relays are for availability, not throughput: batching is what makes the
 *   relay fast, and the transport is usually the limit.
 * - **Restarts, crashes.** A relay that dies or loses its connection mid-batch has its transaction
 *   rolled back by the server, which also frees the lock; the rows are still there and the next
 *   batch (of any relay) publishes them again, in order. What the transport had already stored is
 *   a duplicate, dropped by JetStream's `Nats-Msg-Id` window or the consumer's inbox: at least
 *   once, never lost, never reordered within a key.
 * - **Read your producer's writes.** After reading a batch it reads the primary's WAL insert
 *   position: every row read committed before, so the position is at or past each row's commit.
 *   It merges a consistency token at that position into each message's headers, so a consumer
 *   reading through the router sees the business change that wrote the message.
 *
 * Woken by the outbox's NOTIFY; polls every `pollIntervalMs` as well, since a notification can
 * be lost (listener reconnecting, a relay started after the commit).
 */
export function createRelay(options: RelayOptions): Relay {
  return new Relay(options);
}

/** See {@link createRelay}. */
export class Relay {
  readonly name: string;
  readonly #options: RelayOptions;
  readonly #owned: OwnedPool;
  readonly #tracer: Tracer;
  readonly #listener: Listener;
  #poller: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #started = false;
  #closed = false;
  #stats: RelayStats;
  #sampling: Promise<void> | undefined;
  readonly #onAbort = (): void => void this.close();

  constructor(options: RelayOptions) {
    this.name = options.name ?? 'default';
    if (!isName(this.name)) {
      throw new RangeError(`outbox name "${this.name}" must be 1-64 letters, digits, _ or -`);
    }
    this.#options = options;
    this.#owned = openPool(options.database, `replikit-relay-${this.name}`, options.logger, 3);
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    this.#listener = new Listener({
      pool: this.#owned.pool,
      channel: OUTBOX_CHANNEL,
      onNotify: () => this.#wake(),
      logger: options.logger,
    });
    this.#stats = { outbox: this.name, pending: 0, oldestPendingAgeSeconds: 0, sampledAt: 0 };
  }

  /** Creates the outbox table if needed, starts listening and polling, and publishes the backlog. */
  async start(): Promise<void> {
    if (this.#closed) throw new MessagingError('MESSAGING_CLOSED', 'the relay has been closed');
    if (this.#started) return;
    this.#options.signal?.throwIfAborted();
    this.#started = true;
    this.#options.signal?.addEventListener('abort', this.#onAbort, { once: true });
    if (this.#options.migrate !== false) {
      await migrate(this.#owned.pool, outboxMigrations, { signal: this.#options.signal });
    }
    await this.#listener.start();
    this.#poller = setInterval(() => this.#wake(), this.#options.pollIntervalMs ?? 1000);
    this.#poller.unref();
    this.#wake();
  }

  /**
   * The backlog as of the latest sample, taken after publishing at most every `statsIntervalMs`:
   * reading it costs no query. The age keeps growing between samples while messages are pending.
   */
  stats(): RelayStats {
    const stats = this.#stats;
    if (stats.pending === 0 || stats.sampledAt === 0) return stats;
    return {
      ...stats,
      oldestPendingAgeSeconds:
        stats.oldestPendingAgeSeconds + Math.max(0, Date.now() - stats.sampledAt) / 1000,
    };
  }

  /** Publishes what is pending now, and resolves when the outbox was found empty (or a batch failed). */
  async flush(): Promise<void> {
    this.#wake();
    while (this.#running !== undefined) await this.#running;
  }

  #wake(): void {
    if (this.#closed || !this.#started) return;
    if (this.#running !== undefined) {
      this.#again = true;
      return;
    }
    this.#running = this.#drain().finally(() => {
      this.#running = undefined;
      if (this.#again) {
        this.#again = false;
        this.#wake();
      }
    });
  }

  async #drain(): Promise<void> {
    const batchSize = this.#options.batchSize ?? 100;
    for (;;) {
      if (this.#closed) break;
      this.#again = false;
      let published: number;
      try {
        published = await this.#batch(batchSize);
      } catch (err) {
        if (!this.#closed) {
          this.#options.logger?.warn(
            { outbox: this.name, err: errorMessage(err) },
            'outbox relay batch failed; retrying at the next poll',
          );
        }
        break;
      }
      if (published < batchSize && !this.#again) break;
    }
    await this.#sample();
  }

  /** One batch: lock, read, publish, delete, commit. Returns how many messages it published. */
  async #batch(limit: number): Promise<number> {
    const { client, release } = await checkout(this.#owned.pool);
    let broken = false;
    try {
      await client.query('begin');
      const { rows: lock } = await client.query<{ locked: boolean }>(
        `select pg_try_advisory_xact_lock(${RELAY_LOCK}) as locked`,
      );
      if (lock[0]?.locked !== true) {
        // Another relay is publishing; it will see what we would have.
        await client.query('rollback');
        return 0;
      }
      const { rows } = await client.query<OutboxRow>(
        // Ordered by the bigint column: an output column of the same name (text) would win.
        `select o.position::text as position, o.id::text as id, o.topic, o.key, o.payload,
                o.headers, (extract(epoch from o.created_at) * 1000)::float8 as created_ms
           from ${OUTBOX_TABLE} o order by o.position limit $1`,
        [limit],
      );
      if (rows.length === 0) {
        await commitTransaction(client);
        return 0;
      }
      const messages = await this.#withTokens(client, rows);
      await this.#publish(messages, rows);
      await client.query(`delete from ${OUTBOX_TABLE} where position = any($1::bigint[])`, [
        rows.map((row) => row.position),
      ]);
      await commitTransaction(client);
      return rows.length;
    } catch (err) {
      broken = true;
      await client.query('rollback').catch(() => undefined);
      throw err;
    } finally {
      release(broken);
    }
  }

  /** The rows as messages, each carrying a consistency token at or past its commit. */
  async #withTokens(client: pg.PoolClient, rows: readonly OutboxRow[]): Promise<OutgoingMessage[]> {
    const { rows: found } = await client.query<{
      lsn: string;
      system_id: string;
      timeline: number;
      wal_block_size: number;
    }>(POSITION);
    const at = found[0];
    const lsn = at === undefined ? undefined : parseLsn(at.lsn);
    return rows.map((row) => {
      const headers = normalizeHeaders(row.headers);
      return {
        id: row.id,
        topic: row.topic,
        key: row.key,
        payload: row.payload,
        headers:
          at === undefined || lsn === undefined
            ? headers
            : withToken(headers, {
                systemId: at.system_id,
                timeline: at.timeline,
                written: normalizeInsertLsn(lsn, at.wal_block_size),
                seen: 0n,
                writtenAt: Math.round(row.created_ms),
              }),
      };
    });
  }

  async #publish(messages: OutgoingMessage[], rows: readonly OutboxRow[]): Promise<void> {
    const links: Link[] = [];
    for (const message of messages) {
      const context = trace.getSpanContext(extractTraceContext(message.headers));
      if (context !== undefined && links.length < 128) links.push({ context });
    }
    const span = this.#tracer.startSpan('replikit.outbox.publish', {
      kind: SpanKind.PRODUCER,
      links,
      attributes: {
        'messaging.system': this.#options.transport.kind,
        'messaging.operation.type': 'send',
        'messaging.batch.message_count': messages.length,
        'replikit.outbox': this.name,
      },
    });
    const started = performance.now();
    try {
      await this.#options.transport.publish(messages, this.#options.signal);
      this.#report('onPublished', {
        outbox: this.name,
        count: messages.length,
        durationMs: performance.now() - started,
      });
    } catch (cause) {
      const error =
        cause instanceof MessagingError
          ? cause
          : new MessagingError(
              'MESSAGING_PUBLISH_FAILED',
              `publishing ${messages.length} outbox messages failed: ${errorMessage(cause)}`,
              { cause, details: { outbox: this.name, count: messages.length } },
            );
      span.recordException(error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
      this.#report('onPublishFailed', { outbox: this.name, count: rows.length, error });
      throw error;
    } finally {
      span.end();
    }
  }

  #report<K extends keyof RelayObserver>(
    hook: K,
    event: Parameters<NonNullable<RelayObserver[K]>>[0],
  ): void {
    try {
      (this.#options.observer?.[hook] as ((e: typeof event) => void) | undefined)?.(event);
    } catch (err) {
      this.#options.logger?.warn({ err: errorMessage(err) }, 'outbox relay observer failed');
    }
  }

  /** Refreshes the backlog sample, at most every `statsIntervalMs`; a failure keeps the old one. */
  async #sample(force = false): Promise<void> {
    const interval = this.#options.statsIntervalMs ?? 1000;
    if (!force && Date.now() - this.#stats.sampledAt < interval) return;
    this.#sampling ??= (async () => {
      try {
        const { rows } = await this.#owned.pool.query<{ pending: number; age: number }>(
          `select count(*)::int as pending,
                  coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as age
             from ${OUTBOX_TABLE}`,
        );
        this.#stats = {
          outbox: this.name,
          pending: rows[0]?.pending ?? 0,
          oldestPendingAgeSeconds: Math.max(0, rows[0]?.age ?? 0),
          sampledAt: Date.now(),
        };
      } catch (err) {
        if (!this.#closed) {
          this.#options.logger?.warn(
            { outbox: this.name, err: errorMessage(err) },
            'could not sample the outbox backlog',
          );
        }
      } finally {
        this.#sampling = undefined;
      }
    })();
    await this.#sampling;
  }

  /** Takes a fresh backlog sample now (tests and health checks); {@link Relay.stats} then returns it. */
  async refreshStats(): Promise<RelayStats> {
    await this.#sample(true);
    return this.stats();
  }

  /** Stops listening and polling, waits for the batch in hand, and closes the pool it opened. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#options.signal?.removeEventListener('abort', this.#onAbort);
    clearInterval(this.#poller);
    this.#listener.close();
    await this.#running?.catch(() => undefined);
    await this.#sampling;
    await this.#owned.close();
  }
}
