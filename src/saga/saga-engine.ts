import { randomBytes, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';

import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanStatusCode,
  trace,
  type Link,
  type Span,
  type SpanContext,
  type Tracer,
} from '@opentelemetry/api';
import {
  BrokenCircuitError,
  circuitBreaker,
  ConsecutiveBreaker,
  handleWhen,
  noop,
  TaskCancelledError,
  timeout,
  TimeoutStrategy,
  wrap,
  type CircuitBreakerPolicy,
  type IDisposable,
  type IPolicy,
} from 'cockatiel';
import pg from 'pg';

import {
  checkout,
  commitTransaction,
  inTransaction,
  type DatabaseConnection,
} from '../db/checkout.js';
import { GroupCommit } from '../db/group-commit.js';
import { migrate } from '../db/migrate.js';
import type {
  CompensationContext,
  Json,
  SagaContext,
  SagaDefinition,
  SagaFailure,
  SagaStep,
  SagaTransaction,
  StepContext,
} from './define-saga.js';
import { SagaError, StepRejected } from './saga-error.js';
import { SettledSagas } from './settled-sagas.js';
import { stepTransaction } from './step-transaction.js';
import {
  claimSagas,
  countUnfinished,
  insertSagas,
  listSagas,
  overrideSaga,
  readSaga,
  readSagaKey,
  readSteps,
  releaseLeases,
  renewLeases,
  SAGA_MIGRATIONS,
  writeCheckpoints,
  type Checkpoint,
  type NewSaga,
  type SagaCounts,
  type SagaListFilter,
  type SagaRecord,
  type StepRecord,
} from './saga-log.js';
import {
  finishTransition,
  forcedCompensation,
  initialTransition,
  nextAction,
  pivotIntent,
  resumeTransition,
  TERMINAL_STATUSES,
  transition,
  type AttemptOutcome,
  type SagaAction,
  type SagaState,
  type Transition,
} from './saga-state.js';
import { errorMessage } from '../errors.js';

/** How an attempt of a step or compensation ended, for metrics. */
export type StepEventOutcome = 'completed' | 'rejected' | 'failed' | 'parked';

/** One attempt of a step or compensation. */
export interface StepEvent {
  /** The saga instance (for logs and tests; never a metric label). */
  readonly sagaId: string;
  readonly saga: string;
  readonly step: string;
  readonly phase: 'run' | 'compensate';
  readonly outcome: StepEventOutcome;
  readonly attempt: number;
  readonly durationMs: number;
}

/** How a saga ended (or stopped to wait for a person). */
export interface SagaFinishedEvent {
  readonly sagaId: string;
  readonly saga: string;
  readonly outcome: 'completed' | 'compensated' | 'needs_attention';
  /** From the saga's creation. */
  readonly durationMs: number;
}

/** Hooks through which the engine reports what it does (`src/telemetry` makes metrics of them). */
export interface SagaObserver {
  onSagaStarted?(event: { readonly saga: string }): void;
  onSagaFinished?(event: SagaFinishedEvent): void;
  onStep?(event: StepEvent): void;
  /** This process took over a saga whose owner's lease had run out. */
  onTakeover?(event: { readonly saga: string }): void;
  /** This process lost a saga's lease to another one and stopped working on it. */
  onFenced?(event: { readonly saga: string }): void;
}

/** A downstream service's circuit breaker, and how long a step waits when it is open. */
export interface ServiceOptions {
  /**
   * Default: `circuitBreaker(handleWhen((err) => !(err instanceof StepRejected)), { halfOpenAfter:
   * 5000, breaker: new ConsecutiveBreaker(5) })`. Build yours with the same `handleWhen`: a
   * {@link StepRejected} is the service's answer, and a breaker that counted refusals as failures
   * would let any client that sends refusable requests park everyone's steps.
   */
  readonly breaker?: CircuitBreakerPolicy;
  /**
   * While the breaker is open, a step that calls the service is parked for this long (the next
   * attempt time is saved), without using up an attempt. Default: 5000 ms, the default breaker's
   * `halfOpenAfter`; set it to your breaker's. Parked steps in this process also resume as soon
   * as a call closes the breaker again.
   */
  readonly parkMs?: number;
}

/** Options for {@link createSagaEngine}. */
export interface SagaEngineOptions {
  /** The database holding the saga log (and the effects of local steps). */
  readonly database: DatabaseConnection | pg.Pool;
  /** The sagas this process can start and resume. */
  readonly sagas: readonly SagaDefinition<unknown>[];
  /** Names this process as a lease owner. Default `<host>-<pid>-<random>`. */
  readonly owner?: string;
  /** Sagas this process works on at once (running or waiting for a retry). Default 64. */
  readonly concurrency?: number;
  /**
   * How long a claim lasts without a checkpoint or renewal. A process that dies has its sagas
   * taken over by another within about this long. Default 15000 ms.
   */
  readonly leaseMs?: number;
  /** How often to look for sagas to claim (due retries, sagas left by dead processes). Default 1000 ms. */
  readonly pollIntervalMs?: number;
  /** Circuit breakers by service name (a step's `service`). Unlisted services get a default breaker. */
  readonly services?: Readonly<Record<string, ServiceOptions>>;
  /** How often the unfinished-saga counts (for gauges and the stuck-saga check) are refreshed. Default 5000 ms. */
  readonly statsIntervalMs?: number;
  /** A running or compensating saga not updated for this long is reported as stuck. Default 60000 ms. */
  readonly stuckAfterMs?: number;
  /**
   * Connections in the engine's own pool (when `database` is not a pool). Default 20. A saga
   * holds one only while it writes (a local step's transaction, a completion with its hook);
   * checkpoints of remote steps share batched statements.
   */
  readonly poolSize?: number;
  readonly observer?: SagaObserver;
  readonly tracer?: Tracer;
  readonly logger?: {
    warn(fields: Record<string, unknown>, message: string): void;
    info?(fields: Record<string, unknown>, message: string): void;
  };
}

