import pg from 'pg';

import { parseLsn, type Lsn } from '../routing/lsn.js';
import { EventStoreError } from './event-store-error.js';
import { comparePositions, formatPosition, type GlobalPosition } from './position.js';
import type { StoreAccess } from './projection-runner.js';
import { PROJECTIONS_CHANNEL, PROJECTIONS_TABLE } from './schema.js';

/** What a wait for a projection found. */
export interface ProjectionWaitResult {
  /** Whether the active version reached the target within the bound. */
  readonly reached: boolean;
  /** The active version, as last seen (`undefined` when the projection has none). */
  readonly version: number | undefined;
  /** Its checkpoint as last seen. */
  readonly checkpoint: GlobalPosition | undefined;
  /**
   * The primary's WAL insert position, read in the same statement that saw `checkpoint`
   * committed, so at or after that commit's record: a replica that has replayed it shows the
   * read model at least as of `checkpoint` (docs/events.md). `undefined` when not reached.
   */
  readonly walLsn: Lsn | undefined;
  readonly waitedMs: number;
}

interface Waiter {
  readonly name: string;
  readonly target: GlobalPosition;
  /** Polls started before this one may predate the target's append: only later ones judge it. */
  readonly since: number;
  /** Known to be within the log (the log only grows): never asked again. */
  inLog: boolean;
  readonly finish: (found: Found | undefined) => void;
  readonly refuse: (err: Error) => void;
}

interface Found {
  readonly version: number;
  readonly checkpoint: GlobalPosition;
  readonly walLsn: Lsn | undefined;
}

/** Poll interval while anyone waits and notifications are not arriving. */
const POLL_MS = 100;
/** Pause before reconnecting a listener that failed. */
const RECONNECT_MS = 1000;

/**
 * Waits for projections to reach positions. One LISTEN connection wakes it when a runner commits
 * a batch; one shared poll (every 100 ms while anyone waits) covers lost notifications and a
 * listener that is down. Either way one query serves every waiter: waiting costs no query per
 * request.
 */
export class ProjectionWaiter {
  readonly #access: StoreAccess;
  readonly #latestEvent: () => Promise<GlobalPosition>;
  readonly #waiters = new Set<Waiter>();
  /** Polls started so far. */
  #polls = 0;
  readonly #latest = new Map<string, Found>();
  #listener: pg.Client | undefined;
  #listenerFailedAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #again = false;
  #closed = false;

  /** `latestEvent`: the position of the last event in the log (see `EventStore.latestPosition`). */
  constructor(access: StoreAccess, latestEvent: () => Promise<GlobalPosition>) {
    this.#access = access;
    this.#latestEvent = latestEvent;
  }

