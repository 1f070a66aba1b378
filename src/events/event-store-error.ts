import { ReplikitError } from '../errors.js';

/** Why an event store operation failed. */
export type EventStoreErrorCode =
  /**
   * The stream was not at the version the append expected; nothing was written. `details` holds
   * `streamId`, `expected` (a version, `no_stream` or `stream_exists`) and `actual` (the stream's
   * version, 0 when it does not exist).
   */
  | 'EVENTSTORE_CONCURRENCY'
  /**
   * Some of the appended event ids are already stored, but not as this exact append (another
   * stream, or only part of the batch): re-appending is idempotent only for the same events.
   */
  | 'EVENTSTORE_EVENT_ID_CONFLICT'
  /** The append's arguments are unusable (no type, a schema version below 1, an id that is not a UUID). */
  | 'EVENTSTORE_INVALID_EVENT'
  /** An upcaster chain is ill-formed (two upcasters for one type and version, a loop). */
  | 'EVENTSTORE_UPCASTER_INVALID'
  /** A projection did not reach the required position within the wait bound. */
  | 'PROJECTION_WAIT_TIMEOUT'
  /** As many reads as the read model's `waitBulkhead` allows already wait: refused at once. */
  | 'PROJECTION_WAIT_BUSY'
  /**
   * A position to wait for is past the last event in the log: no append returned it (forged, or
   * from another store). Refused instead of waited on; `details` holds `target` and `last`.
   */
  | 'PROJECTION_POSITION_AHEAD'
  /** A projection name is unknown, or a version is in a state the operation cannot use. */
  | 'PROJECTION_STATE'
  /** The store or the runner has been closed. */
  | 'EVENTSTORE_CLOSED';

/** An error of the event store or its projections. */
export class EventStoreError extends ReplikitError {
  override readonly name = 'EventStoreError';
  declare readonly code: EventStoreErrorCode;

  constructor(
    code: EventStoreErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
