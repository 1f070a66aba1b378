import type pg from 'pg';

import { checkout, commitTransaction, type DatabaseConnection } from '../db/checkout.js';
import { migrate } from '../db/migrate.js';
import { errorMessage, normalizeHeaders, type OutgoingMessage } from './message.js';
import { MessagingError } from './messaging-error.js';
import {
  QUEUE_CHANNEL,
  QUEUE_TABLE,
  SUBSCRIPTIONS_TABLE,
  postgresTransportMigrations,
} from './schema.js';
import { isName, Listener, openPool, type MessagingLogger, type OwnedPool } from './connections.js';
import type {
  Delivery,
  DeliveryOutcome,
  SubscribeOptions,
  Subscription,
  Transport,
} from './transport.js';

/** Options for {@link createPostgresTransport}. */
export interface PostgresTransportOptions {
  /** The broker database: any database every producer's relay and every consumer can reach. */
  readonly database: DatabaseConnection | pg.Pool;
  /** Polling fallback when no notification arrives. Default 1000 ms. */
  readonly pollIntervalMs?: number;
  /** Keys a subscription takes at a time (their head messages are handled concurrently). Default 32. */
  readonly batchSize?: number;
  /**
   * How long a process may hold a batch before the server ends its session and the batch becomes
   * available to the group's other processes (`idle_in_transaction_session_timeout`). Longer than
   * the slowest handler. Default 60 000 ms.
   */
  readonly leaseTimeoutMs?: number;
  /** Run {@link postgresTransportMigrations} on first use. Default true. */
  readonly migrate?: boolean;
  readonly logger?: MessagingLogger;
}

/** Delay before a delivery whose handling threw (rather than answered) is tried again. */
const FAILED_HANDLE_DELAY_MS = 1000;

interface QueueRow {
  seq: string;
  message_id: string;
  topic: string;
  key: string;
  payload: unknown;
  headers: Record<string, unknown>;
  attempts: number;
}

/**
 * The embedded transport: PostgreSQL itself is the broker, no other server needed.
 *
 * Design:
 * - **Fan-out at publish.** A group subscribes by recording (group, topic) rows. `publish` copies
 *   each message into a queue row per subscribed group, in one statement and one transaction with
 *   a `NOTIFY`, so a group receives every message published after it first subscribed. Messages
 *   of a topic nobody subscribes to go nowhere, as in any publish–subscribe system.
 * - **The queue is the state.** A group's pending messages are its queue rows; acknowledging deletes
 *   the row. Nothing reads "after position N", so a row whose insert commits late is still found:
 *   the commit-order gap (DESIGN.md §5) cannot skip a message.
 * - **Per-key order with many processes.** A process claims, in one transaction, the *head* of each
 *   key (its lowest `seq` still queued for the group) with `FOR UPDATE SKIP LOCKED`, handles the
 *   heads concurrently (they are of different keys), deletes the handled rows and commits. A
 *   head locked by another process is skipped, and the row behind it is not a head, so no process
 *   can take a key's second message while its first is in hand or waiting to be retried. Rows of
 *   one key are inserted in publish order by one relay transaction at a time, so `seq` order is
 *   publish order.
 * - **Leases are row locks.** A process that dies loses its session, the server rolls back its
 *   transaction, and the rows are claimable again: at-least-once, and the inbox makes the effect
 *   exactly once. A hung process is cut off by `idle_in_transaction_session_timeout`.
 * - **Retries block their key.** A retry keeps the row, counts the attempt and sets `available_at`
 *   in the future; until then the key's head is not available, and the keys behind it wait.
 *
 * Attempts are counted when a delivery is answered: a process that crashes while handling a
 * message does not count an attempt.
 *
 * ```ts
 * const transport = createPostgresTransport({ database: 'postgres://app@db/messages' });
 * const relay = createRelay({ database: ordersPool, transport });
 * ```
 */
export function createPostgresTransport(options: PostgresTransportOptions): Transport {
  return new PostgresTransport(options);
}

class PostgresTransport implements Transport {
  readonly kind = 'postgres';
  readonly #options: PostgresTransportOptions;
  readonly #owned: OwnedPool;
  readonly #subscriptions = new Set<PostgresSubscription>();
  #ready: Promise<void> | undefined;
  #closed = false;

