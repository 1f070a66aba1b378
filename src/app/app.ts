import express from 'express';

import { type CheckReadinessOptions, checkReadiness } from '../db/readiness.js';
import type { NodePools } from '../db/pools.js';
import { consistencyMiddleware } from '../http/consistency.js';
import { jsonBody } from '../http/json-body.js';
import { createMetricsHandler } from '../http/metrics-handler.js';
import {
  notFoundHandler,
  problemDetailsMiddleware,
  requireJsonBody,
} from '../http/problem-details.js';
import { serveOpenApi } from '../http/openapi.js';
import { requestBudget } from '../http/request-budget.js';
import { requestTelemetry } from '../http/request-telemetry.js';
import { sagaAdminRouter } from '../http/sagas.js';
import type { Logger } from '../telemetry/logger.js';
import type { MetricsRegistry } from '../telemetry/metrics.js';
import type { Cluster } from '../routing/index.js';
import type { SagaEngine } from '../saga/index.js';
import { serviceDocument } from './api.js';
import type { Config } from './config.js';
import { ordersRouter, type OrdersOptions } from './orders/routes.js';
import { profilesRouter, type ProfilesOptions } from './profiles.js';
import { transfersRouter, type TransfersOptions } from './transfers.js';
import { usersRouter } from './users.js';

/** What {@link createApp} needs. */
export interface AppOptions {
  /** Only the settings the app itself reads. */
  readonly config: Pick<Config, 'REPLIKIT_BODY_LIMIT' | 'REPLIKIT_REQUEST_BUDGET_MS'>;
  readonly logger: Logger;
  /** The routed cluster the demo resources read and write through. */
  readonly cluster: Cluster;
  /** Pools checked by `/readyz`. Default: the cluster's. */
  readonly pools?: NodePools;
  /** The service's own registry, served at `/metrics`. */
  readonly registry: MetricsRegistry;
  /** Deadline of each node's answer in `/readyz`. Default 1000 ms. */
  readonly readinessTimeoutMs?: CheckReadinessOptions['timeoutMs'];
  /** The two-phase commit demo (`/transfers`, `/accounts`); not mounted when absent. */
  readonly transfers?: TransfersOptions;
  /** The CQRS demo (`/users/:id/profile`, `/users/:id/follow`); not mounted when absent. */
  readonly profiles?: ProfilesOptions;
  /** The saga demo (`/orders`); not mounted when absent. */
  readonly orders?: OrdersOptions;
  /** The engines whose sagas `/sagas` (the saga admin API) shows and acts on. */
  readonly sagaEngines?: readonly SagaEngine[];
}

/**
 * Builds the service's Express app without listening, so tests can mount it on a port of their
 * choosing:
 *
 * - `GET /healthz` — 200 `{ status: 'ok' }` while the process runs;
 * - `GET /readyz` — 200 when the primary answers within the deadline, else 503; lists every node;
 * - `GET /metrics` — Prometheus text, or OpenMetrics when asked for;
 * - `GET /openapi.json` — the OpenAPI 3.1 description of every route mounted here;
 * - the demo resources: `/users` (read routing); given `transfers`, `/transfers` and
 *   `/accounts` (two-phase commit); given `orders`, `/orders` (sagas); given `sagaEngines`, `/sagas` (their admin API);
 *   given `profiles`, `/users/:id/profile` and `/users/:id/follow` (event sourcing and CQRS);
 * - any error, unknown route or unreadable body — `application/problem+json`.
 *
 * ```ts
 * const app = createApp({ config, logger, cluster, registry });
 * const server = app.listen(0);
 * ```
 */
export function createApp(options: AppOptions): express.Express {
  const { logger, cluster, registry } = options;
  const pools = options.pools ?? cluster.nodePools();
  const app = express();
  app.disable('x-powered-by');

  app.use(requestTelemetry({ logger, registry }));
  app.use(requireJsonBody());
  app.use(jsonBody({ limit: options.config.REPLIKIT_BODY_LIMIT }));

  app.get('/healthz', (_req, res) => {
    res.set('Cache-Control', 'no-store').json({ status: 'ok' });
  });

  app.get('/readyz', async (_req, res) => {
    const report = await checkReadiness(pools, {
      ...(options.readinessTimeoutMs === undefined
        ? {}
        : { timeoutMs: options.readinessTimeoutMs }),
    });
    res
      .status(report.ready ? 200 : 503)
      .set('Cache-Control', 'no-store')
      .json({ status: report.status, nodes: report.nodes });
  });

  app.get('/metrics', createMetricsHandler(registry, { logger }));

  const sagas = options.sagaEngines !== undefined && options.sagaEngines.length > 0;
  app.get(
    '/openapi.json',
    serveOpenApi(
      serviceDocument({
        profiles: options.profiles !== undefined,
        transfers: options.transfers !== undefined,
        orders: options.orders !== undefined,
        sagas,
      }),
    ),
  );

  // Everything below is a consistency session: X-Consistency and X-Consistency-Token in, the
  // merged token and X-Served-By out. Every database of the service is on the cluster's servers,
  // so its primary vouches for every token, on every route.
  app.use(consistencyMiddleware({ cluster }));
  app.use(requestBudget({ budgetMs: options.config.REPLIKIT_REQUEST_BUDGET_MS }));
  app.use(usersRouter(cluster));
  if (options.profiles !== undefined) app.use(profilesRouter(options.profiles));
  if (options.transfers !== undefined) app.use(transfersRouter({ ...options.transfers, logger }));
  if (options.orders !== undefined) app.use(ordersRouter({ ...options.orders, logger }));
  if (options.sagaEngines !== undefined && options.sagaEngines.length > 0)
    app.use(sagaAdminRouter(options.sagaEngines));

  app.use(notFoundHandler());
  app.use(problemDetailsMiddleware({ logger }));
  return app;
}
