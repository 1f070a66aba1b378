import { STATUS_CODES } from 'node:http';

import { isSpanContextValid, trace } from '@opentelemetry/api';
import type { ErrorRequestHandler, RequestHandler } from 'express';

import { ReplikitError } from '../errors.js';

/** The media type of every error response (RFC 9457). */
export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/**
 * An RFC 9457 problem details object, with replikit's extension members.
 *
 * `type` is `about:blank` for plain HTTP errors (then `title` is the status phrase) and
 * `urn:replikit:problem:<code>` for a {@link ReplikitError}, whose `code` is repeated as an
 * extension member for programs.
 */
export interface ProblemDetails {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail?: string;
  readonly instance?: string;
  /** The stable {@link ReplikitError.code}, when the problem comes from one. */
  readonly code?: string;
  /** Structured facts behind the problem; only sent for client errors (4xx). */
  readonly details?: Readonly<Record<string, unknown>>;
  /** The trace this request belongs to, to look it up in the tracing backend. */
  readonly traceId?: string;
}

/**
 * HTTP status for each {@link ReplikitError} code — the one place where codes meet HTTP.
 * A code missing here answers 500.
 */
export const ERROR_STATUS: Readonly<Record<string, number>> = {
  // The request cannot be acted on as sent.
  VALIDATION_FAILED: 400,
  CONSISTENCY_INVALID: 400,
  TOKEN_MALFORMED: 400,
  // A token ahead of the primary is forged or from another cluster: rejected, never waited on.
  TOKEN_AHEAD: 400,
  // Likewise a projection position past the end of the event log.
  PROJECTION_POSITION_AHEAD: 400,
  NOT_FOUND: 404,
  SAGA_NOT_FOUND: 404,
  // Not HTTP/1.1 at all, as Node's parser found (answered on the raw connection, then closed).
  REQUEST_MALFORMED: 400,
  // Headers or body did not arrive within the server's timeouts (a slow or stalled client).
  REQUEST_TIMEOUT: 408,
  HEADERS_TOO_LARGE: 431,
  // The client went away before its request was answered (nobody reads this answer).
  REQUEST_ABORTED: 400,
  // Refused from its Content-Length, or as soon as a chunked body passed the limit; the
  // connection is closed rather than read to the end.
  BODY_TOO_LARGE: 413,
  SAGA_INVALID_INPUT: 400,
  EVENTSTORE_INVALID_EVENT: 400,
  // The request clashes with the current state (a unique email already taken, a stale version).
  CONFLICT: 409,
  VERSION_CONFLICT: 409,
  // A person's action that does not fit the saga's state (retrying a finished saga, compensating
  // one past its pivot).
  SAGA_INVALID_STATE: 409,
  // Compensating a saga whose pivot may have gone through: undoing the steps before it could
  // leave half a saga. The detail says what to do instead (wait, or retry the saga).
  SAGA_PIVOT_IN_DOUBT: 409,
  // An append's expected version did not match the stream's (carries both), or an event id was
  // reused for other data.
  EVENTSTORE_CONCURRENCY: 409,
  EVENTSTORE_EVENT_ID_CONFLICT: 409,
  PROJECTION_STATE: 409,
  // An Idempotency-Key sent again with a different request: nothing changed, the first stands.
  IDEMPOTENCY_KEY_REUSED: 422,
  SAGA_KEY_REUSED: 422,
  // The account holds less than the transfer moves; nothing changed. Worth retrying once it holds more.
  INSUFFICIENT_FUNDS: 409,
  // Nothing can serve the request now; worth retrying later.
  NO_NODE_AVAILABLE: 503,
  CLUSTER_CLOSED: 503,
  REPLICA_WAIT_TIMEOUT: 503,
  // A distributed transaction rolled back everywhere (a participant failed or was too slow to
  // prepare): nothing changed, sending the request again is safe.
  TWOPC_ABORTED: 503,
  TWOPC_PREPARE_TIMEOUT: 503,
  TWOPC_CLOSED: 503,
  TRANSFERS_BUSY: 503,
  // Too many reads already wait for a replica or a projection: refused at once, not queued.
  REPLICA_WAIT_BUSY: 503,
  PROJECTION_WAIT_BUSY: 503,
  // A read request's time budget ran out while it waited for a replica or a projection.
  DEADLINE_EXCEEDED: 503,
  SAGA_CLOSED: 503,
  // The projection did not reach the caller's write in time; reading again later will.
  PROJECTION_WAIT_TIMEOUT: 503,
  EVENTSTORE_CLOSED: 503,
  // Its outcome is not known yet; recovery settles it within seconds. Not a 2xx (the client must
  // not assume it happened) nor a plain retry: the detail says to look before sending it again.
  TWOPC_IN_DOUBT: 503,
  // Faults of the deployment, not of the request: the message helps whoever runs the service.
  CONFIG_INVALID: 500,
  // Committed on some participants only, settled by someone else against the decision: a person
  // must repair it, and sending the request again would not.
  TWOPC_PARTIAL_COMMIT: 500,
  // Code that caught a failed statement inside a transaction: PostgreSQL rolled it all back.
  // A bug of the server's code, never reported as success.
  TRANSACTION_ROLLED_BACK: 500,
  SAGA_UNKNOWN: 500,
  SAGA_INVALID_DEFINITION: 500,
  EVENTSTORE_UPCASTER_INVALID: 500,
  MIGRATION_FAILED: 500,
  MIGRATION_INVALID: 500,
  MIGRATION_OUT_OF_ORDER: 500,
};

