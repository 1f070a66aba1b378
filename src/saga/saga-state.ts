import { ExponentialBackoff, type IBackoff, type IRetryBackoffContext } from 'cockatiel';

import type { Json, SagaDefinition, SagaFailure, StepRetryOptions } from './define-saga.js';

/**
 * Where a saga is:
 * - `running`: steps are running forward;
 * - `compensating`: undoing completed steps in reverse order;
 * - `completed`, `compensated`: finished;
 * - `needs_attention`: a compensation (or a step after the pivot) kept failing; a person decides,
 *   then retries it.
 */
export type SagaStatus =
  'running' | 'compensating' | 'completed' | 'compensated' | 'needs_attention';

/** Statuses a saga never leaves. */
export const TERMINAL_STATUSES: readonly SagaStatus[] = ['completed', 'compensated'];

/** Why a saga needs attention. */
export interface SagaAttention {
  /** `forward` when a step after the pivot kept failing, `compensate` when a compensation did. */
  readonly phase: 'forward' | 'compensate';
  readonly step: string;
  readonly message: string;
}

/**
 * Everything needed to resume a saga, as saved in its log row: any process can continue from it.
 * It is also the record of intent: the step (or compensation) about to run and its attempt number
 * are saved before it runs, so a step whose process died is known to have maybe run. Step records
 * (a row per step and phase, written when an attempt ends) are for people; this state alone
 * decides what happens next.
 */
export interface SagaState {
  readonly status: SagaStatus;
  /** While running: the index of the step to run next. */
  readonly stepIndex: number;
  /** The attempt number of the pending step or compensation (1 for the first). */
  readonly attempt: number;
  /** Outputs of completed steps by name; a step that returned nothing has `null`. */
  readonly outputs: Readonly<Record<string, Json>>;
  readonly failure: SagaFailure | null;
  /** Indices of the steps still to compensate, the next one first. */
  readonly pending: readonly number[];
  readonly attention: SagaAttention | null;
  /**
   * The intent to call the pivot step was logged: from then on the pivot may have taken effect,
   * so the saga can no longer be compensated by force. Only written for a remote pivot; a local
   * one commits its effect with its checkpoint, so while the saga is at it, it has not happened.
   */
  readonly pivotStarted: boolean;
}

/** What to do next with a saga. */
export type SagaAction =
  | { readonly kind: 'run'; readonly index: number }
  | { readonly kind: 'compensate'; readonly index: number }
  /** Nothing left to run: write the final checkpoint (and the definition's hook). */
  | { readonly kind: 'finish'; readonly status: 'completed' | 'compensated' }
  /** Finished or waiting for a person. */
  | { readonly kind: 'none' };

/** How one attempt of a step or compensation ended. */
export type AttemptOutcome =
  | { readonly kind: 'completed'; readonly output: Json }
  /** The step said it did nothing, for a business reason. */
  | { readonly kind: 'rejected'; readonly reason: string; readonly message: string }
  /** It failed in a way that may or may not have had an effect. */
  | { readonly kind: 'failed'; readonly message: string }
  /** Its service's circuit breaker is open: it did not run. */
  | { readonly kind: 'circuit_open'; readonly parkMs: number };

/** One row of the step log: a step's forward run or its compensation. */
export interface StepLogEntry {
  readonly index: number;
  readonly phase: 'run' | 'compensate';
  readonly name: string;
  readonly status: 'running' | 'completed' | 'rejected' | 'failed' | 'retrying' | 'parked';
  readonly attempts: number;
  readonly output?: Json;
  readonly error?: Json;
  readonly finished: boolean;
}

/** A state change, with the log rows to write in the same statement and the durable delay before the next action. */
export interface Transition {
  readonly state: SagaState;
  readonly log: readonly StepLogEntry[];
  /** Milliseconds before the next action may run; saved as the saga's `next_attempt_at`. */
  readonly delayMs: number;
}

const DEFAULT_STEP_ATTEMPTS = 3;
const DEFAULT_COMPENSATION_ATTEMPTS = 5;
const DEFAULT_BACKOFF = new ExponentialBackoff({ initialDelay: 100, maxDelay: 10_000 });