/** What {@link SagaEngine.run} returns. */
export interface StartSagaResult {
  readonly id: string;
  /** False when a saga with that id or key existed already: nothing new was started. */
  readonly created: boolean;
}

/** Options for {@link SagaEngine.run}. */
export interface StartSagaOptions {
  /** The saga's id (a uuid). Default: a new one. */
  readonly id?: string;
  /** A business key (such as an order id): starting a second saga with the same key returns the first. */
  readonly key?: string;
  /**
   * What the request behind `key` asks for, such as a hash of its fields. A later start with the
   * same key and another fingerprint names a different request: it is refused with
   * `SAGA_KEY_REUSED` rather than answered with the first saga. Without one (or when the first
   * start had none), any start under the key returns the first saga.
   */
  readonly fingerprint?: string;
}

/** A saga with its step log. */
export interface SagaDetails {
  readonly saga: SagaRecord;
  readonly steps: readonly StepRecord[];
}

/** The latest unfinished-saga counts. */
export interface SagaStats {
  readonly counts: readonly SagaCounts[];
  /** Running or compensating sagas not updated for `stuckAfterMs`, by saga name. */
  readonly stuck: Readonly<Record<string, number>>;
  readonly at: Date;
}

/** A saga this process holds the lease of. */
interface Instance {
  readonly id: string;
  readonly definition: SagaDefinition<unknown>;
  readonly input: unknown;
  readonly createdAt: number;
  readonly key: string | null;
  state: SagaState;
  epoch: number;
  /** Local estimate of when the lease runs out (the database's clock decides). */
  leaseUntil: number;
  readonly span: Span;
  /** Aborted when the lease is lost or the engine closes: the step in progress should stop. */
  readonly controller: AbortController;
  busy: boolean;
  timer: NodeJS.Timeout | undefined;
  /** Span of the previous attempt of each step and phase, to link retries. */
  readonly attempts: Map<string, SpanContext>;
}

type HookContext = SagaContext<unknown> & { readonly failure: SagaFailure };

/** Thrown inside the engine when a checkpoint is refused; never leaves it. */
class Fenced extends Error {}

function isTerminal(state: SagaState): boolean {
  return TERMINAL_STATUSES.includes(state.status);
}

/**
 * Creates a saga engine (see docs/sagas.md): it starts sagas, runs their steps, compensates, and
 * resumes the sagas of processes that died. Run as many processes as you like on one saga log.
 *
 * ```ts
 * const engine = createSagaEngine({ database: 'postgres://app@db/orders', sagas: [orderSaga] });
 * await engine.start();
 * const { id } = await engine.run(orderSaga, { customerId: 'c1', items, amount: 42 });
 * const saga = await engine.wait(id, { timeoutMs: 2000 });
 * ```
 *
 * Every saga is held by one process at a time through a lease with a fencing epoch: every
 * checkpoint is written only if the epoch is still the holder's, so a process that stalled past
 * its lease cannot undo the work of the one that took over.
 */
export function createSagaEngine(options: SagaEngineOptions): SagaEngine {
  return new SagaEngine(options);
}

/** See {@link createSagaEngine}. */
export class SagaEngine {
  readonly owner: string;
  readonly #options: SagaEngineOptions;
  readonly #pool: pg.Pool;
  readonly #ownPool: boolean;
  readonly #tracer: Tracer;
  readonly #definitions = new Map<string, SagaDefinition<unknown>>();
  readonly #policies = new Map<SagaStep<unknown>, { policy: IPolicy; parkMs: number }>();
  readonly #instances = new Map<string, Instance>();
  readonly #leaseMs: number;
  readonly #concurrency: number;
  readonly #inserts: GroupCommit<NewSaga, boolean>;
  readonly #checkpoints: GroupCommit<Checkpoint, boolean>;
  readonly #settled = new SettledSagas();
  /** The service each parked saga waits for, so that the breaker closing wakes it. */
  readonly #parkedOn = new WeakMap<Instance, string>();
  readonly #breakerListeners: IDisposable[] = [];
  #reserved = 0;
  #timers: NodeJS.Timeout[] = [];
  #pollTimer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #stats: SagaStats | undefined;
  #started = false;
  #closing = false;

