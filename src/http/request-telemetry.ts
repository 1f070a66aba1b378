import { randomUUID } from 'node:crypto';

import type { Request, RequestHandler } from 'express';
import { Histogram, type OpenMetricsContentType, type Registry } from 'prom-client';

/** The subset of a pino logger the middleware writes to. */
export interface RequestLogger {
  debug(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** Options for {@link requestTelemetry}. */
export interface RequestTelemetryOptions {
  readonly logger: RequestLogger;
  /** Where `replikit_http_server_request_duration_seconds` is registered; no metric when absent. */
  readonly registry?: Registry<OpenMetricsContentType>;
  /**
   * Paths polled by machines (probes, scrapers): their successful requests are logged at `debug`
   * rather than `info`, so that they do not drown the log. Default `/healthz`, `/readyz`, `/metrics`.
   */
  readonly quietPaths?: readonly string[];
}

/** Name of the request duration histogram. */
export const REQUEST_DURATION_METRIC = 'replikit_http_server_request_duration_seconds';

/** Buckets of OpenTelemetry's `http.server.request.duration`, in seconds. */
const DURATION_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
];

/** Methods kept as label values; anything else becomes `_OTHER`, so labels stay bounded. */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** A caller's request id is echoed only when it looks like one; otherwise a fresh one is made. */
const REQUEST_ID = /^[\w.:-]{1,128}$/;

function durationHistogram(registry: Registry<OpenMetricsContentType>): Histogram<string> {
  // Reused when a second app shares the registry (tests build several).
  const existing = registry.getSingleMetric(REQUEST_DURATION_METRIC);
  if (existing instanceof Histogram) return existing;
  return new Histogram({
    name: REQUEST_DURATION_METRIC,
    help: 'Duration of HTTP requests served, by method, route template and status code.',
    labelNames: ['method', 'route', 'status_code'],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
}

/**
 * The route template that matched (`/users/:id`), never the raw path, which would make one label
 * value per user. `unmatched` when no route handled the request (404s, body errors).
 */
function routeOf(req: Request): string {
  const route: unknown = req.route;
  if (typeof route === 'object' && route !== null && 'path' in route) {
    const { path } = route;
    if (typeof path === 'string') return `${req.baseUrl}${path}`;
  }
  return 'unmatched';
}

/**
 * Logs one line per request (method, URL, route, status, duration, request id) when the response
 * is finished or the client gives up, and records the duration histogram. Also gives each
 * request an id, echoed in `X-Request-Id` and kept in `res.locals.requestId`.
 *
 * Mount it first, so that it times everything after it.
 *
 * ```ts
 * app.use(requestTelemetry({ logger, registry }));
 * ```
 */
export function requestTelemetry(options: RequestTelemetryOptions): RequestHandler {
  const { logger } = options;
  const quiet = new Set(options.quietPaths ?? ['/healthz', '/readyz', '/metrics']);
  const histogram =
    options.registry === undefined ? undefined : durationHistogram(options.registry);

  const requestTelemetryMiddleware: RequestHandler = (req, res, next) => {
    const started = process.hrtime.bigint();
    const incoming = req.get('x-request-id');
    const requestId = incoming !== undefined && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    res.locals['requestId'] = requestId;
    res.setHeader('X-Request-Id', requestId);

    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const aborted = !res.writableFinished;
      const route = routeOf(req);
      const method = KNOWN_METHODS.has(req.method) ? req.method : '_OTHER';
      histogram?.observe({ method, route, status_code: String(res.statusCode) }, seconds);
      const line = {
        reqId: requestId,
        method: req.method,
        url: req.originalUrl,
        route,
        status: res.statusCode,
        durationMs: Math.round(seconds * 1e6) / 1e3,
        ...(aborted ? { aborted: true } : {}),
      };
      if (res.statusCode >= 500) logger.error(line, 'request');
      else if (quiet.has(req.path) && res.statusCode < 400) logger.debug(line, 'request');
      else logger.info(line, 'request');
    };
    res.once('finish', finish);
    res.once('close', finish);
    next();
  };
  return requestTelemetryMiddleware;
}
