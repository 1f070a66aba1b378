import type { IBackoffFactory, IRetryBackoffContext } from 'cockatiel';

import { SagaError } from './saga-error.js';

/** A value that survives a round trip through `jsonb`: step outputs and saga inputs are stored. */
export type Json =
  null | boolean | number | string | readonly Json[] | { readonly [key: string]: Json };

/** What a local step or hook may do on the saga database, inside the transaction of its checkpoint. */
export interface SagaTransaction {
  query<R extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<{ rows: R[]; rowCount: number | null }>;
}

/** What every step, compensation and hook is told. */
export interface SagaContext<I> {
  /** The saga instance's id. */
  readonly sagaId: string;
  /** The saga's name. */
  readonly saga: string;
  readonly input: I;
  /** Outputs of the steps completed so far, by step name. */
  readonly outputs: Readonly<Record<string, Json>>;
  /** Aborted when the step times out, the saga's lease is lost, or the engine closes. */
  readonly signal: AbortSignal;
}

/** What a step's `run` is told. */
export interface StepContext<I> extends SagaContext<I> {
  readonly step: string;
  /** 1 on the first attempt. A step resumed after a crash may already have run with this key. */
  readonly attempt: number;
  /**
   * Stable across attempts and processes (`<saga id>/<step>`): pass it to the service the step
   * calls so that a repeated call has no second effect.
   */
  readonly idempotencyKey: string;
}

/** Why a saga is compensating, as recorded in the saga log. */
export interface SagaFailure {
  /** The step that failed (or was running when compensation was requested). */
  readonly step: string;
  /** `rejected` reasons come from {@link StepRejected}; otherwise `retries_exhausted` or `compensation_requested`. */
  readonly reason: string;
  readonly message: string;
}

/** What a step's `compensate` is told. */
export interface CompensationContext<I> extends StepContext<I> {
  /** `completed` if the step succeeded; `unknown` if it failed in a way that may have had an effect. */
  readonly outcome: 'completed' | 'unknown';
  /** The step's output when it completed. */
  readonly output: Json | undefined;
  /** The idempotency key the step ran with: name the effect to undo by it. */
  readonly forwardKey: string;
  readonly failure: SagaFailure;
}

/** Durable retries of a step or compensation: the delay before the next attempt is saved in the saga log. */
export interface StepRetryOptions {
  /** Attempts in all, the first included. Default 3 for steps, 5 for compensations. */
  readonly maxAttempts?: number;
  /** Delays between attempts. Default `new ExponentialBackoff({ initialDelay: 100, maxDelay: 10_000 })`. */
  readonly backoff?: IBackoffFactory<IRetryBackoffContext<unknown>>;
}

interface StepBase {
  /** Unique within the saga: lower-case letters, digits and `_`. Names the step in the log, metrics and spans. */
  readonly name: string;
  /**
   * Bound on one attempt; the attempt's signal is aborted and it counts as failed (outcome unknown).
   * A local step's attempt that times out is abandoned with its transaction: the transaction is
   * rolled back and its connection closed, the `tx` the step was given refuses every later query
   * (`SAGA_STEP_ABANDONED`), and the server stops each of its statements after the same time
   * (`statement_timeout`), so code that outlives its timeout can never commit a second effect.
   */
  readonly timeoutMs?: number;
  readonly retry?: StepRetryOptions;
  readonly compensationRetry?: StepRetryOptions;
  /**
   * Marks the point of no return: once it completes, the saga cannot be compensated, and the steps
   * after it must be retriable (no `compensate`; they are retried until they succeed, then the
   * saga needs attention).
   */
  readonly pivot?: boolean;
}

/**
 * A step whose effect is on another service. It runs at least once, with a stable idempotency
 * key; the checkpoint is written after it returns.
 */
export interface RemoteStep<I> extends StepBase {
  readonly local?: false;
  /** The downstream service it calls: its circuit breaker guards every call of every saga. */
  readonly service?: string;
  run(context: StepContext<I>): Promise<Json | void>;
  compensate?(context: CompensationContext<I>): Promise<void>;
}

/**
 * A step whose effect is in the saga's own database: `run` gets the transaction that also writes
 * the step's checkpoint, so the effect happens exactly once.
 */
export interface LocalStep<I> extends StepBase {
  readonly local: true;
  run(context: StepContext<I>, tx: SagaTransaction): Promise<Json | void>;
  compensate?(context: CompensationContext<I>, tx: SagaTransaction): Promise<void>;
}

export type SagaStep<I> = RemoteStep<I> | LocalStep<I>;

