import { ReplikitError } from '../errors.js';

/** Why a saga operation failed. */
export type SagaErrorCode =
  /** A saga definition breaks a rule (duplicate step names, a compensation after the pivot, ...). */
  | 'SAGA_INVALID_DEFINITION'
  /** The engine was asked to run a saga (name and version) it was not given. */
  | 'SAGA_UNKNOWN'
  /** No saga instance has that id. */
  | 'SAGA_NOT_FOUND'
  /** The operation does not apply to the saga's current status (retrying a completed saga, ...). */
  | 'SAGA_INVALID_STATE'
  /** The saga's input does not match the definition's input schema. */
  | 'SAGA_INVALID_INPUT'
  /**
   * Compensation was asked for while the saga's pivot step may have gone through (its call was
   * made and its outcome is not known): undoing the steps before it could leave half a saga.
   */
  | 'SAGA_PIVOT_IN_DOUBT'
  /**
   * A saga was started under a key that an earlier start used with another fingerprint (another
   * request): nothing was started, and the first saga stands. `details` holds the `key` and the
   * first saga's `id`.
   */
  | 'SAGA_KEY_REUSED'
  /** A checkpoint was refused: another process holds the saga's lease now (its epoch moved on). */
  | 'SAGA_FENCED'
  /**
   * A local step's code queried its transaction after the engine abandoned the attempt (it timed
   * out, or the saga's lease was lost): the transaction was rolled back and the query refused.
   */
  | 'SAGA_STEP_ABANDONED'
  | 'SAGA_CLOSED';

/** An error of the saga engine. */
export class SagaError extends ReplikitError {
  override readonly name = 'SagaError';
  declare readonly code: SagaErrorCode;

  constructor(
    code: SagaErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}

/**
 * Thrown by a step to say it failed for a business reason and did nothing (insufficient stock, a
 * declined card): the step is not retried and not compensated, and the steps before it are.
 * Any other error leaves the step's outcome unknown: it is retried with the same idempotency key,
 * and compensated if it never succeeds.
 *
 * ```ts
 * if (available < qty) throw new StepRejected('insufficient_stock', `only ${available} of ${sku} left`);
 * ```
 */
export class StepRejected extends ReplikitError {
  override readonly name = 'StepRejected';
  /** A short, stable reason such as `insufficient_stock`, recorded as the saga's failure reason. */
  readonly reason: string;

  constructor(reason: string, message: string, details: Record<string, unknown> = {}) {
    super('SAGA_STEP_REJECTED', message, { details });
    this.reason = reason;
  }
}