/** The state a new saga starts in: about to run its first step, attempt 1. */
export function initialTransition(definition: SagaDefinition<unknown>): Transition {
  const first = definition.steps[0];
  if (first === undefined) throw new RangeError('a saga needs at least one step');
  return {
    state: {
      status: 'running',
      stepIndex: 0,
      attempt: 1,
      outputs: {},
      failure: null,
      pending: [],
      attention: null,
      pivotStarted: false,
    },
    log: [],
    delayMs: 0,
  };
}

/** What to do next, from the saved state alone. */
export function nextAction(definition: SagaDefinition<unknown>, state: SagaState): SagaAction {
  switch (state.status) {
    case 'running':
      return state.stepIndex < definition.steps.length
        ? { kind: 'run', index: state.stepIndex }
        : { kind: 'finish', status: 'completed' };
    case 'compensating': {
      const next = state.pending[0];
      return next === undefined
        ? { kind: 'finish', status: 'compensated' }
        : { kind: 'compensate', index: next };
    }
    default:
      return { kind: 'none' };
  }
}

/**
 * The steps to compensate when the saga fails at step `failedIndex`, in the order to undo them:
 * the failed step first when its outcome is unknown (it may have had an effect), then every step
 * before it, latest first. Steps without a compensation (the pivot) are skipped.
 */
export function compensationPlan(
  definition: SagaDefinition<unknown>,
  failedIndex: number,
  failedOutcomeUnknown: boolean,
): number[] {
  const plan: number[] = [];
  for (let index = Math.min(failedIndex, definition.steps.length - 1); index >= 0; index--) {
    if (index === failedIndex && !failedOutcomeUnknown) continue;
    if (definition.steps[index]?.compensate !== undefined) plan.push(index);
  }
  return plan;
}

/** The delay before attempt `attempt + 1`, from the step's backoff. */
export function retryDelay(
  options: StepRetryOptions | undefined,
  attempt: number,
  error: Error,
): number {
  const factory = options?.backoff ?? DEFAULT_BACKOFF;
  const signal = new AbortController().signal;
  const at = (n: number): IRetryBackoffContext<unknown> => ({
    attempt: n,
    result: { error },
    signal,
  });
  let backoff: IBackoff<IRetryBackoffContext<unknown>> = factory.next(at(1));
  for (let n = 2; n <= attempt; n++) backoff = backoff.next(at(n));
  return Math.max(0, Math.round(backoff.duration));
}

/** The log row of an attempt that ended with `status` (or began, when `running`); a running, retrying or parked step is not finished. */
function logEntry(
  index: number,
  phase: StepLogEntry['phase'],
  name: string,
  status: StepLogEntry['status'],
  attempts: number,
  details: Pick<StepLogEntry, 'output' | 'error'> = {},
): StepLogEntry {
  return {
    index,
    phase,
    name,
    status,
    attempts,
    ...details,
    finished: status !== 'running' && status !== 'retrying' && status !== 'parked',
  };
}

function stepName(definition: SagaDefinition<unknown>, index: number): string {
  const step = definition.steps[index];
  if (step === undefined) throw new RangeError(`saga ${definition.key} has no step ${index}`);
  return step.name;
}

/**
 * Starts compensating. With nothing to undo the plan is empty and the next action is to finish
 * (which runs the definition's `onCompensated` hook in the final checkpoint's transaction).
 */
function beginCompensation(
  state: SagaState,
  plan: number[],
  failure: SagaFailure,
  log: StepLogEntry[],
): Transition {
  return {
    state: {
      ...state,
      status: 'compensating',
      attempt: 1,
      failure,
      pending: plan,
      attention: null,
    },
    log,
    delayMs: 0,
  };
}

/**
 * The state after an attempt of the saga's current action ended with `outcome`. Pure: the engine
 * writes the result as one checkpoint, fenced by the saga's lease epoch.
 */
export function transition(
  definition: SagaDefinition<unknown>,
  state: SagaState,
  action: SagaAction,
  outcome: AttemptOutcome,
): Transition {
  if (action.kind === 'run') return afterStep(definition, state, action.index, outcome);
  if (action.kind === 'compensate')
    return afterCompensation(definition, state, action.index, outcome);
  throw new RangeError(`no attempt to record for a "${action.kind}" action`);
}

