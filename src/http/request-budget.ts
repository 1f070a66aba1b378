import type { RequestHandler } from 'express';

import { ReplikitError } from '../errors.js';
import { currentSession } from '../routing/index.js';

/** Options for {@link requestBudget}. */
export interface RequestBudgetOptions {
  /** How long a read request may wait, in all, for replicas and projections. */
  readonly budgetMs: number;
}

/** Requests that change nothing: ending their waits early can never hide a write that happened. */
const READS = new Set(['GET', 'HEAD']);

/**
 * Gives each read request (`GET`, `HEAD`) a time budget. Its waits (for a replica to replay its
 * token, for a projection to reach its position) end when the budget runs out, and the request is
 * answered 503 `DEADLINE_EXCEEDED` with `Retry-After`, instead of holding its connection for as
 * long as every wait it makes allows. A request whose client goes away stops waiting at once.
 *
 * Writes get no budget: once a write may have happened, its answer must say so, and a 503 after
 * the commit would invite the client to send it again. Mount it after `consistencyMiddleware()`,
 * whose session carries the budget to the cluster and the read models.
 *
 * ```ts
 * app.use(consistencyMiddleware());
 * app.use(requestBudget({ budgetMs: 10_000 }));
 * ```
 */
export function requestBudget(options: RequestBudgetOptions): RequestHandler {
  const { budgetMs } = options;
  const budget: RequestHandler = (req, res, next) => {
    const session = currentSession();
    if (session === undefined || !READS.has(req.method)) {
      next();
      return;
    }
    const controller = new AbortController();
    const timer = setTimeout(
      () =>
        controller.abort(
          new ReplikitError(
            'DEADLINE_EXCEEDED',
            `the read did not complete within its ${budgetMs} ms budget: what it waits for (a replica, a projection) is behind; try again shortly`,
            { details: { budgetMs } },
          ),
        ),
      budgetMs,
    );
    res.once('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished)
        controller.abort(
          new ReplikitError('REQUEST_ABORTED', 'the client went away before the answer'),
        );
    });
    session.signal = controller.signal;
    next();
  };
  return budget;
}