/** What {@link toProblemDetails} decided: the response, and whether the error deserves a log line. */
export interface ProblemResult {
  readonly problem: ProblemDetails;
  /** True for server errors (5xx): the client learns little, so the log must tell everything. */
  readonly log: boolean;
  /**
   * For a 503: seconds the client should wait before trying again, sent as `Retry-After`. The
   * error's `details.retryAfterMs` or `details.expectedWaitMs` when it has one, else 1.
   */
  readonly retryAfterSeconds?: number;
}

function retryAfterSeconds(details: Readonly<Record<string, unknown>>): number {
  const ms = [details['retryAfterMs'], details['expectedWaitMs']].find(
    (value): value is number => typeof value === 'number' && Number.isFinite(value),
  );
  return Math.max(1, Math.ceil((ms ?? 1000) / 1000));
}

/** Options for {@link toProblemDetails}. */
export interface ToProblemOptions {
  /** URI reference of this occurrence, usually the request's path. */
  readonly instance?: string;
  /** Codes to status, when an application adds its own codes; merged over {@link ERROR_STATUS}. */
  readonly statusByCode?: Readonly<Record<string, number>>;
}

/** The shape of errors raised by body-parser and other `http-errors` users. */
interface HttpError {
  status?: unknown;
  statusCode?: unknown;
  expose?: unknown;
  type?: unknown;
  message?: unknown;
  limit?: unknown;
  length?: unknown;
}

function httpStatusOf(err: HttpError): number | undefined {
  const status = typeof err.status === 'number' ? err.status : err.statusCode;
  return typeof status === 'number' && Number.isInteger(status) && status >= 400 && status <= 599
    ? status
    : undefined;
}

/**
 * body-parser's error types, with the status and detail each gets. Its own messages are written
 * for developers ("request entity too large"); these say what the client can do about it.
 */
const BODY_ERRORS: Readonly<Record<string, (err: HttpError) => [number, string]>> = {
  'entity.parse.failed': (err) => [
    400,
    `The request body is not valid JSON${typeof err.message === 'string' ? `: ${err.message}` : '.'}`,
  ],
  'entity.too.large': (err) => [
    413,
    typeof err.limit === 'number'
      ? `The request body is larger than the ${err.limit} bytes the service accepts.`
      : 'The request body is larger than the service accepts.',
  ],
  'entity.verify.failed': () => [403, 'The request body failed verification.'],
  'charset.unsupported': () => [415, 'The request body uses an unsupported charset.'],
  'encoding.unsupported': () => [415, 'The request body uses an unsupported content encoding.'],
  'request.aborted': () => [400, 'The request was aborted while its body was read.'],
  'request.size.invalid': () => [400, 'The request body length does not match its Content-Length.'],
  'parameters.too.many': () => [413, 'The request body has too many parameters.'],
};

const GENERIC_500 = 'The service failed to handle this request; the error has been logged.';

function currentTraceId(): string | undefined {
  const context = trace.getActiveSpan()?.spanContext();
  return context !== undefined && isSpanContextValid(context) ? context.traceId : undefined;
}

function plain(status: number, detail: string | undefined, instance?: string): ProblemDetails {
  return {
    type: 'about:blank',
    title: STATUS_CODES[status] ?? 'Error',
    status,
    ...(detail === undefined ? {} : { detail }),
    ...(instance === undefined ? {} : { instance }),
  };
}

/**
 * Turns anything thrown into an RFC 9457 problem. Pure: no I/O, no logging.
 *
 * - a {@link ReplikitError} gets the status {@link ERROR_STATUS} gives its code (else 500), its
 *   message as `detail`, and its `details` when the status is a client error;
 * - errors from body-parser (malformed JSON 400, too large 413, bad charset or encoding 415) and
 *   other `http-errors` with a 4xx status keep their status;
 * - anything else is a 500 whose detail reveals nothing of the error.
 *
 * ```ts
 * toProblemDetails(new ReplikitError('NOT_FOUND', 'no user 42'), { instance: '/users/42' }).problem;
 * // { type: 'urn:replikit:problem:NOT_FOUND', title: 'Not Found', status: 404, detail: 'no user 42', … }
 * ```
 */
