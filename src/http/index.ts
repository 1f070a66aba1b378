/**
 * The Express adapter (`replikit/express`): consistency sessions from request headers, problem
 * details for errors, a metrics endpoint that never fails a scrape.
 *
 * @packageDocumentation
 */
export {
  CONSISTENCY_HEADERS,
  consistencyMiddleware,
  type ConsistencyMiddlewareOptions,
} from './consistency.js';
export { createHttpServer, type HttpServerOptions } from './http-server.js';
export { expectContinue, jsonBody, type JsonBodyOptions } from './json-body.js';
export { createMetricsHandler } from './metrics-handler.js';
export { requestBudget, type RequestBudgetOptions } from './request-budget.js';
export {
  ERROR_STATUS,
  notFoundHandler,
  PROBLEM_CONTENT_TYPE,
  problemDetailsMiddleware,
  requireJsonBody,
  toProblemDetails,
  type ProblemDetails,
} from './problem-details.js';
export {
  sagaAdminRouter,
  toSagaView,
  type SagaDetailsView,
  type SagaView,
  type StepView,
} from './sagas.js';
export { parseInput } from './validation.js';