/** Anything with a `parse` that returns the input or throws, such as a zod schema. */
export interface InputSchema<I> {
  parse(value: unknown): I;
}

/** Options for {@link defineSaga}. */
export interface SagaDefinitionOptions<I> {
  /** Lower-case letters, digits and `_`. */
  readonly name: string;
  /**
   * Instances remember the version they started with and resume only on an engine that has that
   * version: change the steps of a saga under a new version and keep the old one registered until
   * its instances have finished.
   */
  readonly version: number;
  readonly steps: readonly SagaStep<I>[];
  /** Checks the input when a saga starts and when it resumes from the log. */
  readonly input?: InputSchema<I>;
  /** Runs in the transaction that marks the saga completed (exactly once). */
  onCompleted?(context: SagaContext<I>, tx: SagaTransaction): Promise<void>;
  /** Runs in the transaction that marks the saga compensated (exactly once). */
  onCompensated?(
    context: SagaContext<I> & { readonly failure: SagaFailure },
    tx: SagaTransaction,
  ): Promise<void>;
}

/** A checked saga definition; see {@link defineSaga}. */
export interface SagaDefinition<I = unknown> extends SagaDefinitionOptions<I> {
  /** `<name>@<version>`, the key the engine and the log know it by. */
  readonly key: string;
  /** Index of the pivot step, or `steps.length` when there is none (every step compensable). */
  readonly pivotIndex: number;
}

const NAME = /^[a-z][a-z0-9_]{0,62}$/;

/**
 * Defines a saga: steps that run in order, and compensations that undo the completed ones in
 * reverse order when a later step fails.
 *
 * ```ts
 * const order = defineSaga<OrderInput>({
 *   name: 'order',
 *   version: 1,
 *   steps: [
 *     { name: 'create_order', local: true, run: (ctx, tx) => createOrder(tx, ctx.input), compensate: (ctx, tx) => cancelOrder(tx, ctx.input) },
 *     { name: 'charge', service: 'payments', run: (ctx) => payments.charge(ctx.idempotencyKey, ctx.input.amount), compensate: (ctx) => payments.refund(ctx.idempotencyKey) },
 *   ],
 * });
 * ```
 *
 * @throws SagaError `SAGA_INVALID_DEFINITION` naming the rule broken.
 */
export function defineSaga<I>(options: SagaDefinitionOptions<I>): SagaDefinition<I> {
  const invalid = (message: string): SagaError =>
    new SagaError('SAGA_INVALID_DEFINITION', `saga "${options.name}": ${message}`);
  if (!NAME.test(options.name)) throw invalid('the name must be lower-case letters, digits and _');
  if (!Number.isInteger(options.version) || options.version < 1)
    throw invalid('the version must be a positive integer');
  if (options.steps.length === 0) throw invalid('a saga needs at least one step');
  const names = new Set<string>();
  let pivotIndex = options.steps.length;
  options.steps.forEach((step, index) => {
    if (!NAME.test(step.name))
      throw invalid(`step "${step.name}": the name must be lower-case letters, digits and _`);
    if (names.has(step.name)) throw invalid(`two steps are named "${step.name}"`);
    names.add(step.name);
    if (step.timeoutMs !== undefined && !(step.timeoutMs > 0))
      throw invalid(`step "${step.name}": timeoutMs must be positive`);
    for (const retry of [step.retry, step.compensationRetry]) {
      if (
        retry?.maxAttempts !== undefined &&
        !(Number.isInteger(retry.maxAttempts) && retry.maxAttempts >= 1)
      )
        throw invalid(`step "${step.name}": maxAttempts must be an integer of at least 1`);
    }
    if (step.pivot === true) {
      if (pivotIndex !== options.steps.length) throw invalid('only one step can be the pivot');
      pivotIndex = index;
    }
    const afterPivot = index > pivotIndex;
    if (step.pivot !== true && !afterPivot && step.compensate === undefined)
      throw invalid(
        `step "${step.name}" comes before the pivot and needs a compensate (use an empty one for a step with nothing to undo)`,
      );
    if (afterPivot && step.compensate !== undefined)
      throw invalid(
        `step "${step.name}" comes after the pivot, so it cannot be compensated: it must be retriable`,
      );
    if (step.pivot === true && step.compensate !== undefined)
      throw invalid(`the pivot step "${step.name}" cannot have a compensate`);
  });
  return { ...options, key: sagaKey(options.name, options.version), pivotIndex };
}

/** `<name>@<version>`. */
export function sagaKey(name: string, version: number): string {
  return `${name}@${version}`;
}
