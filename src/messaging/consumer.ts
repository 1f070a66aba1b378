import { SpanKind, SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { ExponentialBackoff, type IBackoffFactory } from 'cockatiel';
import type pg from 'pg';

import { checkout, commitTransaction, type DatabaseConnection } from '../db/checkout.js';
import { migrate } from '../db/migrate.js';
import { newSession, withSession } from '../routing/session.js';
import {
  isName,
  isTopicList,
  openPool,
  type MessagingLogger,
  type OwnedPool,
} from './connections.js';
import {
  errorMessage,
  extractTraceContext,
  tokenFromHeaders,
  type ReceivedMessage,
} from './message.js';
import { MessagingError } from './messaging-error.js';
import { INBOX_TABLE, inboxMigrations } from './schema.js';
import type { Delivery, DeliveryOutcome, Subscription, Transport } from './transport.js';

/** The handler of a consumer: runs inside the consumer database transaction `tx`, which also records the message in the inbox. */
export type MessageHandler<P = unknown> = (
  message: ReceivedMessage<P>,
  tx: pg.PoolClient,
  signal: AbortSignal,
) => Promise<void>;

/** A message a consumer handled (its transaction committed). */
export interface HandledEvent {
  readonly group: string;
  readonly topic: string;
  readonly attempt: number;
  readonly durationMs: number;
}

/** A delivery the inbox recognised as already handled (or parked): nothing was committed. */
export interface DuplicateEvent {
  readonly group: string;
  readonly topic: string;
  readonly messageId: string;
}

/** A handler failure that will be retried after `delayMs`. */
export interface RetryEvent {
  readonly group: string;
  readonly topic: string;
  readonly messageId: string;
  readonly attempt: number;
  readonly delayMs: number;
  readonly error: MessagingError;
}

/** A message parked in the dead-letter state after its last allowed attempt. */
export interface DeadLetterEvent {
  readonly group: string;
  readonly topic: string;
  readonly key: string;
  readonly messageId: string;
  readonly attempts: number;
  readonly error: MessagingError;
}

/** Hooks through which a consumer reports what it does (`createOutboxMetrics` makes metrics of them). */
export interface ConsumerObserver {
  onHandled?(event: HandledEvent): void;
  onDuplicate?(event: DuplicateEvent): void;
  onRetry?(event: RetryEvent): void;
  onDeadLetter?(event: DeadLetterEvent): void;
}

/** Options for {@link createConsumer}. */
export interface ConsumerOptions<P = unknown> {
  /** The consumer's own database: the inbox and the handler's transaction. */
  readonly database: DatabaseConnection | pg.Pool;
  readonly transport: Transport;
  /** The consumer group; also the inbox's consumer name. Letters, digits, `_`, `-`. */
  readonly group: string;
  readonly topics: readonly string[];
  readonly handler: MessageHandler<P>;
  /** Attempts before a message is parked as a dead letter. Default 10. */
  readonly maxAttempts?: number;
  /**
   * Delay before each retry: attempt n waits the n-th duration of this cockatiel backoff. The
   * transport keeps the delay durably (a row's `available_at`, a JetStream `nak` delay), never in
   * memory. Default exponential from 100 ms to 30 s.
   */
  readonly backoff?: IBackoffFactory<unknown>;
  /** Run {@link inboxMigrations} on start. Default true. */
  readonly migrate?: boolean;
  /** Closes the consumer when aborted. */
  readonly signal?: AbortSignal;
  readonly observer?: ConsumerObserver;
  readonly logger?: MessagingLogger;
  readonly tracer?: Tracer;
}

/** A message parked in the dead-letter state, as {@link Consumer.deadLetters} lists it. */
export interface DeadLetter {
  readonly messageId: string;
  readonly topic: string;
  readonly key: string;
  readonly attempts: number;
  readonly error: string;
  readonly payload: unknown;
  readonly headers: Readonly<Record<string, string>>;
  readonly parkedAt: Date;
}

/**
 * Creates a consumer: takes a group's messages from the transport and runs `handler` for each in
 * one transaction of the consumer's database, together with an insert into the inbox keyed by
 * (group, message id). A message delivered again finds its inbox row and is skipped, committing
 * nothing: at-least-once delivery becomes exactly-once effects, for effects written through `tx`.
 *
 * ```ts
 * const consumer = createConsumer({
 *   database: paymentsPool,
 *   transport,
 *   group: 'payments',
 *   topics: ['orders.placed'],
 *   handler: async (message, tx) => {
 *     // Reads through the router see the producer's write: the handler runs in a consistency
 *     // session holding the token that came with the message.
 *     const order = await cluster.read('select * from orders where id = $1', [message.key]);
 *     await tx.query('insert into charges (order_id, amount) values ($1, $2)', [message.key, order.rows[0].amount]);
 *   },
 * });
 * await consumer.start();
 * ```
 *
 * The handler runs in a span whose parent is the producer's trace context (from the message
 * headers), so the choreographed flow is one trace. A handler that throws rolls back, and the
 * message is delivered again after a backoff, holding back the messages of its key; after
 * `maxAttempts` it is parked (an inbox row with status `dead`, the error and the payload), the
 * observer's `onDeadLetter` and the logger's `error` are told, and the key moves on.
 */
export function createConsumer<P = unknown>(options: ConsumerOptions<P>): Consumer<P> {
  return new Consumer(options);
}

/** See {@link createConsumer}. */
export class Consumer<P = unknown> {
  readonly group: string;
  readonly #options: ConsumerOptions<P>;
  readonly #owned: OwnedPool;
  readonly #tracer: Tracer;
  readonly #backoff: IBackoffFactory<unknown>;
  #subscription: Subscription | undefined;
  #closed = false;
  readonly #onAbort = (): void => void this.close();

  constructor(options: ConsumerOptions<P>) {
    if (!isName(options.group)) {
      throw new RangeError(`group "${options.group}" must be 1-64 letters, digits, _ or -`);
    }
    if (!isTopicList(options.topics)) {
      throw new RangeError('topics must be a non-empty list of valid topic names');
    }
    this.group = options.group;
    this.#options = options;
    this.#owned = openPool(
      options.database,
      `replikit-consumer-${options.group}`,
      options.logger,
      10,
    );
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    this.#backoff =
      options.backoff ?? new ExponentialBackoff({ initialDelay: 100, maxDelay: 30_000 });
  }

  /** Creates the inbox if needed and subscribes. */
  async start(): Promise<void> {
    if (this.#closed) throw new MessagingError('MESSAGING_CLOSED', 'the consumer has been closed');
    if (this.#subscription !== undefined) return;
    this.#options.signal?.throwIfAborted();
    this.#options.signal?.addEventListener('abort', this.#onAbort, { once: true });
    if (this.#options.migrate !== false) {
      await migrate(this.#owned.pool, inboxMigrations, { signal: this.#options.signal });
    }
    this.#subscription = await this.#options.transport.subscribe({
      group: this.group,
      topics: this.#options.topics,
      handle: (delivery, signal) => this.#handle(delivery, signal),
    });
  }

  /** Messages of this group parked in the dead-letter state, oldest first. */
  async deadLetters(options: { limit?: number; signal?: AbortSignal } = {}): Promise<DeadLetter[]> {
    options.signal?.throwIfAborted();
    const { rows } = await this.#owned.pool.query<{
      message_id: string;
      topic: string;
      key: string;
      attempts: number;
      error: string | null;
      payload: unknown;
      headers: Record<string, string> | null;
      processed_at: Date;
    }>(
      `select message_id::text, topic, key, attempts, error, payload, headers, processed_at
         from ${INBOX_TABLE} where consumer = $1 and status = 'dead'
        order by processed_at limit $2`,
      [this.group, options.limit ?? 100],
    );
    return rows.map((row) => ({
      messageId: row.message_id,
      topic: row.topic,
      key: row.key,
      attempts: row.attempts,
      error: row.error ?? '',
      payload: row.payload,
      headers: row.headers ?? {},
      parkedAt: row.processed_at,
    }));
  }

  async #handle(delivery: Delivery, signal: AbortSignal): Promise<DeliveryOutcome> {
    const { message, attempt } = delivery;
    const token = tokenFromHeaders(message.headers);
    const received: ReceivedMessage<P> = {
      ...message,
      payload: message.payload as P,
      attempt,
      token,
    };
    return this.#tracer.startActiveSpan(
      'replikit.message.process',
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'messaging.system': this.#options.transport.kind,
          'messaging.operation.type': 'process',
          'messaging.destination.name': message.topic,
          'messaging.consumer.group.name': this.group,
          'messaging.message.id': message.id,
          'replikit.message.attempt': attempt,
        },
      },
      extractTraceContext(message.headers),
      async (span) => {
        const started = performance.now();
        try {
          const outcome = await this.#attempt(received, signal);
          if (outcome === 'duplicate') {
            span.setAttribute('replikit.message.duplicate', true);
            this.#report('onDuplicate', {
              group: this.group,
              topic: message.topic,
              messageId: message.id,
            });
          } else {
            this.#report('onHandled', {
              group: this.group,
              topic: message.topic,
              attempt,
              durationMs: performance.now() - started,
            });
          }
          return { action: 'ack' } as const;
        } catch (cause) {
          const error = new MessagingError(
            'MESSAGING_HANDLER_FAILED',
            `handling message ${message.id} (${message.topic}) failed on attempt ${attempt}: ${errorMessage(cause)}`,
            {
              cause,
              details: { group: this.group, topic: message.topic, messageId: message.id, attempt },
            },
          );
          span.recordException(error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
          return this.#failed(received, error);
        } finally {
          span.end();
        }
      },
    );
  }

  /** The inbox insert and the handler, in one transaction. */
  async #attempt(
    message: ReceivedMessage<P>,
    signal: AbortSignal,
  ): Promise<'handled' | 'duplicate'> {
    const { client, release } = await checkout(this.#owned.pool);
    let broken = false;
    try {
      await client.query('begin');
      // A concurrent delivery of the same message waits here on the primary key until the first
      // commits (then skips) or rolls back (then proceeds): never both.
      const inserted = await client.query(
        `insert into ${INBOX_TABLE} (consumer, message_id, topic, key, status, attempts)
         values ($1, $2, $3, $4, 'handled', $5) on conflict do nothing`,
        [this.group, message.id, message.topic, message.key, message.attempt],
      );
      if (inserted.rowCount === 0) {
        await client.query('rollback');
        return 'duplicate';
      }
      await withSession(newSession({ token: message.token }), () =>
        this.#options.handler(message, client, signal),
      );
      // A handler that caught a failed statement aborted the transaction, inbox row included:
      // the checked COMMIT makes that a failed attempt, retried, not a message handled and lost.
      await commitTransaction(client);
      return 'handled';
    } catch (err) {
      await client.query('rollback').catch(() => {
        broken = true;
      });
      throw err;
    } finally {
      release(broken);
    }
  }

  /** Retry later, or park the message after its last attempt. */
  async #failed(message: ReceivedMessage<P>, error: MessagingError): Promise<DeliveryOutcome> {
    const maxAttempts = this.#options.maxAttempts ?? 10;
    const base = { group: this.group, topic: message.topic, messageId: message.id };
    if (message.attempt < maxAttempts) {
      const delayMs = this.#delay(message.attempt);
      this.#options.logger?.warn(
        { ...base, attempt: message.attempt, delayMs, err: error.message },
        'message handler failed; the message will be delivered again',
      );
      this.#report('onRetry', { ...base, attempt: message.attempt, delayMs, error });
      return { action: 'retry', delayMs };
    }
    try {
      await this.#owned.pool.query(
        `insert into ${INBOX_TABLE}
           (consumer, message_id, topic, key, status, attempts, payload, headers, error)
         values ($1, $2, $3, $4, 'dead', $5, $6, $7, $8) on conflict do nothing`,
        [
          this.group,
          message.id,
          message.topic,
          message.key,
          message.attempt,
          JSON.stringify(message.payload),
          JSON.stringify(message.headers),
          error.message,
        ],
      );
    } catch (err) {
      // Not parked: keep it in the transport rather than lose it.
      this.#options.logger?.warn(
        { ...base, err: errorMessage(err) },
        'could not park a message as a dead letter; it will be delivered again',
      );
      return { action: 'retry', delayMs: this.#delay(message.attempt) };
    }
    const dead = new MessagingError(
      'MESSAGING_DEAD_LETTER',
      `message ${message.id} (${message.topic}) was parked as a dead letter after ${message.attempt} attempts: ${error.message}`,
      { cause: error, details: { ...base, key: message.key, attempts: message.attempt } },
    );
    const log = this.#options.logger;
    (log?.error ?? log?.warn)?.call(
      log,
      { ...base, attempts: message.attempt, err: error.message },
      dead.message,
    );
    this.#report('onDeadLetter', {
      ...base,
      key: message.key,
      attempts: message.attempt,
      error: dead,
    });
    return { action: 'ack' };
  }

  #delay(attempt: number): number {
    let backoff = this.#backoff.next(undefined);
    for (let i = 1; i < attempt; i++) backoff = backoff.next(undefined);
    return backoff.duration;
  }

  #report<K extends keyof ConsumerObserver>(
    hook: K,
    event: Parameters<NonNullable<ConsumerObserver[K]>>[0],
  ): void {
    try {
      (this.#options.observer?.[hook] as ((e: typeof event) => void) | undefined)?.(event);
    } catch (err) {
      this.#options.logger?.warn({ err: errorMessage(err) }, 'consumer observer failed');
    }
  }

  /** Stops taking messages, waits for those in hand, and closes the pool it opened. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#options.signal?.removeEventListener('abort', this.#onAbort);
    await this.#subscription?.close();
    await this.#owned.close();
  }
}
