import type { SagaTransaction } from './define-saga.js';
import { SagaError } from './saga-error.js';

/** The transaction a local step is given, and how the engine takes it back. */
export interface StepTransaction {
  /** What the step's code queries through. */
  readonly tx: SagaTransaction;
  /** From now on every query through `tx` is refused. */
  readonly revoke: () => void;
}

/**
 * Hands a local step its transaction through a wrapper the engine can revoke. A step abandoned at
 * its timeout (or when the saga's lease is lost) may still be running; if it kept the client, its
 * next query would run on a connection that no longer holds its transaction (in autocommit, or in
 * another saga's transaction once the connection is back in the pool) and commit an effect the saga
 * log knows nothing about. Revoking the wrapper makes such a query fail instead.
 */
export function stepTransaction(client: SagaTransaction, step: string): StepTransaction {
  let revoked = false;
  return {
    tx: {
      query: <R extends Record<string, unknown> = Record<string, unknown>>(
        sql: string,
        params?: readonly unknown[],
      ) =>
        revoked
          ? Promise.reject(
              new SagaError(
                'SAGA_STEP_ABANDONED',
                `step ${step} was abandoned (it timed out or its saga moved on): its transaction is gone`,
                { details: { step } },
              ),
            )
          : client.query<R>(sql, params),
    },
    revoke: () => {
      revoked = true;
    },
  };
}