/** The final state once the saga has nothing left to run. */
export function finishTransition(
  state: SagaState,
  status: 'completed' | 'compensated',
): Transition {
  return {
    state: { ...state, status, attempt: 0, pending: [], attention: null },
    log: [],
    delayMs: 0,
  };
}

function afterStep(
  definition: SagaDefinition<unknown>,
  state: SagaState,
  index: number,
  outcome: AttemptOutcome,
): Transition {
  const step = definition.steps[index];
  if (step === undefined) throw new RangeError(`saga ${definition.key} has no step ${index}`);
  const attempts = state.attempt;
  switch (outcome.kind) {
    case 'completed': {
      const log: StepLogEntry[] = [
        logEntry(index, 'run', step.name, 'completed', attempts, { output: outcome.output }),
      ];
      const next = definition.steps[index + 1];
      // The last step's checkpoint is the saga's completion: one write, not two.
      return {
        state: {
          ...state,
          status: next === undefined ? 'completed' : state.status,
          stepIndex: index + 1,
          attempt: next === undefined ? 0 : 1,
          outputs: { ...state.outputs, [step.name]: outcome.output },
        },
        log,
        delayMs: 0,
      };
    }
    case 'circuit_open':
      return {
        state,
        log: [logEntry(index, 'run', step.name, 'parked', attempts)],
        delayMs: outcome.parkMs,
      };
    case 'rejected':
    case 'failed': {
      const error = { kind: outcome.kind, message: outcome.message };
      const maxAttempts = step.retry?.maxAttempts ?? DEFAULT_STEP_ATTEMPTS;
      const pastPivot = index > definition.pivotIndex;
      // Whether going back is still safe when the step's outcome stays unknown: not at the pivot
      // (it may have gone through, and it cannot be undone) nor past it.
      const noWayBack = index >= definition.pivotIndex;
      // A rejection is final: retrying cannot change a business answer. Past the pivot there is no
      // going back, so a step there is retried however it failed, until its budget runs out.
      if (outcome.kind === 'failed' || pastPivot) {
        if (attempts < maxAttempts) {
          return {
            state: { ...state, attempt: attempts + 1 },
            log: [logEntry(index, 'run', step.name, 'retrying', attempts, { error })],
            delayMs: retryDelay(step.retry, attempts, new Error(outcome.message)),
          };
        }
        if (noWayBack) {
          return {
            state: {
              ...state,
              status: 'needs_attention',
              attention: { phase: 'forward', step: step.name, message: outcome.message },
            },
            log: [logEntry(index, 'run', step.name, 'failed', attempts, { error })],
            delayMs: 0,
          };
        }
      }
      const rejected = outcome.kind === 'rejected';
      const failure: SagaFailure = {
        step: step.name,
        reason: rejected ? outcome.reason : 'retries_exhausted',
        message: outcome.message,
      };
      const log: StepLogEntry[] = [
        logEntry(index, 'run', step.name, rejected ? 'rejected' : 'failed', attempts, { error }),
      ];
      return beginCompensation(state, compensationPlan(definition, index, !rejected), failure, log);
    }
  }
}