export function toProblemDetails(error: unknown, options: ToProblemOptions = {}): ProblemResult {
  const { instance } = options;
  const traceId = currentTraceId();
  const withTrace = (problem: ProblemDetails): ProblemDetails =>
    traceId === undefined ? problem : { ...problem, traceId };

  if (error instanceof ReplikitError) {
    const status = options.statusByCode?.[error.code] ?? ERROR_STATUS[error.code] ?? 500;
    const clientError = status < 500;
    const mapped =
      options.statusByCode?.[error.code] !== undefined || ERROR_STATUS[error.code] !== undefined;
    const problem: ProblemDetails = {
      type: `urn:replikit:problem:${error.code}`,
      title: STATUS_CODES[status] ?? 'Error',
      status,
      // An unmapped code is a fault nobody planned to show a client: say nothing about it.
      detail: mapped ? error.message : GENERIC_500,
      ...(instance === undefined ? {} : { instance }),
      code: error.code,
      ...(clientError && Object.keys(error.details).length > 0 ? { details: error.details } : {}),
    };
    return {
      problem: withTrace(problem),
      log: !clientError,
      ...(status === 503 ? { retryAfterSeconds: retryAfterSeconds(error.details) } : {}),
    };
  }

  if (typeof error === 'object' && error !== null) {
    const err = error as HttpError;
    const known = typeof err.type === 'string' ? BODY_ERRORS[err.type] : undefined;
    if (known !== undefined) {
      const [status, detail] = known(err);
      return { problem: withTrace(plain(status, detail, instance)), log: false };
    }
    const status = httpStatusOf(err);
    if (status !== undefined && status < 500) {
      // http-errors marks 4xx messages as safe to show (`expose`); trust nothing else.
      const detail =
        err.expose === true && typeof err.message === 'string' ? err.message : undefined;
      return { problem: withTrace(plain(status, detail, instance)), log: false };
    }
  }

  return {
    problem: withTrace(plain(500, GENERIC_500, instance)),
    log: true,
  };
}

/** Sends `problem` as `application/problem+json`. */
function sendProblem(res: Parameters<RequestHandler>[1], problem: ProblemDetails): void {
  res.status(problem.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(problem));
}

/** The subset of a pino logger the middleware writes to. */
export interface ProblemLogger {
  error(obj: object, msg: string): void;
}

/** Options for {@link problemDetailsMiddleware}. */
export interface ProblemDetailsMiddlewareOptions {
  /** Receives every server error with its stack; client errors are not logged here. */
  readonly logger: ProblemLogger;
  readonly statusByCode?: Readonly<Record<string, number>>;
}

/**
 * The last middleware of an Express app: answers every error as `application/problem+json`.
 * Server errors are logged with their stack and answered without it.
 *
 * ```ts
 * app.use(notFoundHandler());
 * app.use(problemDetailsMiddleware({ logger }));
 * ```
 */
export function problemDetailsMiddleware(
  options: ProblemDetailsMiddlewareOptions,
): ErrorRequestHandler {
  const problemDetails: ErrorRequestHandler = (err: unknown, req, res, next) => {
    if (res.headersSent) {
      // Too late to answer with a problem; Express closes the connection.
      next(err);
      return;
    }
    const { problem, log, retryAfterSeconds } = toProblemDetails(err, {
      instance: req.originalUrl,
      ...(options.statusByCode === undefined ? {} : { statusByCode: options.statusByCode }),
    });
    if (log) {
      options.logger.error(
        { err, method: req.method, url: req.originalUrl, status: problem.status },
        'request failed',
      );
    }
    if (retryAfterSeconds !== undefined) res.set('Retry-After', String(retryAfterSeconds));
    sendProblem(res, problem);
  };
  return problemDetails;
}

/** Answers any request no route matched with a 404 problem. Mount it after every route. */
export function notFoundHandler(): RequestHandler {
  const notFound: RequestHandler = (req, res) => {
    sendProblem(res, plainProblem(404, `No route for ${req.method} ${req.path}.`, req.originalUrl));
  };
  return notFound;
}

/**
 * Rejects a request that carries a body whose media type is not JSON with 415, before any
 * handler sees an empty `req.body` and mistakes it for a missing field.
 */
export function requireJsonBody(): RequestHandler {
  const requireJson: RequestHandler = (req, res, next) => {
    const length = req.headers['content-length'];
    const hasBody =
      req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
    if (!hasBody || req.is(['application/json', 'application/*+json']) !== false) {
      next();
      return;
    }
    sendProblem(
      res,
      plainProblem(
        415,
        `Request bodies must be application/json, not ${req.headers['content-type'] ?? 'untyped'}.`,
        req.originalUrl,
      ),
    );
  };
  return requireJson;
}

function plainProblem(status: number, detail: string, instance: string): ProblemDetails {
  const traceId = currentTraceId();
  const problem = plain(status, detail, instance);
  return traceId === undefined ? problem : { ...problem, traceId };
}
