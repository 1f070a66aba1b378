import { AsyncLocalStorage } from 'node:async_hooks';

import type { Consistency } from './consistency.js';
import { mergeTokens, type ConsistencyToken } from './consistency-token.js';

/**
 * The consistency state of one request or job, carried through its async calls by
 * AsyncLocalStorage: the token it arrived with (merged with every write it makes), the
 * consistency it asked for, and where its last read was served.
 */
export interface ConsistencySession {
  token: ConsistencyToken | undefined;
  consistency: Consistency | undefined;
  /** `primary` or a replica's name: where the latest routed read of this session ran. */
  servedBy: string | undefined;
  /** Set when a read could not trust the session's token (another cluster or timeline). */
  tokenUntrusted: boolean;
  /**
   * Ends the session's waits (for a replica, for a projection) when it aborts, with its reason:
   * a request's time budget, say, or its client gone. A read given a `signal` of its own uses that.
   */
  signal?: AbortSignal;
}

const storage = new AsyncLocalStorage<ConsistencySession>();

/**
 * Runs `fn` with a session, so that reads and writes inside it pick up and update its token.
 *
 * ```ts
 * const session = newSession({ token: decodeToken(header) });
 * await withSession(session, () => handler());
 * response.setHeader('X-Consistency-Token', encodeToken(session.token!));
 * ```
 */
export function withSession<T>(session: ConsistencySession, fn: () => T): T {
  return storage.run(session, fn);
}

/** A new session, optionally with a token and a consistency. */
export function newSession(
  init: { token?: ConsistencyToken; consistency?: Consistency } = {},
): ConsistencySession {
  return {
    token: init.token,
    consistency: init.consistency,
    servedBy: undefined,
    tokenUntrusted: false,
  };
}

/** The session of the current async context, if any. */
export function currentSession(): ConsistencySession | undefined {
  return storage.getStore();
}

/** Merges `token` into the current session's token, if there is a session. */
export function recordToken(token: ConsistencyToken | undefined): void {
  const session = storage.getStore();
  if (session !== undefined && token !== undefined)
    session.token = mergeTokens(session.token, token);
}
