import { ReplikitError } from '../errors.js';

/** Why a distributed transaction did not commit, or the coordinator could not start. */
export type TwoPhaseErrorCode =
  /** A participant has `max_prepared_transactions = 0`: PREPARE TRANSACTION would fail. */
  | 'TWOPC_NOT_ENABLED'
  /** A participant failed during the work or the prepare phase; everything was rolled back. */
  | 'TWOPC_ABORTED'
  /** The prepare phase did not finish within its bound; everything was rolled back. */
  | 'TWOPC_PREPARE_TIMEOUT'
  /**
   * Recording the decision failed in a way that leaves its outcome unknown (the connection to the
   * coordinator's database broke). Recovery settles it from the decision table: all commit or all
   * roll back.
   */
  | 'TWOPC_IN_DOUBT'
  /**
   * The decision was to commit, but a participant's prepared part had been rolled back by someone
   * other than this coordinator (another coordinator, or ROLLBACK PREPARED by hand), or the other
   * way round: committed on some participants only. Recovery cannot repair it; a person must.
   * `details` lists `committed`, `pending`, `rolledBack` and `unknown` participants.
   */
  | 'TWOPC_PARTIAL_COMMIT'
  /** The work named a participant the coordinator does not know. */
  | 'TWOPC_UNKNOWN_PARTICIPANT'
  | 'TWOPC_CLOSED';

/** An error of the two-phase commit coordinator. */
export class TwoPhaseError extends ReplikitError {
  override readonly name = 'TwoPhaseError';
  declare readonly code: TwoPhaseErrorCode;

  constructor(
    code: TwoPhaseErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
