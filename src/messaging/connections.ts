import pg from 'pg';

import { checkout, type DatabaseConnection } from '../db/checkout.js';
import { errorMessage, isTopic } from './message.js';

/** A logger with the two levels the messaging code writes at. */
export interface MessagingLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  error?(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
}

/** A pool given by the caller (kept open on close) or opened from a connection (closed on close). */
export interface OwnedPool {
  readonly pool: pg.Pool;
  close(): Promise<void>;
}

/** Opens a pool for `database`, or adopts the pool given. */
export function openPool(
  database: DatabaseConnection | pg.Pool,
  applicationName: string,
  logger: MessagingLogger | undefined,
  max = 5,
): OwnedPool {
  if (database instanceof pg.Pool) return { pool: database, close: () => Promise.resolve() };
  const base = typeof database === 'string' ? { connectionString: database } : database;
  const pool = new pg.Pool({
    max,
    connectionTimeoutMillis: 5000,
    application_name: applicationName,
    keepAlive: true,
    ...base,
  });
  pool.on('error', (err) => logger?.warn({ err: err.message }, 'idle connection lost'));
  let closed: Promise<void> | undefined;
  return {
    pool,
    close: () => (closed ??= pool.end()),
  };
}

/**
 * Keeps one connection LISTENing on `channel` and calls `onNotify` for each notification, and
 * once after every (re)connection, since notifications sent while disconnected are lost. A lost
 * connection is re-opened after `retryMs`; callers keep polling meanwhile, so a missed wake-up
 * only costs latency.
 */
export class Listener {
  readonly #pool: pg.Pool;
  readonly #channel: string;
  readonly #onNotify: () => void;
  readonly #logger: MessagingLogger | undefined;
  readonly #retryMs: number;
  #release: ((broken?: boolean) => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: {
    pool: pg.Pool;
    channel: string;
    onNotify: () => void;
    logger?: MessagingLogger | undefined;
    retryMs?: number;
  }) {
    this.#pool = options.pool;
    this.#channel = options.channel;
    this.#onNotify = options.onNotify;
    this.#logger = options.logger;
    this.#retryMs = options.retryMs ?? 1000;
  }

  /** Connects and listens; a failure is logged and retried, never thrown. */
  async start(): Promise<void> {
    if (this.#closed) return;
    let checked: Awaited<ReturnType<typeof checkout>> | undefined;
    try {
      checked = await checkout(this.#pool);
      const { client, release } = checked;
      let gone = false;
      const lost = (err?: Error): void => {
        if (gone) return;
        gone = true;
        client.off('notification', notify);
        client.off('error', lost);
        client.off('end', lost);
        release(true);
        if (this.#release === release) this.#release = undefined;
        if (this.#closed) return;
        this.#logger?.warn(
          { channel: this.#channel, err: err?.message ?? 'connection ended' },
          'notification listener lost its connection; polling until it is back',
        );
        this.#schedule();
      };
      const notify = (): void => this.#onNotify();
      client.on('notification', notify);
      client.on('error', lost);
      client.on('end', lost);
      this.#release = release;
      await client.query(`listen ${this.#channel}`);
      if (this.#closed) {
        release(true);
        return;
      }
      this.#onNotify();
    } catch (err) {
      checked?.release(true);
      if (this.#closed) return;
      this.#logger?.warn(
        { channel: this.#channel, err: errorMessage(err) },
        'notification listener could not connect; polling until it can',
      );
      this.#schedule();
    }
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.start(), this.#retryMs);
    this.#timer.unref();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    // Dropping the connection ends the LISTEN; a pooled client would keep it for the next user.
    this.#release?.(true);
    this.#release = undefined;
  }
}

/** Whether `name` is a valid group or outbox name: it ends up in lock keys, NATS names and labels. */
export function isName(name: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(name);
}

/** Whether `topics` is a non-empty list of valid topics. */
export function isTopicList(topics: readonly string[]): boolean {
  return topics.length > 0 && topics.every(isTopic);
}
