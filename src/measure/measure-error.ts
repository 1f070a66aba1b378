import { ReplikitError } from '../errors.js';

/**
 * Codes of {@link MeasureError}:
 * - `MEASURE_NOT_A_PAIR`: the servers given are not a primary and replicas of it; nothing was
 *   written;
 * - `MEASURE_CONNECT`: a server could not be reached or failed during the run;
 * - `MEASURE_CLEANUP`: the measurement table could not be dropped (its name is in `details.table`).
 */
export type MeasureErrorCode = 'MEASURE_NOT_A_PAIR' | 'MEASURE_CONNECT' | 'MEASURE_CLEANUP';

/** Why a staleness measurement refused to run or failed. */
export class MeasureError extends ReplikitError {
  override readonly name: string = 'MeasureError';
  declare readonly code: MeasureErrorCode;

  constructor(
    code: MeasureErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
