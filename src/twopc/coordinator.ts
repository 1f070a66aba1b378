import { SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';
import { ExponentialBackoff, handleAll, handleWhen, retry } from 'cockatiel';
import pg from 'pg';

import {
  checkout,
  commitTransaction,
  inTransaction,
  type DatabaseConnection,
} from '../db/checkout.js';
import { formatGid, isGidName, newStoreId, newTransactionId, parseGid } from './gid.js';
import { TwoPhaseError } from './twopc-error.js';
import { errorMessage, sqlState } from '../errors.js';

/** The phases of a distributed transaction, as metrics and spans name them. */
export type TwoPhasePhase = 'work' | 'prepare' | 'decide' | 'commit';

/**
 * How a distributed transaction ended. `partial_commit`: decided to commit, but someone other than
 * its coordinator rolled back a participant's prepared part (see `TWOPC_PARTIAL_COMMIT`).
 */
export type TwoPhaseOutcome = 'committed' | 'aborted' | 'prepare_timeout' | 'partial_commit';

/** A finished distributed transaction, for metrics. */
export interface TransactionEvent {
  readonly outcome: TwoPhaseOutcome;
  readonly attempts: number;
  /** Milliseconds spent in each phase that ran. */
  readonly phases: Partial<Record<TwoPhasePhase, number>>;
}

/** What one recovery pass found and did. */
export interface RecoveryReport {
  /** Prepared transactions committed because a decision record says so. */
  readonly committed: number;
  /** Prepared transactions rolled back because no decision was ever recorded. */
  readonly rolledBack: number;
  /** Prepared transactions skipped because their coordinator still runs them. */
  readonly inProgress: number;
  /** Prepared transactions that could not be resolved in this pass (a participant failed). */
  readonly unresolved: number;
  /** Participants that could not be reached. */
  readonly unreachable: readonly string[];
  /** Age in seconds of the oldest prepared transaction (any, not only replikit's) per participant. */
  readonly oldestPreparedAgeSeconds: Readonly<Record<string, number>>;
}

/** Hooks through which the coordinator reports what it does (`src/telemetry` makes metrics of them). */
export interface TwoPhaseObserver {
  onTransaction?(event: TransactionEvent): void;
  onRecovery?(report: RecoveryReport): void;
}

/** Options for {@link createCoordinator}. */
export interface CoordinatorOptions {
  /**
   * Names this coordinator in global ids: lower-case letters, digits, `_`, `-`. Every process of
   * one coordinator uses the same name and decision database (and the same participants); they
   * recover each other's transactions. Recovery never touches a transaction prepared under
   * another name or another decision database.
   */
  readonly name: string;
  /**
   * The coordinator's own database, where decisions are recorded. It is given a random id on
   * first use, which goes into every global id: a copy of this database (a clone, a restored
   * backup) is the same coordinator, and must not run beside the original.
   */
  readonly coordinator: DatabaseConnection;
  /** Participant databases by name (same naming rule as `name`). At least two. */
  readonly participants: Readonly<Record<string, DatabaseConnection>>;
  /** Bound on the prepare phase. Default 5000 ms. */
  readonly prepareTimeoutMs?: number;
  /**
   * `lock_timeout` of participant sessions. PostgreSQL detects deadlocks within one server, not
   * across two: this breaks a distributed deadlock, and the transaction is retried. Default 2000 ms.
   */
  readonly lockTimeoutMs?: number;
  /** Attempts for a transaction that hits a deadlock, lock timeout or serialization failure. Default 5. */
  readonly maxAttempts?: number;
  /** Interval of the background recovery pass; 0 turns it off. Default 5000 ms. */
  readonly recoveryIntervalMs?: number;
  /** Connections per database. Default 10. */
  readonly poolSize?: number;
  readonly observer?: TwoPhaseObserver;
  /**
   * Fault injection for tests and demos, off unless given: called between the phases, where a
   * crash matters most (a hook may kill the process, stall, or cut a participant off).
   */
  readonly faults?: {
    readonly afterPrepare?: (transaction: string) => Promise<void> | void;
    readonly afterDecision?: (transaction: string) => Promise<void> | void;
  };
  readonly tracer?: Tracer;
  readonly logger?: {
    warn(fields: Record<string, unknown>, message: string): void;
    info?(fields: Record<string, unknown>, message: string): void;
  };
}

/** The handle the work function gets: queries on a participant, inside its local transaction. */
export interface DistributedTransaction {
  /** The distributed transaction id (also inside every participant's global id). */
  readonly id: string;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    participant: string,
    sql: string,
    params?: readonly unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/** What {@link Coordinator.run} returns once the decision to commit is recorded. */
export interface RunResult<T> {
  readonly result: T;
  readonly transaction: string;
  readonly attempts: number;
  /** Participants whose COMMIT PREPARED has not succeeded yet; recovery finishes them. */
  readonly pending: readonly string[];
}

const DECISIONS_TABLE = 'replikit_2pc_decisions';
/** One row: the id of this decision database, part of every global id it decides. */
const STORE_TABLE = 'replikit_2pc_store';

/** One participant's connection during a transaction. */
interface ParticipantSession {
  readonly client: pg.PoolClient;
  /** Returns the connection to its pool; `broken` discards it. Safe to call twice. */
  readonly release: (broken?: boolean) => void;
  prepared: boolean;
  /**
   * The local transaction's id, taken just before PREPARE: if its prepared transaction is gone
   * when we come to settle it, `pg_xact_status` says whether it was committed or rolled back.
   */
  xid?: string;
  /** False once a statement failed on it: later tries take a fresh connection from the pool. */
  usable?: boolean;
}

const SCHEMA = `
  create table if not exists ${DECISIONS_TABLE} (
    transaction text primary key,
    coordinator text not null,
    participants text[] not null,
    decided_at timestamptz not null default now()
  );
  create table if not exists ${STORE_TABLE} (
    singleton boolean primary key default true check (singleton),
    id text not null check (id ~ '^[0-9a-f]{16}$'),
    created_at timestamptz not null default now()
  )`;

/** SQLSTATEs after which the whole transaction may succeed if run again. */
const RETRYABLE = new Set(['40P01', '40001', '55P03']);
const UNDEFINED_OBJECT = '42704';

function isRetryable(err: unknown): boolean {
  const cause = err instanceof TwoPhaseError ? err.cause : err;
  const code = sqlState(cause);
  return code !== undefined && RETRYABLE.has(code);
}

/** A string literal for PREPARE/COMMIT PREPARED, which take no parameters. Global ids are checked by pattern. */
function literal(gid: string): string {
  return `'${gid.replaceAll("'", "''")}'`;
}

function poolFor(
  connection: DatabaseConnection,
  max: number,
  name: string,
  onIdleError: (err: Error) => void,
): pg.Pool {
  const base = typeof connection === 'string' ? { connectionString: connection } : connection;
  const pool = new pg.Pool({
    max,
    connectionTimeoutMillis: 5000,
    application_name: `replikit-2pc-${name}`,
    ...base,
  });
  pool.on('error', onIdleError);
  return pool;
}

/**
 * Creates a two-phase commit coordinator over participant databases (docs/two-phase-commit.md).
 *
 * ```ts
 * const coordinator = createCoordinator({
 *   name: 'transfers',
 *   coordinator: 'postgres://app@db/coordinator',
 *   participants: { ledger_a: 'postgres://app@db/ledger_a', ledger_b: 'postgres://app@db/ledger_b' },
 * });
 * await coordinator.start();
 * await coordinator.run(async (tx) => {
 *   await tx.query('ledger_a', 'update accounts set balance = balance - $1 where id = $2', [10, 'alice']);
 *   await tx.query('ledger_b', 'update accounts set balance = balance + $1 where id = $2', [10, 'bob']);
 * });
 * ```
 *
 * The commit point is the decision row written in the coordinator's own database. While a
 * transaction runs, its coordinator holds a session advisory lock named after it; recovery
 * resolves only prepared transactions whose lock it can take, so it is safe in any number of
 * processes at once, and a coordinator that died (its session gone) is recovered by the others.
 *
 * Recovery and pruning touch only this coordinator's own transactions: those whose global id
 * carries its name and its decision database's id. Another coordinator's transaction on a shared
 * participant can be settled only from the other's decision database; rolling it back here would
 * leave it committed on its other participants (see docs/two-phase-commit.md).
 */
export function createCoordinator(options: CoordinatorOptions): Coordinator {
  return new Coordinator(options);
}

/** See {@link createCoordinator}. */
export class Coordinator {
  readonly name: string;
  readonly #options: CoordinatorOptions;
  readonly #coordinator: pg.Pool;
  readonly #participants: ReadonlyMap<string, pg.Pool>;
  readonly #tracer: Tracer;
  #timer: NodeJS.Timeout | undefined;
  /** The decision database's id, once its tables exist. */
  #store: Promise<string> | undefined;
  #recovering: Promise<RecoveryReport> | undefined;
  #lastRecovery: RecoveryReport | undefined;
  #closed = false;

  constructor(options: CoordinatorOptions) {
    if (!isGidName(options.name)) {
      throw new RangeError(
        `coordinator name "${options.name}" must be 1-40 lower-case letters, digits, _ or -`,
      );
    }
    const names = Object.keys(options.participants);
    if (names.length < 2) throw new RangeError('two-phase commit needs at least two participants');
    for (const name of names) {
      if (!isGidName(name))
        throw new RangeError(
          `participant name "${name}" must be 1-40 lower-case letters, digits, _ or -`,
        );
    }
    this.name = options.name;
    this.#options = options;
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    const size = options.poolSize ?? 10;
    const onIdleError = (node: string) => (err: Error) =>
      options.logger?.warn({ node, err: err.message }, 'idle connection lost');
    this.#coordinator = poolFor(
      options.coordinator,
      size,
      'coordinator',
      onIdleError('coordinator'),
    );
    this.#participants = new Map(
      Object.entries(options.participants).map(([name, connection]) => [
        name,
        poolFor(connection, size, name, onIdleError(name)),
      ]),
    );
  }

  /** Participant names. */
  get participants(): readonly string[] {
    return [...this.#participants.keys()];
  }

  /** The latest recovery pass's report, for metrics. */
  get lastRecovery(): RecoveryReport | undefined {
    return this.#lastRecovery;
  }

  /**
   * Checks every participant can prepare transactions, creates the decision table, resolves what
   * earlier runs left prepared, and starts periodic recovery.
   *
   * @throws TwoPhaseError `TWOPC_NOT_ENABLED` naming a participant with `max_prepared_transactions = 0`.
   */
  async start(): Promise<void> {
    for (const [name, pool] of this.#participants) {
      const { rows } = await pool.query<{ n: number }>(
        "select current_setting('max_prepared_transactions')::int as n",
      );
      if ((rows[0]?.n ?? 0) === 0) {
        throw new TwoPhaseError(
          'TWOPC_NOT_ENABLED',
          `participant ${name} has max_prepared_transactions = 0, so it cannot take part in two-phase commit; set it above 0 (for example 64) and restart that server`,
          { details: { participant: name } },
        );
      }
    }
    await this.#ownStore();
    await this.recover();
    const interval = this.#options.recoveryIntervalMs ?? 5000;
    if (interval > 0) {
      this.#timer = setInterval(() => {
        this.recover().catch((err: unknown) =>
          this.#options.logger?.warn({ err: errorMessage(err) }, 'two-phase recovery pass failed'),
        );
      }, interval);
      this.#timer.unref();
    }
  }

  /**
   * Creates the decision tables if need be and reads the decision database's id (choosing it on
   * first use). Fetched once; a failure is retried by the next caller.
   */
  #ownStore(): Promise<string> {
    if (this.#store === undefined) {
      const opening = inTransaction(this.#coordinator, async (client) => {
        // Coordinators starting together would race on CREATE TABLE IF NOT EXISTS and on the
        // first id: serialise them.
        await client.query(
          "select pg_advisory_xact_lock(hashtextextended('replikit_2pc_schema', 0))",
        );
        await client.query(SCHEMA);
        await client.query(`insert into ${STORE_TABLE} (id) values ($1) on conflict do nothing`, [
          newStoreId(),
        ]);
        const { rows } = await client.query<{ id: string }>(`select id from ${STORE_TABLE}`);
        return rows[0]!.id;
      });
      this.#store = opening;
      opening.catch(() => {
        if (this.#store === opening) this.#store = undefined;
      });
    }
    return this.#store;
  }

  /** The global id of `transaction`'s part on `participant`. */
  #gid(store: string, transaction: string, participant: string): string {
    return formatGid({ coordinator: this.name, store, transaction, participant });
  }

  /**
   * Runs `work` as one atomic transaction across the participants it touches: each does its part
   * in a local transaction, all prepare, the decision is recorded, all commit. Any failure before
   * the decision rolls everything back; after it, the transaction is committed, and a participant
   * that cannot be reached is committed later by recovery. Deadlocks, lock timeouts and
   * serialization failures retry the whole transaction.
   *
   * @throws TwoPhaseError `TWOPC_ABORTED` or `TWOPC_PREPARE_TIMEOUT` (everything rolled back), with the cause.
   * @throws TwoPhaseError `TWOPC_IN_DOUBT` when recording the decision failed (recovery settles it).
   * @throws TwoPhaseError `TWOPC_PARTIAL_COMMIT` when someone else settled a participant's prepared
   *   part against the decision: committed on some participants only, which needs a person.
   */
  async run<T>(work: (tx: DistributedTransaction) => Promise<T>): Promise<RunResult<T>> {
    if (this.#closed) throw new TwoPhaseError('TWOPC_CLOSED', 'the coordinator has been closed');
    let attempts = 0;
    const policy = retry(handleWhen(isRetryable), {
      maxAttempts: (this.#options.maxAttempts ?? 5) - 1,
      backoff: new ExponentialBackoff({ initialDelay: 10, maxDelay: 500 }),
    });
    const phases: Partial<Record<TwoPhasePhase, number>> = {};
    return this.#tracer.startActiveSpan('replikit.2pc', async (span) => {
      try {
        const outcome = await policy.execute(() => {
          attempts++;
          return this.#attempt(work, phases, span);
        });
        this.#report({ outcome: 'committed', attempts, phases });
        span.setAttributes({
          'replikit.2pc.outcome': 'committed',
          'replikit.2pc.attempts': attempts,
        });
        return { ...outcome, attempts };
      } catch (err) {
        const outcome: TwoPhaseOutcome =
          err instanceof TwoPhaseError && err.code === 'TWOPC_PREPARE_TIMEOUT'
            ? 'prepare_timeout'
            : err instanceof TwoPhaseError && err.code === 'TWOPC_PARTIAL_COMMIT'
              ? 'partial_commit'
              : 'aborted';
        this.#report({ outcome, attempts, phases });
        span.setAttributes({ 'replikit.2pc.outcome': outcome, 'replikit.2pc.attempts': attempts });
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
        throw err;
      } finally {
        span.end();
      }
    });
  }

  async #attempt<T>(
    work: (tx: DistributedTransaction) => Promise<T>,
    phases: Partial<Record<TwoPhasePhase, number>>,
    span: Span,
  ): Promise<Omit<RunResult<T>, 'attempts'>> {
    const transaction = newTransactionId();
    span.setAttribute('replikit.2pc.transaction', transaction);
    let store: string;
    let lock: Awaited<ReturnType<typeof checkout>>;
    try {
      store = await this.#ownStore();
      lock = await checkout(this.#coordinator);
    } catch (err) {
      throw new TwoPhaseError(
        'TWOPC_ABORTED',
        `could not reach the coordinator's database: ${errorMessage(err)}`,
        {
          cause: err,
          details: { transaction },
        },
      );
    }
    const opened = new Map<string, ParticipantSession>();
    let decided = false;
    let lockBroken = false;
    const timed = async <R>(phase: TwoPhasePhase, fn: () => Promise<R>): Promise<R> => {
      const started = performance.now();
      try {
        return await fn();
      } finally {
        phases[phase] = (phases[phase] ?? 0) + (performance.now() - started);
      }
    };
    try {
      // The in-progress marker for recovery: held for as long as this transaction may still decide.
      await lock.client.query('select pg_advisory_lock(hashtextextended($1, 0))', [transaction]);

      const tx: DistributedTransaction = {
        id: transaction,
        query: async <R extends pg.QueryResultRow>(
          participant: string,
          sql: string,
          params: readonly unknown[] = [],
        ) => {
          let entry = opened.get(participant);
          if (entry === undefined) {
            const pool = this.#participants.get(participant);
            if (pool === undefined) {
              throw new TwoPhaseError(
                'TWOPC_UNKNOWN_PARTICIPANT',
                `no participant named ${participant}; there are ${this.participants.join(', ')}`,
              );
            }
            const checked = await checkout(pool);
            entry = { ...checked, prepared: false };
            opened.set(participant, entry);
            // One round trip: a simple query may hold several statements.
            await entry.client.query(
              `begin; set local lock_timeout = ${Math.max(1, Math.floor(this.#options.lockTimeoutMs ?? 2000))}`,
            );
          }
          return entry.client.query<R>(sql, params as unknown[]);
        },
      };
      const result = await timed('work', () => work(tx));

      await timed('prepare', () => this.#prepareAll(transaction, store, opened));
      await this.#options.faults?.afterPrepare?.(transaction);

      // The commit point: once this row is committed, the transaction commits, whatever happens.
      await timed('decide', async () => {
        try {
          await lock.client.query(
            `insert into ${DECISIONS_TABLE} (transaction, coordinator, participants) values ($1, $2, $3)`,
            [transaction, this.name, [...opened.keys()]],
          );
        } catch (err) {
          lockBroken = true;
          throw err;
        }
        decided = true;
      });

      await this.#options.faults?.afterDecision?.(transaction);
      // The decision row stays: recovery prunes it once no participant holds the transaction
      // prepared, which keeps a round trip and a WAL flush off every transaction.
      const { pending, lost } = await timed('commit', () =>
        this.#commitAll(transaction, store, opened),
      );
      if (lost.size > 0) throw this.#partialCommit(transaction, opened, lost, pending);
      return { result, transaction, pending };
    } catch (err) {
      if (decided) throw err;
      if (lockBroken) {
        // The decision may or may not have been committed. Rolling back now could contradict it:
        // leave every prepared participant to recovery, which reads the decision table.
        void this.recover().catch(() => undefined);
        throw new TwoPhaseError(
          'TWOPC_IN_DOUBT',
          `recording the decision failed (${errorMessage(err)}); recovery will commit or roll back every participant`,
          { cause: err, details: { transaction, participants: [...opened.keys()] } },
        );
      }
      const committed = await this.#rollbackAll(transaction, store, opened);
      if (committed.length > 0) {
        const rolledBack = [...opened.keys()].filter((name) => !committed.includes(name));
        throw this.#partialCommit(
          transaction,
          opened,
          new Map(rolledBack.map((name) => [name, 'aborted'] as const)),
          [],
        );
      }
      if (err instanceof TwoPhaseError) throw err;
      throw new TwoPhaseError(
        'TWOPC_ABORTED',
        `the distributed transaction was rolled back: ${errorMessage(err)}`,
        {
          cause: err,
          details: { transaction, participants: [...opened.keys()] },
        },
      );
    } finally {
      for (const entry of opened.values()) entry.release();
      if (!lockBroken) {
        await lock.client
          .query('select pg_advisory_unlock(hashtextextended($1, 0))', [transaction])
          .catch(() => {
            lockBroken = true;
          });
      }
      lock.release(lockBroken);
    }
  }

  /**
   * The error for a transaction whose participants did not all end the same way: `lost` holds those
   * rolled back (`aborted`) or whose end could not be learnt (`unknown`); the others committed, or
   * will once recovery reaches the `pending` ones.
   */
  #partialCommit(
    transaction: string,
    opened: ReadonlyMap<string, ParticipantSession>,
    lost: ReadonlyMap<string, 'aborted' | 'unknown'>,
    pending: readonly string[],
  ): TwoPhaseError {
    const all = [...opened.keys()];
    const ended = (fate: 'aborted' | 'unknown') => all.filter((name) => lost.get(name) === fate);
    const rolledBack = ended('aborted');
    const unknown = ended('unknown');
    const committed = all.filter((name) => !lost.has(name) && !pending.includes(name));
    const fates = [
      committed.length > 0 ? `committed on ${committed.join(', ')}` : '',
      pending.length > 0 ? `committed by recovery later on ${pending.join(', ')}` : '',
      rolledBack.length > 0 ? `rolled back on ${rolledBack.join(', ')}` : '',
      unknown.length > 0 ? `of unknown outcome on ${unknown.join(', ')}` : '',
    ].filter((text) => text !== '');
    return new TwoPhaseError(
      'TWOPC_PARTIAL_COMMIT',
      `distributed transaction ${transaction} is ${fates.join('; ')}: someone other than this coordinator (another coordinator, or COMMIT/ROLLBACK PREPARED by hand) settled a prepared part against the decision; it needs repair by hand`,
      { details: { transaction, committed, pending, rolledBack, unknown } },
    );
  }

  async #prepareAll(
    transaction: string,
    store: string,
    opened: Map<string, ParticipantSession>,
  ): Promise<void> {
    const timeoutMs = this.#options.prepareTimeoutMs ?? 5000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new TwoPhaseError(
              'TWOPC_PREPARE_TIMEOUT',
              `the prepare phase took longer than ${timeoutMs} ms; everything was rolled back`,
              { details: { transaction } },
            ),
          ),
        timeoutMs,
      );
    });
    // Wait for every participant's answer (not just the first failure), so that a participant that
    // prepared while another refused is known and rolled back now rather than left to recovery.
    const answers = Promise.allSettled(
      [...opened].map(([participant, entry]) =>
        this.#tracer.startActiveSpan(
          'replikit.2pc.prepare',
          { attributes: { 'replikit.2pc.participant': participant } },
          async (span) => {
            try {
              // One round trip: a simple query may hold several statements, and answers each.
              // PREPARE of a transaction aborted by a statement the work caught answers ROLLBACK.
              const gid = this.#gid(store, transaction, participant);
              await commitTransaction(
                {
                  query: async (prepare) => {
                    const [id, prepared] = (await entry.client.query(
                      `select pg_current_xact_id()::text as xid; ${prepare}`,
                    )) as unknown as [pg.QueryResult<{ xid: string }>, pg.QueryResult];
                    entry.xid = id.rows[0]?.xid;
                    return prepared;
                  },
                },
                `prepare transaction ${literal(gid)}`,
              );
              entry.prepared = true;
            } catch (err) {
              span.recordException(err as Error);
              span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
              throw err;
            } finally {
              span.end();
            }
          },
        ),
      ),
    );
    try {
      const settled = await Promise.race([answers, timeout]);
      const refused = settled.find((answer) => answer.status === 'rejected');
      if (refused !== undefined) throw refused.reason;
    } catch (err) {
      if (err instanceof TwoPhaseError && err.code === 'TWOPC_PREPARE_TIMEOUT') {
        // A participant still busy preparing cannot take a ROLLBACK: drop its connection, which
        // rolls back an unprepared transaction. One that prepares anyway is rolled back by
        // recovery, since no decision will be recorded; ask for a pass once our lock is gone.
        for (const entry of opened.values()) if (!entry.prepared) entry.release(true);
        setTimeout(() => void this.recover().catch(() => undefined), timeoutMs).unref();
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * COMMIT PREPARED everywhere, a few tries each. Returns the participants still pending (recovery
   * commits them) and those whose prepared transaction was already gone and not committed.
   */
  async #commitAll(
    transaction: string,
    store: string,
    opened: Map<string, ParticipantSession>,
  ): Promise<{ pending: string[]; lost: Map<string, 'aborted' | 'unknown'> }> {
    const pending: string[] = [];
    const lost = new Map<string, 'aborted' | 'unknown'>();
    await Promise.all(
      [...opened].map(([participant, entry]) =>
        this.#tracer.startActiveSpan(
          'replikit.2pc.commit',
          { attributes: { 'replikit.2pc.participant': participant } },
          async (span) => {
            const gid = this.#gid(store, transaction, participant);
            try {
              await retry(
                handleWhen((err) => sqlState(err) !== UNDEFINED_OBJECT),
                {
                  maxAttempts: 3,
                  backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 500 }),
                },
              ).execute(() =>
                this.#onParticipant(participant, entry, `commit prepared ${literal(gid)}`),
              );
            } catch (err) {
              if (sqlState(err) === UNDEFINED_OBJECT) {
                // Gone while we hold its lock: an earlier try of ours committed it and lost the
                // answer, or recovery of ours did after our lock broke; or someone else rolled it
                // back (another coordinator, or by hand). Only the transaction's fate tells.
                const fate = await this.#fateOf(participant, entry);
                if (fate !== 'committed') {
                  lost.set(participant, fate);
                  span.setStatus({ code: SpanStatusCode.ERROR, message: `prepared part ${fate}` });
                }
              } else {
                pending.push(participant);
                span.recordException(err as Error);
                this.#options.logger?.warn(
                  { transaction, participant, err: errorMessage(err) },
                  'COMMIT PREPARED failed after the decision; recovery will commit it',
                );
              }
            } finally {
              span.end();
            }
          },
        ),
      ),
    );
    return { pending, lost };
  }

  /**
   * Runs a statement for a prepared transaction on the connection that prepared it, idle since
   * PREPARE: taking another from the pool while holding this one starves the pool under load
   * (every connection held by a transaction waiting for one more). After a failure there, the
   * connection is discarded and later tries use the pool.
   */
  async #onParticipant<R extends pg.QueryResultRow = pg.QueryResultRow>(
    participant: string,
    entry: ParticipantSession,
    sql: string,
    params: readonly unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    if (entry.usable !== false) {
      try {
        return await entry.client.query<R>(sql, params as unknown[]);
      } catch (err) {
        if (sqlState(err) === UNDEFINED_OBJECT) throw err;
        entry.usable = false;
        entry.release(true);
        throw err;
      }
    }
    return this.#participants.get(participant)!.query<R>(sql, params as unknown[]);
  }

  /**
   * What became of a participant's prepared transaction that is no longer prepared, from the
   * local transaction id taken before PREPARE; `unknown` if the participant cannot say.
   */
  async #fateOf(
    participant: string,
    entry: ParticipantSession,
  ): Promise<'committed' | 'aborted' | 'unknown'> {
    if (entry.xid === undefined) return 'unknown';
    try {
      const { rows } = await retry(handleAll, {
        maxAttempts: 2,
        backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 500 }),
      }).execute(() =>
        this.#onParticipant<{ status: string | null }>(
          participant,
          entry,
          'select pg_xact_status($1::xid8) as status',
          [entry.xid],
        ),
      );
      const status = rows[0]?.status;
      return status === 'committed' || status === 'aborted' ? status : 'unknown';
    } catch (err) {
      this.#options.logger?.warn(
        { participant, err: errorMessage(err) },
        'could not learn what became of a prepared transaction that is gone',
      );
      return 'unknown';
    }
  }

  /**
   * Rolls back every participant's part. Returns the participants whose prepared part someone
   * else had committed meanwhile (never, unless done by hand against the protocol).
   */
  async #rollbackAll(
    transaction: string,
    store: string,
    opened: Map<string, ParticipantSession>,
  ): Promise<string[]> {
    const committed: string[] = [];
    await Promise.all(
      [...opened].map(async ([participant, entry]) => {
        try {
          if (entry.prepared) {
            const gid = this.#gid(store, transaction, participant);
            await this.#onParticipant(participant, entry, `rollback prepared ${literal(gid)}`);
          } else {
            await entry.client.query('rollback');
          }
        } catch (err) {
          if (sqlState(err) === UNDEFINED_OBJECT) {
            if ((await this.#fateOf(participant, entry)) === 'committed')
              committed.push(participant);
            return;
          }
          // The connection is gone or busy: discard it. Recovery rolls back anything prepared.
          entry.release(true);
          this.#options.logger?.warn(
            { transaction, participant, err: errorMessage(err) },
            'rollback failed; recovery will finish it',
          );
        }
      }),
    );
    return committed;
  }

  /**
   * One recovery pass: every prepared transaction of this coordinator (its name and decision
   * database in the global id) on every participant, that no process of it still runs, is
   * committed if a decision was recorded, rolled back otherwise. Other coordinators' prepared
   * transactions are left alone. Concurrent calls in this process share one pass.
   */
  recover(): Promise<RecoveryReport> {
    this.#recovering ??= this.#recover().finally(() => {
      this.#recovering = undefined;
    });
    return this.#recovering;
  }

  async #recover(): Promise<RecoveryReport> {
    const store = await this.#ownStore();
    let committed = 0;
    let rolledBack = 0;
    let inProgress = 0;
    let unresolved = 0;
    const unreachable: string[] = [];
    const oldest: Record<string, number> = {};
    const stillPrepared = new Set<string>();
    for (const [participant, pool] of this.#participants) {
      let rows: { gid: string; age: number }[];
      try {
        ({ rows } = await pool.query<{ gid: string; age: number }>(
          `select gid, extract(epoch from now() - prepared)::float8 as age from pg_prepared_xacts where database = current_database()`,
        ));
      } catch (err) {
        unreachable.push(participant);
        this.#options.logger?.warn(
          { participant, err: errorMessage(err) },
          'recovery could not reach a participant',
        );
        continue;
      }
      oldest[participant] = rows.reduce((max, row) => Math.max(max, row.age), 0);
      for (const row of rows) {
        // Only this coordinator's decision database can say whether a transaction was decided:
        // another's (even under the same name) must be left to it.
        const id = parseGid(row.gid);
        if (
          id === undefined ||
          id.coordinator !== this.name ||
          id.store !== store ||
          id.participant !== participant
        )
          continue;
        stillPrepared.add(id.transaction);
        const outcome = await this.#resolve(pool, row.gid, id.transaction).catch((err: unknown) => {
          this.#options.logger?.warn(
            { gid: row.gid, err: errorMessage(err) },
            'recovery could not resolve a prepared transaction',
          );
          return 'unresolved' as const;
        });
        if (outcome === 'committed') committed++;
        else if (outcome === 'rolled_back') rolledBack++;
        else if (outcome === 'in_progress') inProgress++;
        else if (outcome === 'unresolved') unresolved++;
      }
    }
    if (unreachable.length === 0) {
      // A decision is needed while any participant still holds its transaction prepared; the
      // minute of grace covers a coordinator that is just now committing. Only this coordinator's
      // decisions over participants this pass has listed: a decision database may be shared by
      // coordinators with other participants, whose prepared transactions we cannot see.
      await this.#coordinator
        .query(
          `delete from ${DECISIONS_TABLE}
            where coordinator = $2 and participants <@ $3::text[]
              and decided_at < now() - interval '1 minute' and transaction <> all($1::text[])`,
          [[...stillPrepared], this.name, this.participants],
        )
        .catch((err: unknown) =>
          this.#options.logger?.warn({ err: errorMessage(err) }, 'could not prune decisions'),
        );
    }
    const report: RecoveryReport = {
      committed,
      rolledBack,
      inProgress,
      unresolved,
      unreachable,
      oldestPreparedAgeSeconds: oldest,
    };
    this.#lastRecovery = report;
    if (committed + rolledBack > 0)
      this.#options.logger?.info?.(
        { ...report },
        'two-phase recovery resolved prepared transactions',
      );
    try {
      this.#options.observer?.onRecovery?.(report);
    } catch (err) {
      this.#options.logger?.warn({ err: errorMessage(err) }, 'two-phase observer failed');
    }
    return report;
  }

  async #resolve(
    participant: pg.Pool,
    gid: string,
    transaction: string,
  ): Promise<'committed' | 'rolled_back' | 'in_progress' | 'gone'> {
    const { client, release } = await checkout(this.#coordinator);
    let broken = false;
    try {
      await client.query('begin');
      const { rows } = await client.query<{ free: boolean }>(
        'select pg_try_advisory_xact_lock(hashtextextended($1, 0)) as free',
        [transaction],
      );
      if (rows[0]?.free !== true) {
        await client.query('rollback');
        return 'in_progress';
      }
      // Holding the lock, nobody can be writing this transaction's decision: what we read stands.
      const decision = await client.query(
        `select 1 from ${DECISIONS_TABLE} where transaction = $1`,
        [transaction],
      );
      const commit = (decision.rowCount ?? 0) > 0;
      try {
        await participant.query(`${commit ? 'commit' : 'rollback'} prepared ${literal(gid)}`);
      } catch (err) {
        if (sqlState(err) !== UNDEFINED_OBJECT) throw err;
        await client.query('rollback');
        return 'gone';
      }
      await commitTransaction(client);
      return commit ? 'committed' : 'rolled_back';
    } catch (err) {
      broken = true;
      throw err;
    } finally {
      if (broken) await client.query('rollback').catch(() => undefined);
      release(false);
    }
  }

  #report(event: TransactionEvent): void {
    try {
      this.#options.observer?.onTransaction?.(event);
    } catch (err) {
      this.#options.logger?.warn({ err: errorMessage(err) }, 'two-phase observer failed');
    }
  }

  /** Stops periodic recovery and closes every pool. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#recovering?.catch(() => undefined);
    await Promise.all([
      this.#coordinator.end(),
      ...[...this.#participants.values()].map((pool) => pool.end()),
    ]);
  }
}