  constructor(options: PostgresTransportOptions) {
    this.#options = options;
    this.#owned = openPool(options.database, 'replikit-messaging', options.logger, 10);
  }

  #ensureSchema(): Promise<void> {
    if (this.#options.migrate === false) return Promise.resolve();
    this.#ready ??= migrate(this.#owned.pool, postgresTransportMigrations).then(
      () => undefined,
      (err: unknown) => {
        this.#ready = undefined;
        throw err;
      },
    );
    return this.#ready;
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    this.#assertOpen();
    signal?.throwIfAborted();
    if (messages.length === 0) return;
    await this.#ensureSchema();
    try {
      // One statement: every group's copies in one transaction, inserted in batch order so that
      // `seq` (and so delivery) follows it per key; the NOTIFY is sent when it commits.
      await this.#owned.pool.query(
        `with inserted as (
           insert into ${QUEUE_TABLE} (group_name, message_id, topic, key, payload, headers)
           select s.group_name, m.id, m.topic, m.key, m.payload, m.headers
             from unnest($1::uuid[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::text[]::jsonb[])
                  with ordinality as m(id, topic, key, payload, headers, ord)
             join ${SUBSCRIPTIONS_TABLE} s on s.topic = m.topic
            order by m.ord, s.group_name
           returning 1
         )
         select pg_notify('${QUEUE_CHANNEL}', '') from (select count(*) from inserted) as done`,
        [
          messages.map((m) => m.id),
          messages.map((m) => m.topic),
          messages.map((m) => m.key),
          messages.map((m) => JSON.stringify(m.payload)),
          messages.map((m) => JSON.stringify(m.headers)),
        ],
      );
    } catch (cause) {
      throw new MessagingError(
        'MESSAGING_PUBLISH_FAILED',
        `publishing ${messages.length} messages to PostgreSQL failed: ${errorMessage(cause)}`,
        { cause, details: { count: messages.length } },
      );
    }
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.#assertOpen();
    if (!isName(options.group)) {
      throw new MessagingError(
        'MESSAGING_SUBSCRIBE_FAILED',
        `group "${options.group}" must be 1-64 letters, digits, _ or -`,
      );
    }
    await this.#ensureSchema();
    try {
      await this.#owned.pool.query(
        `insert into ${SUBSCRIPTIONS_TABLE} (group_name, topic)
         select $1, unnest($2::text[]) on conflict do nothing`,
        [options.group, [...options.topics]],
      );
    } catch (cause) {
      throw new MessagingError(
        'MESSAGING_SUBSCRIBE_FAILED',
        `could not subscribe group ${options.group}: ${errorMessage(cause)}`,
        { cause, details: { group: options.group } },
      );
    }
    const subscription = new PostgresSubscription(this.#owned.pool, this.#options, options, () =>
      this.#subscriptions.delete(subscription),
    );
    this.#subscriptions.add(subscription);
    await subscription.start();
    return subscription;
  }

  #assertOpen(): void {
    if (this.#closed) throw new MessagingError('MESSAGING_CLOSED', 'the transport has been closed');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([...this.#subscriptions].map((s) => s.close()));
    await this.#owned.close();
  }
}

class PostgresSubscription implements Subscription {
  readonly #pool: pg.Pool;
  readonly #transport: PostgresTransportOptions;
  readonly #options: SubscribeOptions;
  readonly #onClose: () => void;
  readonly #listener: Listener;
  readonly #abort = new AbortController();
  #poller: NodeJS.Timeout | undefined;
  #wakeTimers = new Set<NodeJS.Timeout>();
  #running: Promise<void> | undefined;
  #again = false;

