import { createServer, maxHeaderSize, STATUS_CODES } from 'node:http';
import type { RequestListener, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

import { ReplikitError } from '../errors.js';
import { expectContinue } from './json-body.js';
import { PROBLEM_CONTENT_TYPE, toProblemDetails } from './problem-details.js';

/** Options for {@link createHttpServer}. */
export interface HttpServerOptions {
  /** A client must have sent a request's headers this long after it began. Default 10 000 ms. */
  readonly headersTimeoutMs?: number;
  /** A client must have sent a whole request, headers and body, this long after it began. Default 30 000 ms. */
  readonly requestTimeoutMs?: number;
}

/** How long a connection cut off for a client's fault reads (and drops) input before it closes. */
const LINGER_MS = 2000;

/**
 * What Node's parser raised, as the problem the client gets: 408 for a request that did not
 * arrive in time, 431 for headers over Node's limit, 400 for bytes that are not HTTP/1.1.
 */
function clientProblem(err: NodeJS.ErrnoException & { reason?: unknown }, timeouts: string) {
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new ReplikitError(
        'REQUEST_TIMEOUT',
        `The request did not arrive in time (${timeouts}); the connection is closed.`,
      );
    case 'HPE_HEADER_OVERFLOW':
      return new ReplikitError(
        'HEADERS_TOO_LARGE',
        `The request's headers are larger than the ${maxHeaderSize} bytes the service accepts.`,
      );
    default:
      return new ReplikitError(
        'REQUEST_MALFORMED',
        `The request is not valid HTTP/1.1${typeof err.reason === 'string' ? ` (${err.reason})` : ''}.`,
      );
  }
}

/** A complete HTTP/1.1 response carrying `error` as problem+json, closing the connection. */
function rawProblem(error: ReplikitError): string {
  const { problem } = toProblemDetails(error);
  const body = JSON.stringify(problem);
  return (
    `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status] ?? 'Error'}\r\n` +
    `Content-Type: ${PROBLEM_CONTENT_TYPE}; charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    `Connection: close\r\n\r\n${body}`
  );
}

/**
 * Creates a Node HTTP server for `handler` (an Express app, say) that holds its own against
 * clients that are slow or broken on purpose (docs/http.md):
 *
 * - a request whose headers, or whole request, take longer than the timeouts is answered 408
 *   `REQUEST_TIMEOUT` and its connection closed: a client trickling bytes (slowloris) holds a
 *   connection for seconds, not minutes;
 * - what Node's parser refuses before any request exists (not HTTP, headers too large) is
 *   answered 400 `REQUEST_MALFORMED` or 431 `HEADERS_TOO_LARGE`, as problem+json like every
 *   other refusal, rather than Node's bare status line;
 * - `Expect: 100-continue` is left to {@link jsonBody}, which invites the body only once the
 *   headers pass.
 *
 * ```ts
 * const server = createHttpServer(app, { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000 });
 * server.listen(3000);
 * ```
 */
export function createHttpServer(
  handler: RequestListener,
  options: HttpServerOptions = {},
): Server {
  const headersTimeout = options.headersTimeoutMs ?? 10_000;
  const requestTimeout = Math.max(options.requestTimeoutMs ?? 30_000, headersTimeout);
  const timeouts = `headers within ${headersTimeout} ms, the whole request within ${requestTimeout} ms`;
  /** Each connection's response in progress: once its head is sent, nothing else may be written. */
  const responding = new WeakMap<Duplex, ServerResponse>();
  const tracked: RequestListener = (req, res) => {
    const socket = req.socket;
    responding.set(socket, res);
    res.once('finish', () => {
      if (responding.get(socket) === res) responding.delete(socket);
    });
    handler(req, res);
  };
  const server = createServer(
    {
      headersTimeout,
      requestTimeout,
      // Node checks for expired requests every 30 s by default, which would let a slow client
      // keep its connection up to 30 s past the timeout.
      connectionsCheckingInterval: Math.min(1000, headersTimeout),
    },
    tracked,
  );
  server.on('checkContinue', expectContinue(tracked));
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable || responding.get(socket)?.headersSent === true) {
      socket.destroy();
      return;
    }
    socket.end(rawProblem(clientProblem(err, timeouts)));
    // Closed for good once the client has had time to read the answer (see jsonBody).
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  });
  return server;
}
