import type { RequestHandler } from 'express';
import type { OpenMetricsContentType, PrometheusContentType, Registry } from 'prom-client';

import { type MetricsFormat, renderMetrics } from '../telemetry/metrics.js';

const PROMETHEUS_OFFER = 'text/plain; version=0.0.4';
const OPENMETRICS_OFFER = 'application/openmetrics-text; version=1.0.0';

/** The subset of a pino logger the handler writes to. */
export interface MetricsHandlerLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Options for {@link createMetricsHandler}. */
export interface MetricsHandlerOptions {
  /** Told about metrics that failed to collect and about a scrape that failed outright. */
  readonly logger?: MetricsHandlerLogger;
}

/**
 * Serves `registry` for Prometheus: OpenMetrics (with exemplars) when the `Accept` header prefers
 * `application/openmetrics-text` — as Prometheus itself sends — and the classic text format
 * otherwise.
 *
 * A metric whose collection throws is left out of the answer and logged; the rest of the scrape
 * is served, so one broken collector does not blank every dashboard.
 *
 * ```ts
 * app.get('/metrics', createMetricsHandler(registry, { logger }));
 * ```
 */
export function createMetricsHandler(
  registry: Registry<OpenMetricsContentType> | Registry<PrometheusContentType>,
  options: MetricsHandlerOptions = {},
): RequestHandler {
  const { logger } = options;
  const metrics: RequestHandler = async (req, res, next) => {
    // Offered with their version parameters: Prometheus sends `…;version=1.0.0`, and an Accept
    // entry with parameters only matches an offer carrying the same ones. The first offer wins
    // when the client does not care (no Accept header, or */*).
    const wanted = req.accepts([PROMETHEUS_OFFER, OPENMETRICS_OFFER]);
    const format: MetricsFormat = wanted === OPENMETRICS_OFFER ? 'openmetrics' : 'prometheus';
    try {
      const { contentType, body } = await renderMetrics(registry, format, {
        onCollectError: (metric, err) =>
          logger?.warn({ err, metric }, 'metric collection failed; left out of this scrape'),
      });
      // A Buffer, so that Express leaves the exact content type (parameter order included) alone.
      res
        .status(200)
        .set('Cache-Control', 'no-store')
        .set('Content-Type', contentType)
        .send(Buffer.from(body, 'utf8'));
    } catch (err) {
      logger?.error({ err }, 'metrics scrape failed');
      next(err);
    }
  };
  return metrics;
}
