import { parse as parseCookies, serialize as serializeCookie } from 'cookie';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import onHeaders from 'on-headers';

import {
  type Cluster,
  decodeToken,
  encodeToken,
  mergeTokens,
  newSession,
  parseConsistency,
  withSession,
  type Consistency,
  type ConsistencySession,
  type ConsistencyToken,
} from '../routing/index.js';

/** The HTTP contract of read routing; any client can rely on these names. */
export const CONSISTENCY_HEADERS = {
  /** Request: `strong` | `read-your-writes` | `monotonic` | `bounded-staleness=<ms>` | `eventual` | `sticky-window=<ms>`. */
  consistency: 'X-Consistency',
  /** Request and response: the token from an earlier response; every response carries the merged one. */
  token: 'X-Consistency-Token',
  /** Response to a read: `primary` or the replica's name. */
  servedBy: 'X-Served-By',
  /** Response: `untrusted` when the request's token came from another cluster or timeline. */
  tokenStatus: 'X-Consistency-Token-Status',
} as const;

/** Options for {@link consistencyMiddleware}. */
export interface ConsistencyMiddlewareOptions {
  /** Cookie that may carry the token too (browsers). Default `replikit_token`; `false` to ignore cookies. */
  readonly cookie?: string | false;
  /**
   * The cluster the tokens come from. Given, every request's token is checked against it before
   * any route runs ({@link Cluster.admitSessionToken}): one ahead of its primary is refused (400
   * `TOKEN_AHEAD`), one of another cluster or timeline is dropped and the response says
   * `X-Consistency-Token-Status: untrusted`, whatever the route does. Without it, only the
   * cluster's own reads and writes check the token, and a route that never reaches the cluster
   * (or only at `strong`) hands back whatever token it was sent.
   */
  readonly cluster?: Pick<Cluster, 'admitSessionToken'>;
}

function parseTokenHeader(value: string | undefined): ConsistencyToken | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  return decodeToken(value.trim());
}

/**
 * Express middleware that makes every request a consistency session: it reads `X-Consistency`
 * and `X-Consistency-Token` (and the token cookie), runs the rest of the request inside the
 * session so the cluster picks them up, and answers with the merged token and, for reads, where
 * they were served.
 *
 * A malformed token, an unknown consistency level or (given `cluster`) a token ahead of the
 * primary is passed to `next` as a `RoutingError`, which the problem-details handler turns into a
 * 400.
 *
 * ```ts
 * app.use(consistencyMiddleware({ cluster }));
 * app.get('/users/:id', async (req, res) => {
 *   const { rows } = await cluster.read('select * from users where id = $1', [req.params.id]);
 *   res.json(rows[0]);
 * });
 * ```
 */
export function consistencyMiddleware(options: ConsistencyMiddlewareOptions = {}): RequestHandler {
  const cookieName = options.cookie ?? 'replikit_token';
  return (req: Request, res: Response, next: NextFunction): void => {
    let session: ConsistencySession;
    let cookieToken: ConsistencyToken | undefined;
    let requestToken: ConsistencyToken | undefined;
    try {
      const consistencyHeader = req.get(CONSISTENCY_HEADERS.consistency);
      const consistency: Consistency | undefined =
        consistencyHeader === undefined || consistencyHeader.trim() === ''
          ? undefined
          : parseConsistency(consistencyHeader);
      const headerToken = parseTokenHeader(req.get(CONSISTENCY_HEADERS.token));
      if (cookieName !== false && req.headers.cookie !== undefined) {
        cookieToken = parseTokenHeader(parseCookies(req.headers.cookie)[cookieName]);
      }
      const token = mergeTokens(cookieToken, headerToken);
      requestToken = token;
      session = newSession({
        ...(token === undefined ? {} : { token }),
        ...(consistency === undefined ? {} : { consistency }),
      });
    } catch (err) {
      next(err);
      return;
    }
    const admitted =
      options.cluster === undefined || session.token === undefined
        ? undefined
        : options.cluster.admitSessionToken(session);

    onHeaders(res, () => {
      // An untrusted token is not handed back; a token from a write of this request replaces it.
      if (
        session.token !== undefined &&
        (!session.tokenUntrusted || session.token !== requestToken)
      ) {
        const encoded = encodeToken(session.token);
        res.setHeader(CONSISTENCY_HEADERS.token, encoded);
        if (cookieToken !== undefined && cookieName !== false) {
          res.append(
            'Set-Cookie',
            serializeCookie(cookieName, encoded, { httpOnly: true, sameSite: 'lax', path: '/' }),
          );
        }
      }
      if (session.tokenUntrusted) res.setHeader(CONSISTENCY_HEADERS.tokenStatus, 'untrusted');
      if (session.servedBy !== undefined)
        res.setHeader(CONSISTENCY_HEADERS.servedBy, session.servedBy);
    });
    if (admitted === undefined) {
      withSession(session, () => next());
      return;
    }
    admitted.then(
      () => withSession(session, () => next()),
      (err: unknown) => next(err),
    );
  };
}