function afterCompensation(
  definition: SagaDefinition<unknown>,
  state: SagaState,
  index: number,
  outcome: AttemptOutcome,
): Transition {
  const step = definition.steps[index];
  if (step === undefined) throw new RangeError(`saga ${definition.key} has no step ${index}`);
  const attempts = state.attempt;
  switch (outcome.kind) {
    case 'completed': {
      const pending = state.pending.filter((candidate) => candidate !== index);
      const log: StepLogEntry[] = [logEntry(index, 'compensate', step.name, 'completed', attempts)];
      const next = pending[0];
      return {
        state: {
          ...state,
          status: next === undefined ? 'compensated' : state.status,
          attempt: next === undefined ? 0 : 1,
          pending,
        },
        log,
        delayMs: 0,
      };
    }
    case 'circuit_open':
      return {
        state,
        log: [logEntry(index, 'compensate', step.name, 'parked', attempts)],
        delayMs: outcome.parkMs,
      };
    case 'rejected':
    case 'failed': {
      // A compensation is retried until it succeeds; "rejected" means nothing here.
      const error = { kind: outcome.kind, message: outcome.message };
      const maxAttempts = step.compensationRetry?.maxAttempts ?? DEFAULT_COMPENSATION_ATTEMPTS;
      if (attempts < maxAttempts) {
        return {
          state: { ...state, attempt: attempts + 1 },
          log: [logEntry(index, 'compensate', step.name, 'retrying', attempts, { error })],
          delayMs: retryDelay(step.compensationRetry, attempts, new Error(outcome.message)),
        };
      }
      return {
        state: {
          ...state,
          status: 'needs_attention',
          attention: { phase: 'compensate', step: step.name, message: outcome.message },
        },
        log: [logEntry(index, 'compensate', step.name, 'failed', attempts, { error })],
        delayMs: 0,
      };
    }
  }
}

/**
 * The transition that logs the intent to call the pivot, to write (fenced) before its first
 * attempt; undefined when there is none to write: the step is not the pivot, the pivot is local
 * (its effect commits with its checkpoint, or not at all), or the intent is logged already.
 */
export function pivotIntent(
  definition: SagaDefinition<unknown>,
  state: SagaState,
  index: number,
): Transition | undefined {
  const step = definition.steps[index];
  if (index !== definition.pivotIndex || step === undefined || step.local === true)
    return undefined;
  if (state.pivotStarted) return undefined;
  return {
    state: { ...state, pivotStarted: true },
    log: [logEntry(index, 'run', step.name, 'running', state.attempt)],
    delayMs: 0,
  };
}

/** What a person's request to compensate a saga comes to. */
export type ForcedCompensation =
  | { readonly kind: 'accepted'; readonly transition: Transition }
  | {
      readonly kind: 'refused';
      /**
       * `finished`: nothing to compensate; `past_pivot`: the pivot completed; `pivot_in_doubt`:
       * the pivot's call was made and its outcome is not known (it may have gone through).
       */
      readonly reason: 'finished' | 'past_pivot' | 'pivot_in_doubt';
    };

/**
 * What a person's request to compensate a saga that is running or needs attention comes to.
 * Undoing the steps before the pivot is right only if the pivot has not happened and will not:
 * the caller applies the transition under the saga's row lock while raising its epoch (so the
 * holder cannot log the pivot's intent afterwards), and this refuses once that intent is logged.
 */
export function forcedCompensation(
  definition: SagaDefinition<unknown>,
  state: SagaState,
): ForcedCompensation {
  const accepted = (transition: Transition): ForcedCompensation => ({
    kind: 'accepted',
    transition,
  });
  if (state.status === 'compensating') return accepted({ state, log: [], delayMs: 0 });
  if (state.status === 'needs_attention' && state.attention?.phase === 'compensate')
    return accepted(resumeTransition(state));
  if (state.status !== 'running' && state.status !== 'needs_attention')
    return { kind: 'refused', reason: 'finished' };
  if (state.stepIndex > definition.pivotIndex) return { kind: 'refused', reason: 'past_pivot' };
  if (state.stepIndex === definition.pivotIndex && state.pivotStarted)
    return { kind: 'refused', reason: 'pivot_in_doubt' };
  const index = Math.min(state.stepIndex, definition.steps.length - 1);
  const name = stepName(definition, index);
  // The current step may be running in another process right now: its outcome is unknown.
  const plan = compensationPlan(definition, index, !(name in state.outputs));
  return accepted(
    beginCompensation(
      state,
      plan,
      { step: name, reason: 'compensation_requested', message: 'compensation was requested' },
      [],
    ),
  );
}

/** The state after a person retries a saga that needs attention: the failed action runs again with a fresh budget. */
export function resumeTransition(state: SagaState): Transition {
  const status = state.attention?.phase === 'compensate' ? 'compensating' : 'running';
  return { state: { ...state, status, attempt: 1, attention: null }, log: [], delayMs: 0 };
}