  constructor(options: SagaEngineOptions) {
    this.#options = options;
    this.owner = options.owner ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.#leaseMs = options.leaseMs ?? 15_000;
    this.#concurrency = options.concurrency ?? 64;
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    if (options.database instanceof pg.Pool) {
      this.#pool = options.database;
      this.#ownPool = false;
    } else {
      const base =
        typeof options.database === 'string'
          ? { connectionString: options.database }
          : options.database;
      this.#pool = new pg.Pool({
        max: options.poolSize ?? 20,
        connectionTimeoutMillis: 5000,
        application_name: 'replikit-saga',
        keepAlive: true,
        ...base,
      });
      this.#pool.on('error', (err) =>
        options.logger?.warn({ err: err.message }, 'idle saga log connection lost'),
      );
      this.#ownPool = true;
    }
    const breakers = new Map<string, { breaker: CircuitBreakerPolicy; parkMs: number }>();
    const serviceBreaker = (service: string) => {
      let entry = breakers.get(service);
      if (entry === undefined) {
        const configured = options.services?.[service];
        entry = {
          breaker:
            configured?.breaker ??
            // A refusal is an answer, not a failure of the service. cockatiel rethrows an error
            // its policy does not handle without counting it, and a half-open trial that ends in
            // one closes the breaker: refusals can neither open it nor keep it open.
            circuitBreaker(
              handleWhen((err) => !(err instanceof StepRejected)),
              { halfOpenAfter: 5000, breaker: new ConsecutiveBreaker(5) },
            ),
          parkMs: configured?.parkMs ?? 5000,
        };
        this.#breakerListeners.push(
          entry.breaker.onReset(() => queueMicrotask(() => this.#wakeParked(service))),
        );
        breakers.set(service, entry);
      }
      return entry;
    };
    for (const definition of options.sagas) {
      if (this.#definitions.has(definition.key))
        throw new SagaError(
          'SAGA_INVALID_DEFINITION',
          `saga ${definition.key} is registered twice`,
        );
      this.#definitions.set(definition.key, definition);
      for (const step of definition.steps) {
        const entry =
          !step.local && step.service !== undefined ? serviceBreaker(step.service) : undefined;
        const limit =
          step.timeoutMs === undefined ? noop : timeout(step.timeoutMs, TimeoutStrategy.Aggressive);
        this.#policies.set(step, {
          policy: entry === undefined ? limit : wrap(entry.breaker, limit),
          parkMs: entry?.parkMs ?? 0,
        });
      }
    }
    // A statement the server refused (a row it cannot store, a constraint) wrote nothing: each
    // item is then written on its own, so only the saga that caused the error sees it.
    const isolate = (err: unknown) => err instanceof pg.DatabaseError;
    this.#inserts = new GroupCommit(
      (items) => insertSagas(this.#pool, items, this.owner, this.#leaseMs),
      { isolate },
    );
    this.#checkpoints = new GroupCommit(
      (items) => writeCheckpoints(this.#pool, items, this.#leaseMs),
      { isolate },
    );
  }

  /** The latest unfinished-saga counts, refreshed every `statsIntervalMs` (undefined before the first). */
  get stats(): SagaStats | undefined {
    return this.#stats;
  }

  /** Sagas this process holds right now. */
  get inFlight(): number {
    return this.#instances.size;
  }

  /**
   * Creates the saga log's tables (once, under the migration runner's lock), then starts claiming
   * due sagas, renewing leases and refreshing counts.
   */
  async start(): Promise<void> {
    if (this.#started) return;
    await migrate(this.#pool, SAGA_MIGRATIONS);
    this.#started = true;
    const every = (ms: number, task: () => Promise<void>) => {
      const timer = setInterval(() => {
        task().catch((err: unknown) =>
          this.#options.logger?.warn(
            { err: errorMessage(err) },
            'saga engine background task failed',
          ),
        );
      }, ms);
      timer.unref();
      this.#timers.push(timer);
    };
    every(Math.max(50, Math.floor(this.#leaseMs / 3)), () => this.#renew());
    every(this.#options.statsIntervalMs ?? 5000, () => this.refreshStats());
    this.#schedulePoll(0);
    await this.refreshStats().catch(() => undefined);
  }

  /**
   * Starts a saga. It runs in this process when it has room (else any process claims it), and
   * survives this process's death: the call returns once the saga and its first step's intent
   * are in the log.
   *
   * @throws SagaError `SAGA_UNKNOWN` for a definition the engine was not given; `SAGA_INVALID_INPUT`
   *   when the definition's input schema refuses the input; `SAGA_KEY_REUSED` when `key` was
   *   started with another `fingerprint`.
   */
  async run<I>(
    definition: SagaDefinition<I>,
    input: I,
    options: StartSagaOptions = {},
  ): Promise<StartSagaResult> {
    this.#assertOpen();
    const known = this.#definitions.get(definition.key);
    if (known === undefined)
      throw new SagaError('SAGA_UNKNOWN', `this engine was not given saga ${definition.key}`, {
        details: { saga: definition.key },
      });
    const parsed = this.#parseInput(known, input);
    const id = options.id ?? randomUUID();
    const span = this.#tracer.startSpan(`saga ${known.name}`, {
      attributes: {
        'replikit.saga.name': known.name,
        'replikit.saga.version': known.version,
        'replikit.saga.id': id,
      },
    });
    const carrier: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), span), carrier);
    const owned = this.#instances.size + this.#reserved < this.#concurrency;
    if (owned) this.#reserved++;
    const first = initialTransition(known);
    let created: boolean;
    try {
      created = await this.#inserts.submit({
        id,
        saga: known.name,
        version: known.version,
        key: options.key ?? null,
        keyFingerprint: options.key === undefined ? null : (options.fingerprint ?? null),
        input: parsed as Json,
        trace: carrier,
        owned,
        first,
      });
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
      span.end();
      throw err;
    } finally {
      if (owned) this.#reserved--;
    }
    if (!created) {
      span.setAttribute('replikit.saga.duplicate', true);
      span.end();
      if (options.key === undefined) {
        const existing = await readSaga(this.#pool, id);
        return { id: existing?.id ?? id, created: false };
      }
      // The insert that won has committed (the conflict waited for it): its row is there.
      const existing = await readSagaKey(this.#pool, options.key);
      if (
        existing !== undefined &&
        existing.fingerprint !== null &&
        options.fingerprint !== undefined &&
        existing.fingerprint !== options.fingerprint
      )
        throw new SagaError(
          'SAGA_KEY_REUSED',
          `saga key ${options.key} was used for another request (saga ${existing.id}); nothing was started`,
          { details: { key: options.key, id: existing.id } },
        );
      return { id: existing?.id ?? id, created: false };
    }
    this.#options.observer?.onSagaStarted?.({ saga: known.name });
    if (owned && !this.#closing) {
      this.#hold({
        id,
        definition: known,
        input: parsed,
        createdAt: Date.now(),
        key: options.key ?? null,
        state: first.state,
        epoch: 1,
        span,
      });
    } else {
      span.end();
      this.#schedulePoll(0);
    }
    return { id, created: true };
  }

  /**
   * Waits until the saga finishes or needs attention, or `timeoutMs` passes, and returns it as
   * the log has it then.
   *
   * @throws SagaError `SAGA_NOT_FOUND`.
   */
  async wait(
    id: string,
    options: { readonly timeoutMs?: number; readonly signal?: AbortSignal } = {},
  ): Promise<SagaRecord> {
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    if (this.#instances.has(id) || this.#settled.get(id) !== undefined) {
      // Held here: it settles in this process, which knows its final state without a read.
      const wakeup = this.#settled.wakeup(id, Math.max(0, deadline - Date.now()), options.signal);
      if (this.#settled.get(id) === undefined) await wakeup.promise;
      else wakeup.cancel();
      const recent = this.#settled.get(id);
      if (recent !== undefined) return recent;
      // Not settled here (still running at the deadline, waiting for a retry, or taken over
      // elsewhere): the log says where it is.
    }
    for (;;) {
      const left = deadline - Date.now();
      // Listen before reading: a saga that settles between the read and the wait is not missed.
      // A saga held elsewhere settles without telling this process: look again every 100 ms.
      const wakeup = this.#settled.wakeup(
        id,
        Math.max(0, Math.min(left, this.#instances.has(id) ? left : 100)),
        options.signal,
      );
      let record: SagaRecord | undefined;
      try {
        record = await readSaga(this.#pool, id);
      } catch (err) {
        wakeup.cancel();
        throw err;
      }
      if (record === undefined) {
        wakeup.cancel();
        throw new SagaError('SAGA_NOT_FOUND', `no saga has id ${id}`, { details: { id } });
      }
      const settled = isTerminal(record.state) || record.state.status === 'needs_attention';
      if (settled || left <= 0 || options.signal?.aborted === true) {
        wakeup.cancel();
        return record;
      }
      await wakeup.promise;
    }
  }

  /** The definition a saga record runs under, when this engine has it. */
  definitionOf(record: Pick<SagaRecord, 'saga' | 'version'>): SagaDefinition<unknown> | undefined {
    return this.#definitions.get(`${record.saga}@${record.version}`);
  }

  /** A saga with its step log, or undefined. */
  async get(id: string): Promise<SagaDetails | undefined> {
    const saga = await readSaga(this.#pool, id);
    if (saga === undefined) return undefined;
    return { saga, steps: await readSteps(this.#pool, id) };
  }

  /** Sagas by status, name and age, newest first. */
  list(filter: SagaListFilter = {}): Promise<SagaRecord[]> {
    return listSagas(this.#pool, filter);
  }

  /**
   * Running or compensating sagas that have not moved for `idleForMs` (default `stuckAfterMs`):
   * a lease that keeps being renewed by a process whose step never returns, or a saga nobody can
   * claim because no running process knows its version.
   */
  async stuck(idleForMs = this.#options.stuckAfterMs ?? 60_000): Promise<SagaRecord[]> {
    const [running, compensating] = await Promise.all([
      listSagas(this.#pool, { status: 'running', idleForMs, limit: 1000 }),
      listSagas(this.#pool, { status: 'compensating', idleForMs, limit: 1000 }),
    ]);
    return [...running, ...compensating];
  }

  /**
   * Retries a saga that needs attention: the action that failed (a compensation, or a step after
   * the pivot) runs again with a fresh retry budget.
   *
   * @throws SagaError `SAGA_NOT_FOUND`; `SAGA_INVALID_STATE` when the saga does not need attention.
   */
  retry(id: string): Promise<SagaRecord> {
    return this.#override(id, (definition, state) => {
      if (state.status !== 'needs_attention')
        throw new SagaError(
          'SAGA_INVALID_STATE',
          `saga ${id} is ${state.status}; only a saga that needs attention can be retried`,
          { details: { id, status: state.status } },
        );
      void definition;
      return resumeTransition(state);
    });
  }

  /**
   * Compensates a saga now: a running one stops going forward (the step in progress is treated
   * as of unknown outcome and compensated too), one that needs attention after a failed
   * compensation retries it. The process holding the saga is fenced in the same transaction:
   * its next checkpoint is refused, so it cannot go on to the pivot.
   *
   * @throws SagaError `SAGA_NOT_FOUND`; `SAGA_INVALID_STATE` when the saga finished or passed its
   *   pivot; `SAGA_PIVOT_IN_DOUBT` once the pivot's call was made and its outcome is not known
   *   (wait for it, or {@link SagaEngine.retry} a saga that needs attention there).
   */
  compensate(id: string): Promise<SagaRecord> {
    return this.#override(id, (definition, state) => {
      const decision = forcedCompensation(definition, state);
      if (decision.kind === 'accepted') return decision.transition;
      const step = definition.steps[state.stepIndex]?.name;
      const details = { id, status: state.status, ...(step === undefined ? {} : { step }) };
      switch (decision.reason) {
        case 'finished':
          throw new SagaError(
            'SAGA_INVALID_STATE',
            `saga ${id} is ${state.status}: there is nothing to compensate`,
            { details },
          );
        case 'past_pivot':
          throw new SagaError(
            'SAGA_INVALID_STATE',
            `saga ${id} is past its pivot step and can no longer be compensated`,
            { details },
          );
        case 'pivot_in_doubt':
          throw new SagaError(
            'SAGA_PIVOT_IN_DOUBT',
            `saga ${id} has called its pivot step ${step ?? ''} and its outcome is not known: ` +
              'it may have gone through, and undoing the steps before it would leave half a saga. ' +
              (state.status === 'needs_attention'
                ? 'Retry the saga instead (the pivot runs again with the same idempotency key).'
                : 'Wait for the step to finish.'),
            { details },
          );
      }
    });
  }

  /** Claims due sagas now instead of at the next poll. */
  async poll(): Promise<void> {
    if (!this.#started || this.#closing) return;
    this.#polling ??= this.#claim().finally(() => {
      this.#polling = undefined;
    });
    return this.#polling;
  }

  /** Recounts unfinished sagas (the stats behind the gauges and the stuck-saga warning). */
  async refreshStats(): Promise<void> {
    const counts = await countUnfinished(this.#pool);
    const stuckAfter = this.#options.stuckAfterMs ?? 60_000;
    const stuck: Record<string, number> = {};
    for (const count of counts) {
      if (count.status === 'needs_attention') continue;
      if (Date.now() - count.oldestUpdate.getTime() > stuckAfter) {
        stuck[count.saga] = (stuck[count.saga] ?? 0) + count.count;
      }
    }
    if (Object.keys(stuck).length > 0)
      this.#options.logger?.warn(
        { stuck, stuckAfterMs: stuckAfter },
        'sagas have not moved for a long time; list them with stuck()',
      );
    this.#stats = { counts, stuck, at: new Date() };
  }

  /**
   * Stops claiming, lets steps in progress finish and checkpoint (for up to `timeoutMs`, default
   * 10 s, then aborts them), and gives up the leases it holds so that other processes continue
   * at once instead of after a lease period.
   */
  async close(options: { readonly timeoutMs?: number } = {}): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    for (const timer of this.#timers) clearInterval(timer);
    for (const listener of this.#breakerListeners) listener.dispose();
    if (this.#pollTimer !== undefined) clearTimeout(this.#pollTimer);
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    while ([...this.#instances.values()].some((i) => i.busy) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const remaining = [...this.#instances.values()];
    for (const instance of remaining) {
      if (instance.timer !== undefined) clearTimeout(instance.timer);
      instance.controller.abort(new SagaError('SAGA_CLOSED', 'the saga engine is closing'));
      instance.span.setAttribute('replikit.saga.released', true);
      instance.span.end();
    }
    this.#instances.clear();
    await releaseLeases(
      this.#pool,
      remaining.map((instance) => ({ id: instance.id, epoch: instance.epoch })),
    ).catch((err: unknown) =>
      this.#options.logger?.warn({ err: errorMessage(err) }, 'could not release saga leases'),
    );
    await this.#polling?.catch(() => undefined);
    if (this.#ownPool) await this.#pool.end();
  }

  #assertOpen(): void {
    if (!this.#started) throw new SagaError('SAGA_CLOSED', 'the saga engine has not been started');
    if (this.#closing) throw new SagaError('SAGA_CLOSED', 'the saga engine has been closed');
  }

  #parseInput(definition: SagaDefinition<unknown>, input: unknown): unknown {
    if (definition.input === undefined) return input;
    try {
      return definition.input.parse(input);
    } catch (err) {
      throw new SagaError(
        'SAGA_INVALID_INPUT',
        `the input of saga ${definition.key} is not valid: ${errorMessage(err)}`,
        { cause: err, details: { saga: definition.key } },
      );
    }
  }

  /**
   * Applies a person's decision: reads the saga under its row lock, decides, and writes the
   * decision with a new epoch in one transaction. A checkpoint of the holder (a step's result, the
   * pivot's intent) either committed before the read, and the decision sees it, or comes after
   * the new epoch and is refused. Deciding from an unlocked read would let the holder log the
   * pivot's intent (and call it) between the read and the write.
   */
  async #override(
    id: string,
    decide: (definition: SagaDefinition<unknown>, state: SagaState) => Transition,
  ): Promise<SagaRecord> {
    this.#assertOpen();
    const record = await inTransaction(this.#pool, async (client) => {
      const current = await readSaga(client, id, { forUpdate: true });
      if (current === undefined)
        throw new SagaError('SAGA_NOT_FOUND', `no saga has id ${id}`, { details: { id } });
      const definition = this.#definitions.get(`${current.saga}@${current.version}`);
      if (definition === undefined)
        throw new SagaError(
          'SAGA_UNKNOWN',
          `this engine does not know saga ${current.saga}@${current.version}`,
          { details: { saga: `${current.saga}@${current.version}` } },
        );
      const next = decide(definition, current.state);
      // Under the lock the epoch cannot have moved; checked all the same.
      if (!(await overrideSaga(client, id, current.epoch, next)))
        throw new SagaError('SAGA_INVALID_STATE', `saga ${id} changed; try again`, {
          details: { id },
        });
      return current;
    });
    this.#settled.forget(id);
    // A local holder, if any, is fenced by the new epoch; drop it now rather than at its next write.
    const local = this.#instances.get(id);
    if (local !== undefined) this.#drop(local, 'overridden');
    this.#schedulePoll(0);
    return (await readSaga(this.#pool, id)) ?? record;
  }

  #schedulePoll(delayMs: number): void {
    if (this.#closing || !this.#started) return;
    if (this.#pollTimer !== undefined) clearTimeout(this.#pollTimer);
    this.#pollTimer = setTimeout(() => {
      this.poll()
        .catch((err: unknown) =>
          this.#options.logger?.warn({ err: errorMessage(err) }, 'claiming sagas failed'),
        )
        .finally(() => this.#schedulePoll(this.#options.pollIntervalMs ?? 1000));
    }, delayMs);
    this.#pollTimer.unref();
  }

  async #claim(): Promise<void> {
    const room = this.#concurrency - this.#instances.size - this.#reserved;
    if (room <= 0) return;
    const claimed = await claimSagas(this.#pool, {
      owner: this.owner,
      leaseMs: this.#leaseMs,
      limit: Math.min(room, 100),
      keys: [...this.#definitions.keys()],
    });
    for (const { record, takeover } of claimed) {
      const definition = this.#definitions.get(`${record.saga}@${record.version}`);
      if (definition === undefined) continue;
      if (takeover) this.#options.observer?.onTakeover?.({ saga: record.saga });
      const parent =
        record.trace === null ? ROOT_CONTEXT : propagation.extract(ROOT_CONTEXT, record.trace);
      const span = this.#tracer.startSpan(
        `saga ${record.saga}`,
        {
          attributes: {
            'replikit.saga.name': record.saga,
            'replikit.saga.version': record.version,
            'replikit.saga.id': record.id,
            'replikit.saga.resumed': true,
            'replikit.saga.takeover': takeover,
          },
        },
        parent,
      );
      let input: unknown;
      try {
        input = this.#parseInput(definition, record.input);
      } catch (err) {
        // Input that no longer parses cannot be run forward; hold the saga for a person.
        this.#options.logger?.warn(
          { saga: record.id, err: errorMessage(err) },
          'saga input no longer valid',
        );
        span.end();
        continue;
      }
      this.#hold({
        id: record.id,
        definition,
        input,
        createdAt: record.createdAt.getTime(),
        key: record.key,
        state: record.state,
        epoch: record.epoch,
        span,
      });
    }
  }

  /** Starts working on a saga whose lease this process has just taken. */
  #hold(
    saga: Pick<
      Instance,
      'id' | 'definition' | 'input' | 'createdAt' | 'key' | 'state' | 'epoch' | 'span'
    >,
  ): void {
    const instance: Instance = {
      ...saga,
      leaseUntil: Date.now() + this.#leaseMs,
      controller: new AbortController(),
      busy: false,
      timer: undefined,
      attempts: new Map(),
    };
    // This process may still be running an older epoch of the saga: its lease ran out (a long
    // pause) and the claim just took it over. That older attempt is fenced like any other
    // process's: stop it and say so, rather than let it be forgotten while its step still runs.
    const stale = this.#instances.get(instance.id);
    if (stale !== undefined) this.#drop(stale, 'fenced');
    this.#instances.set(instance.id, instance);
    this.#settled.forget(instance.id);
    this.#start(instance);
  }

  async #renew(): Promise<void> {
    const now = Date.now();
    const due = [...this.#instances.values()].filter(
      (instance) => instance.leaseUntil - now < (this.#leaseMs * 2) / 3,
    );
    if (due.length === 0) return;
    const renewed = await renewLeases(
      this.#pool,
      due.map((instance) => ({ id: instance.id, epoch: instance.epoch })),
      this.#leaseMs,
    );
    for (const instance of due) {
      const held = renewed.get(instance.id);
      if (held === true) instance.leaseUntil = now + this.#leaseMs;
      // `false`: the saga's own final (or releasing) checkpoint won the race with this renewal;
      // the engine settles it as soon as it hears of that write. Not fenced.
      else if (held === undefined && this.#instances.get(instance.id) === instance)
        this.#drop(instance, 'fenced');
    }
  }

  /** Drives the instance in the background; every error is handled inside. */
  #start(instance: Instance): void {
    instance.timer = undefined;
    this.#parkedOn.delete(instance);
    instance.busy = true;
    this.#drive(instance)
      .catch((err: unknown) => {
        if (err instanceof Fenced) {
          this.#drop(instance, 'fenced');
          return;
        }
        if (instance.controller.signal.aborted) return;
        // The log could not be written (the database is unreachable): let the lease run out
        // and any process, this one included, resume the saga from its last checkpoint.
        this.#options.logger?.warn(
          { saga: instance.id, err: errorMessage(err) },
          'saga checkpoint failed; it resumes from its last checkpoint after its lease',
        );
        this.#drop(instance, 'error', err);
      })
      .finally(() => {
        instance.busy = false;
      });
  }

  async #drive(instance: Instance): Promise<void> {
    const definition = instance.definition;
    for (;;) {
      if (this.#closing || instance.controller.signal.aborted) return;
      const action = nextAction(definition, instance.state);
      if (action.kind === 'none') {
        this.#settle(instance);
        return;
      }
      if (action.kind === 'run') {
        // Logged (fenced) before the pivot's call: a forced compensation that comes later is
        // refused, and one that came first has raised the epoch, so this write fails and the
        // pivot is never called.
        const intent = pivotIntent(definition, instance.state, action.index);
        if (intent !== undefined) await this.#commit(instance, intent);
      }
      const next =
        action.kind === 'finish'
          ? await this.#finish(instance, action.status)
          : await this.#attempt(instance, action);
      if (next === undefined) return;
      if (isTerminal(instance.state) || instance.state.status === 'needs_attention') {
        this.#settle(instance);
        return;
      }
      if (next.delayMs > 0) {
        instance.timer = setTimeout(() => {
          if (this.#instances.get(instance.id) === instance && !this.#closing)
            this.#start(instance);
        }, next.delayMs);
        instance.timer.unref();
        return;
      }
    }
  }

  /** Writes the final checkpoint of a saga whose last action was written without it. */
  async #finish(instance: Instance, status: 'completed' | 'compensated'): Promise<Transition> {
    const next = finishTransition(instance.state, status);
    await this.#commit(instance, next);
    return next;
  }

  /**
   * Runs one attempt of a step or compensation and writes its checkpoint: in the same transaction
   * as the effect for a local step, else batched with other sagas' checkpoints.
   */
  async #attempt(
    instance: Instance,
    action: Extract<SagaAction, { kind: 'run' | 'compensate' }>,
  ): Promise<Transition | undefined> {
    const definition = instance.definition;
    const step = definition.steps[action.index];
    if (step === undefined)
      throw new RangeError(`saga ${definition.key} has no step ${action.index}`);
    const phase = action.kind === 'run' ? 'run' : 'compensate';
    if (phase === 'compensate' && step.compensate === undefined) {
      // A plan only lists compensable steps; a definition changed under the same version may not.
      throw new SagaError('SAGA_INVALID_DEFINITION', `step ${step.name} has no compensation`);
    }
    const attempt = instance.state.attempt;
    const linkKey = `${phase}:${action.index}`;
    const previous = instance.attempts.get(linkKey);
    const links: Link[] = previous === undefined ? [] : [{ context: previous }];
    const span = this.#tracer.startSpan(
      `saga.${phase === 'run' ? 'step' : 'compensate'} ${step.name}`,
      {
        links,
        attributes: {
          'replikit.saga.name': definition.name,
          'replikit.saga.id': instance.id,
          'replikit.saga.step': step.name,
          'replikit.saga.step.index': action.index,
          'replikit.saga.phase': phase,
          'replikit.saga.attempt': attempt,
        },
      },
      trace.setSpan(context.active(), instance.span),
    );
    instance.attempts.set(linkKey, span.spanContext());
    const started = performance.now();
    const report = (outcome: AttemptOutcome): void => {
      const kind = outcome.kind === 'circuit_open' ? 'parked' : outcome.kind;
      span.setAttribute('replikit.saga.step.outcome', kind);
      if (outcome.kind === 'rejected' || outcome.kind === 'failed') {
        span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.message });
      } else if (outcome.kind === 'circuit_open') {
        span.addEvent('circuit open: step parked', { 'replikit.saga.park_ms': outcome.parkMs });
      }
      span.end();
      this.#options.observer?.onStep?.({
        sagaId: instance.id,
        saga: definition.name,
        step: step.name,
        phase,
        outcome: kind,
        attempt,
        durationMs: performance.now() - started,
      });
    };
    const base: StepContext<unknown> = {
      sagaId: instance.id,
      saga: definition.name,
      input: instance.input,
      outputs: instance.state.outputs,
      signal: instance.controller.signal,
      step: step.name,
      attempt,
      idempotencyKey:
        phase === 'run' ? `${instance.id}/${step.name}` : `${instance.id}/${step.name}/compensate`,
    };
    const compensation = (signal: AbortSignal): CompensationContext<unknown> => ({
      ...base,
      signal,
      outcome: step.name in instance.state.outputs ? 'completed' : 'unknown',
      output: instance.state.outputs[step.name],
      forwardKey: `${instance.id}/${step.name}`,
      failure: instance.state.failure ?? {
        step: step.name,
        reason: 'compensation_requested',
        message: 'compensation was requested',
      },
    });
    const { policy, parkMs } = this.#policies.get(step) ?? { policy: noop, parkMs: 0 };

    return context.with(trace.setSpan(context.active(), span), async () => {
      if (step.local === true) {
        const { client, release } = await checkout(this.#pool);
        let broken = false;
        try {
          await client.query('begin');
          if (step.timeoutMs !== undefined) {
            // The server's bound on each statement of the attempt: a statement still running when
            // the attempt is abandoned stops within timeoutMs, releasing its locks for the retry.
            await client.query(`select set_config('statement_timeout', $1, true)`, [
              String(Math.min(Math.ceil(step.timeoutMs), 2_147_483_647)),
            ]);
          }
          const { tx, revoke } = stepTransaction(client, step.name);
          const code = { settled: false };
          let outcome: AttemptOutcome;
          try {
            const output = await policy.execute(async ({ signal }) => {
              try {
                return await (phase === 'run'
                  ? step.run({ ...base, signal }, tx)
                  : (step.compensate as NonNullable<typeof step.compensate>)(
                      compensation(signal),
                      tx,
                    ));
              } finally {
                code.settled = true;
              }
            }, instance.controller.signal);
            outcome = { kind: 'completed', output: output ?? null };
          } catch (err) {
            outcome = this.#classify(err, step, parkMs);
          } finally {
            revoke();
          }
          if (!code.settled) {
            // Abandoned (timed out, or the lease was lost) while its code still runs: a query it
            // has in flight must not commit and the connection must serve nobody else. Closing
            // the connection ends the transaction without waiting for that query.
            broken = true;
            release(true);
          }
          if (instance.controller.signal.aborted) {
            if (!broken) await client.query('rollback');
            span.end();
            return undefined;
          }
          if (outcome.kind !== 'completed') {
            if (!broken) await client.query('rollback');
            report(outcome);
            const next = transition(definition, instance.state, action, outcome);
            await this.#commit(instance, next);
            return next;
          }
          report(outcome);
          const next = transition(definition, instance.state, action, outcome);
          await this.#commit(instance, next, client);
          return next;
        } catch (err) {
          if (!broken) {
            broken = !(err instanceof Fenced);
            await client.query('rollback').catch(() => undefined);
          }
          throw err;
        } finally {
          release(broken);
        }
      }
      let outcome: AttemptOutcome;
      try {
        const output = await policy.execute(
          ({ signal }) =>
            phase === 'run'
              ? step.run({ ...base, signal })
              : (step.compensate as (c: CompensationContext<unknown>) => Promise<void>)(
                  compensation(signal),
                ),
          instance.controller.signal,
        );
        outcome = { kind: 'completed', output: output ?? null };
      } catch (err) {
        outcome = this.#classify(err, step, parkMs);
      }
      if (outcome.kind === 'circuit_open' && step.service !== undefined)
        this.#parkedOn.set(instance, step.service);
      if (instance.controller.signal.aborted) {
        span.end();
        return undefined;
      }
      report(outcome);
      const next = transition(definition, instance.state, action, outcome);
      await this.#commit(instance, next);
      return next;
    });
  }

  #classify(err: unknown, step: SagaStep<unknown>, parkMs: number): AttemptOutcome {
    if (err instanceof StepRejected)
      return { kind: 'rejected', reason: err.reason, message: err.message };
    if (err instanceof BrokenCircuitError) return { kind: 'circuit_open', parkMs };
    if (err instanceof TaskCancelledError)
      return { kind: 'failed', message: `timed out after ${step.timeoutMs ?? 0} ms` };
    return { kind: 'failed', message: errorMessage(err) };
  }

  /**
   * Writes a transition. A transition that finishes the saga runs the definition's hook in the
   * same transaction; with `tx` (a local step's transaction) everything commits together.
   */
  async #commit(instance: Instance, next: Transition, tx?: pg.PoolClient): Promise<void> {
    const definition = instance.definition;
    const status = next.state.status;
    const hook =
      status === 'completed' && instance.state.status !== 'completed'
        ? definition.onCompleted === undefined
          ? undefined
          : (c: HookContext, t: SagaTransaction) => definition.onCompleted?.(c, t)
        : status === 'compensated' && instance.state.status !== 'compensated'
          ? definition.onCompensated === undefined
            ? undefined
            : (c: HookContext, t: SagaTransaction) => definition.onCompensated?.(c, t)
          : undefined;
    const checkpoint: Checkpoint = {
      id: instance.id,
      epoch: instance.epoch,
      transition: next,
      release: false,
    };
    if (tx === undefined && hook === undefined) {
      if (!(await this.#checkpoints.submit(checkpoint))) throw new Fenced();
    } else {
      const own = tx === undefined ? await checkout(this.#pool) : undefined;
      const client = tx ?? (own as NonNullable<typeof own>).client;
      try {
        if (own !== undefined) await client.query('begin');
        if (hook !== undefined) {
          const hookContext: HookContext = {
            sagaId: instance.id,
            saga: definition.name,
            input: instance.input,
            outputs: next.state.outputs,
            signal: instance.controller.signal,
            failure: next.state.failure ?? { step: '', reason: '', message: '' },
          };
          await hook(hookContext, client);
        }
        const [written] = await writeCheckpoints(client, [checkpoint], this.#leaseMs);
        if (written !== true) {
          await client.query('rollback');
          throw new Fenced();
        }
        await commitTransaction(client);
      } catch (err) {
        if (own !== undefined) await client.query('rollback').catch(() => undefined);
        throw err;
      } finally {
        own?.release();
      }
    }
    instance.state = next.state;
    instance.leaseUntil = Date.now() + this.#leaseMs + next.delayMs;
  }

  /**
   * A call through `service`'s breaker closed it (a half-open trial the service answered): the
   * steps parked on it here run now instead of at the end of their park.
   */
  #wakeParked(service: string): void {
    if (this.#closing) return;
    for (const instance of this.#instances.values()) {
      // A saga still writing its park checkpoint has no timer yet: it waits out its park.
      if (this.#parkedOn.get(instance) !== service || instance.busy || instance.timer === undefined)
        continue;
      clearTimeout(instance.timer);
      this.#start(instance);
    }
  }

  /** The saga finished or waits for a person: report it and let it go. */
  #settle(instance: Instance): void {
    const status = instance.state.status;
    if (status === 'completed' || status === 'compensated' || status === 'needs_attention') {
      instance.span.setAttribute('replikit.saga.outcome', status);
      if (status === 'needs_attention') {
        instance.span.setStatus({
          code: SpanStatusCode.ERROR,
          message: instance.state.attention?.message ?? 'needs attention',
        });
        this.#options.logger?.warn(
          {
            saga: instance.id,
            name: instance.definition.name,
            step: instance.state.attention?.step,
            phase: instance.state.attention?.phase,
            err: instance.state.attention?.message,
          },
          'saga needs attention: an action kept failing after all its retries',
        );
      } else if (status === 'compensated' && instance.state.failure !== null) {
        instance.span.setAttribute('replikit.saga.failure.reason', instance.state.failure.reason);
        instance.span.setAttribute('replikit.saga.failure.step', instance.state.failure.step);
      }
      this.#options.observer?.onSagaFinished?.({
        sagaId: instance.id,
        saga: instance.definition.name,
        outcome: status,
        durationMs: Date.now() - instance.createdAt,
      });
    }
    instance.span.end();
    this.#instances.delete(instance.id);
    this.#settled.settle(instance.id, this.#snapshot(instance));
  }

  /** The saga as this process last wrote it, for {@link SagaEngine.wait}. */
  #snapshot(instance: Instance): SagaRecord {
    const now = Date.now();
    const finished = isTerminal(instance.state);
    return {
      id: instance.id,
      saga: instance.definition.name,
      version: instance.definition.version,
      key: instance.key,
      input: instance.input as Json,
      state: instance.state,
      trace: null,
      owner: null,
      epoch: instance.epoch,
      leaseUntil: null,
      nextAttemptAt: new Date(now),
      createdAt: new Date(instance.createdAt),
      updatedAt: new Date(now),
      finishedAt: finished ? new Date(now) : null,
    };
  }

  /** Stops working on a saga without finishing it (fenced, overridden, or the log failed). */
  #drop(instance: Instance, why: 'fenced' | 'overridden' | 'error', err?: unknown): void {
    if (this.#instances.get(instance.id) !== instance) return;
    this.#instances.delete(instance.id);
    if (instance.timer !== undefined) clearTimeout(instance.timer);
    instance.controller.abort(
      new SagaError('SAGA_FENCED', `lost the lease of saga ${instance.id}`),
    );
    instance.span.setAttribute('replikit.saga.dropped', why);
    if (err !== undefined) instance.span.recordException(err as Error);
    instance.span.end();
    if (why === 'fenced') {
      this.#options.observer?.onFenced?.({ saga: instance.definition.name });
      this.#options.logger?.warn(
        { saga: instance.id, name: instance.definition.name },
        'lost the lease of a saga; the process that took it over continues it',
      );
    }
    this.#settled.settle(instance.id);
  }
}