  /**
   * Resolves when `name`'s active version has reached `target`, or after `timeoutMs`.
   * Rejects with `PROJECTION_POSITION_AHEAD` when `target` is past the last event in the log.
   */
  wait(
    name: string,
    target: GlobalPosition,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<ProjectionWaitResult> {
    const started = performance.now();
    return new Promise<ProjectionWaitResult>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.#waiters.delete(waiter);
        if (this.#waiters.size === 0 && this.#timer !== undefined) {
          clearInterval(this.#timer);
          this.#timer = undefined;
        }
      };
      const waiter: Waiter = {
        name,
        target,
        since: this.#polls,
        inLog: false,
        refuse: (err) => {
          cleanup();
          reject(err);
        },
        finish: (found) => {
          cleanup();
          const last = found ?? this.#latest.get(name);
          resolve({
            reached: found !== undefined,
            version: last?.version,
            checkpoint: last?.checkpoint,
            walLsn: found?.walLsn,
            waitedMs: performance.now() - started,
          });
        },
      };
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason instanceof Error ? signal.reason : new Error('the wait was aborted'));
      };
      const timer = setTimeout(() => waiter.finish(undefined), Math.max(0, timeoutMs));
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(waiter);
      this.#ensureListener();
      this.#timer ??= setInterval(() => this.#poll(), POLL_MS);
      this.#poll();
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    for (const waiter of [...this.#waiters]) waiter.finish(undefined);
    await this.#polling;
    await this.#listener?.end().catch(() => undefined);
  }

  #ensureListener(): void {
    if (this.#listener !== undefined || this.#closed) return;
    if (Date.now() - this.#listenerFailedAt < RECONNECT_MS) return;
    const base =
      typeof this.#access.connection === 'string'
        ? { connectionString: this.#access.connection }
        : this.#access.connection;
    const client = new pg.Client({
      connectionTimeoutMillis: 5000,
      keepAlive: true,
      application_name: 'replikit-projection-waiter',
      ...base,
    });
    this.#listener = client;
    const fail = (): void => {
      if (this.#listener !== client) return;
      this.#listener = undefined;
      this.#listenerFailedAt = Date.now();
      client.end().catch(() => undefined);
    };
    client.on('error', fail);
    client.on('end', fail);
    client.on('notification', () => this.#poll());
    client
      .connect()
      .then(() => client.query(`listen ${PROJECTIONS_CHANNEL}`))
      .catch((err: unknown) => {
        this.#access.logger?.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'projection waiter cannot LISTEN; polling only',
        );
        fail();
      });
  }

  /** Runs one shared poll now, or right after the one in flight. */
  #poll(): void {
    if (this.#waiters.size === 0 || this.#closed) return;
    if (this.#polling !== undefined) {
      this.#again = true;
      return;
    }
    this.#polling = this.#pollOnce()
      .catch((err: unknown) =>
        this.#access.logger?.warn(
          { err: err instanceof Error ? err.message : String(err) },
          'projection wait poll failed',
        ),
      )
      .finally(() => {
        this.#polling = undefined;
        if (this.#again) {
          this.#again = false;
          this.#poll();
        }
      });
  }

  async #pollOnce(): Promise<void> {
    const poll = ++this.#polls;
    this.#ensureListener();
    const names = [...new Set([...this.#waiters].map((waiter) => waiter.name))];
    const { rows } = await this.#access.pool.query<{
      name: string;
      version: number;
      tx_id: string;
      position: string;
      lsn: string;
    }>(
      `select name, version, tx_id::text as tx_id, position::text as position,
              pg_current_wal_insert_lsn()::text as lsn
       from ${PROJECTIONS_TABLE} where status = 'active' and name = any($1)`,
      [names],
    );
    for (const row of rows) {
      this.#latest.set(row.name, {
        version: row.version,
        checkpoint: { transactionId: BigInt(row.tx_id), position: BigInt(row.position) },
        walLsn: parseLsn(row.lsn),
      });
    }
    for (const waiter of [...this.#waiters]) {
      const found = this.#latest.get(waiter.name);
      if (found !== undefined && comparePositions(found.checkpoint, waiter.target) >= 0) {
        waiter.finish(found);
      }
    }
    // A target past the last event was never returned by an append: forged, or from another
    // store. Waiting on it would only run out the bound. An append's position is committed before
    // anyone can send it, so a poll started after the waiter arrived sees it in the log.
    const unproven = [...this.#waiters].filter((waiter) => !waiter.inLog && waiter.since < poll);
    if (unproven.length === 0) return;
    const last = await this.#latestEvent();
    for (const waiter of unproven) {
      if (comparePositions(waiter.target, last) <= 0) {
        waiter.inLog = true;
        continue;
      }
      waiter.refuse(
        new EventStoreError(
          'PROJECTION_POSITION_AHEAD',
          `position ${formatPosition(waiter.target)} is past the last event in the log (${formatPosition(last)}): it was not returned by an append to this store`,
          { details: { target: formatPosition(waiter.target), last: formatPosition(last) } },
        ),
      );
    }
  }
}
