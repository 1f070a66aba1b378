import { ReplikitError } from '../errors.js';

/** Why a routed read or a consistency token was refused. */
export type RoutingErrorCode =
  /** The token is not one replikit wrote: wrong shape, version or field. */
  | 'TOKEN_MALFORMED'
  /** The token names a WAL position the primary has not reached: forged, or from another cluster. */
  | 'TOKEN_AHEAD'
  /** The consistency level is unknown or its parameter is out of range. */
  | 'CONSISTENCY_INVALID'
  /** No replica caught up within the wait bound and the read was told not to fall back. */
  | 'REPLICA_WAIT_TIMEOUT'
  /**
   * As many reads as the cluster's `waitBulkhead` allows already wait for a replica: this one is
   * refused at once rather than queued.
   */
  | 'REPLICA_WAIT_BUSY'
  /** The read needs a replica or the primary and none can serve it. */
  | 'NO_NODE_AVAILABLE'
  | 'CLUSTER_CLOSED';

/** An error of the routing layer; `details` carries the positions or bounds involved. */
export class RoutingError extends ReplikitError {
  override readonly name = 'RoutingError';
  declare readonly code: RoutingErrorCode;

  constructor(
    code: RoutingErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