  constructor(
    pool: pg.Pool,
    transport: PostgresTransportOptions,
    options: SubscribeOptions,
    onClose: () => void,
  ) {
    this.#pool = pool;
    this.#transport = transport;
    this.#options = options;
    this.#onClose = onClose;
    this.#listener = new Listener({
      pool,
      channel: QUEUE_CHANNEL,
      onNotify: () => this.#wake(),
      logger: transport.logger,
    });
    options.signal?.addEventListener('abort', () => void this.close(), { once: true });
  }

  async start(): Promise<void> {
    await this.#listener.start();
    this.#poller = setInterval(() => this.#wake(), this.#transport.pollIntervalMs ?? 1000);
    this.#poller.unref();
    this.#wake();
  }

  /** Runs a drain, or asks the running one to go round once more: wake-ups are never lost. */
  #wake(): void {
    if (this.#abort.signal.aborted) return;
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
    const batchSize = this.#transport.batchSize ?? 32;
    for (;;) {
      if (this.#abort.signal.aborted) return;
      this.#again = false;
      let claimed: number;
      try {
        claimed = await this.#round(batchSize);
      } catch (err) {
        if (!this.#abort.signal.aborted) {
          this.#transport.logger?.warn(
            { group: this.#options.group, err: errorMessage(err) },
            'could not take messages from the PostgreSQL queue; retrying at the next poll',
          );
        }
        return;
      }
      if (claimed < batchSize && !this.#again) return;
    }
  }

  /** Claims the available heads of up to `limit` keys, handles them, and settles them. */
  async #round(limit: number): Promise<number> {
    const { client, release } = await checkout(this.#pool);
    let broken = false;
    try {
      const leaseMs = Math.max(1, Math.floor(this.#transport.leaseTimeoutMs ?? 60_000));
      await client.query(`begin; set local idle_in_transaction_session_timeout = ${leaseMs}`);
      // The subquery finds each key's head among all queued rows of the group, including rows
      // another process holds or that wait for a retry: such a head is skipped (locked) or not yet
      // available, and the key's later rows are not heads, so they wait behind it.
      const { rows } = await client.query<QueueRow>(
        `select q.seq::text as seq, q.message_id::text as message_id, q.topic, q.key, q.payload,
                q.headers, q.attempts
           from ${QUEUE_TABLE} q
          where q.seq in (select distinct on (key) seq from ${QUEUE_TABLE}
                           where group_name = $1 order by key, seq)
            and q.available_at <= now()
          order by q.seq
          limit $2
          for update skip locked`,
        [this.#options.group, limit],
      );
      if (rows.length === 0) {
        await commitTransaction(client);
        return 0;
      }
      const outcomes = await Promise.all(rows.map((row) => this.#handle(row)));
      const done: string[] = [];
      const retries: { seq: string; delayMs: number }[] = [];
      outcomes.forEach((outcome, index) => {
        const seq = rows[index]!.seq;
        if (outcome.action === 'ack') done.push(seq);
        else retries.push({ seq, delayMs: outcome.delayMs });
      });
      if (done.length > 0)
        await client.query(`delete from ${QUEUE_TABLE} where seq = any($1::bigint[])`, [done]);
      if (retries.length > 0) {
        await client.query(
          `update ${QUEUE_TABLE} q
              set attempts = q.attempts + 1,
                  available_at = now() + r.delay_ms * interval '1 millisecond'
             from unnest($1::bigint[], $2::float8[]) as r(seq, delay_ms)
            where q.seq = r.seq`,
          [retries.map((r) => r.seq), retries.map((r) => r.delayMs)],
        );
      }
      await commitTransaction(client);
      for (const { delayMs } of retries) this.#wakeAfter(delayMs);
      return rows.length;
    } catch (err) {
      broken = true;
      await client.query('rollback').catch(() => undefined);
      throw err;
    } finally {
      release(broken);
    }
  }

  async #handle(row: QueueRow): Promise<DeliveryOutcome> {
    const delivery: Delivery = {
      attempt: row.attempts + 1,
      message: {
        id: row.message_id,
        topic: row.topic,
        key: row.key,
        payload: row.payload,
        headers: normalizeHeaders(row.headers),
      },
    };
    try {
      return await this.#options.handle(delivery, this.#abort.signal);
    } catch (err) {
      this.#transport.logger?.warn(
        { group: this.#options.group, messageId: row.message_id, err: errorMessage(err) },
        'handling a delivery failed; it will be delivered again',
      );
      return { action: 'retry', delayMs: FAILED_HANDLE_DELAY_MS };
    }
  }

  #wakeAfter(delayMs: number): void {
    const timer = setTimeout(() => {
      this.#wakeTimers.delete(timer);
      this.#wake();
    }, delayMs + 5);
    timer.unref();
    this.#wakeTimers.add(timer);
  }

  async close(): Promise<void> {
    if (this.#abort.signal.aborted) {
      await this.#running;
      return;
    }
    this.#abort.abort();
    clearInterval(this.#poller);
    for (const timer of this.#wakeTimers) clearTimeout(timer);
    this.#listener.close();
    this.#onClose();
    await this.#running;
  }
}
