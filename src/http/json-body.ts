import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

import type { Request, RequestHandler, Response } from 'express';

import { ReplikitError } from '../errors.js';

/** Options for {@link jsonBody}. */
export interface JsonBodyOptions {
  /** Largest body accepted: bytes, or a size such as `100kb` or `1mb` (1 kb = 1024 bytes). Default `100kb`. */
  readonly limit?: number | string;
  /**
   * After refusing a body, how long the connection keeps reading (and discarding) what the client
   * still sends before it is closed. Default 2000 ms.
   */
  readonly lingerMs?: number;
}

const SIZE = /^(\d+)\s*(b|kb|mb|gb)?$/i;
const UNITS: Readonly<Record<string, number>> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

/** Bytes in `size` (`512`, `100kb`, `1mb`). */
export function parseByteSize(size: number | string): number {
  if (typeof size === 'number') {
    if (Number.isSafeInteger(size) && size >= 0) return size;
  } else {
    const match = SIZE.exec(size.trim());
    if (match !== null) return Number(match[1]) * UNITS[(match[2] ?? 'b').toLowerCase()]!;
  }
  throw new ReplikitError('CONFIG_INVALID', `not a size in bytes: ${String(size)}`);
}

/** Responses whose `Expect: 100-continue` is left to {@link jsonBody}; see {@link expectContinue}. */
const continueDeferred = new WeakSet<ServerResponse>();

/**
 * A `checkContinue` listener for a Node HTTP server: hands a request that says
 * `Expect: 100-continue` to `handler` without the automatic `100 Continue`, so that
 * {@link jsonBody} invites the body only once it has checked the headers. A body refused at the
 * header is then never sent at all.
 *
 * ```ts
 * const server = createServer(app);
 * server.on('checkContinue', expectContinue(app));
 * ```
 */
export function expectContinue(handler: RequestListener): RequestListener {
  return (req, res) => {
    continueDeferred.add(res);
    handler(req, res);
  };
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * Once the response that refused a body is sent, Node closes the connection at once. Whatever the
 * client is still sending then arrives at a closed socket, which answers with a reset, and a
 * reset can make the client's system discard the refusal before the client has read it. So the
 * server closes its sending side, goes on reading (and discarding) for a bounded time, and only
 * then closes: the "lingering close" HTTP/1.1 asks of a server that closes a connection it has
 * not read to the end.
 */
function lingerOnClose(socket: Socket, lingerMs: number): void {
  socket.destroySoon = function destroySoon(this: Socket): void {
    if (this.writable) this.end();
    const timer = setTimeout(() => this.destroy(), lingerMs);
    timer.unref();
    this.once('close', () => clearTimeout(timer));
  };
}

function tooLarge(limit: number): ReplikitError {
  return new ReplikitError(
    'BODY_TOO_LARGE',
    `The request body is larger than the ${limit} bytes the service accepts.`,
    { details: { limit } },
  );
}

/** An error shaped like body-parser's, which the problem-details handler maps by its `type`. */
function bodyError(type: string, status: number, message: string): Error {
  return Object.assign(new Error(message), { type, status, expose: true });
}

/**
 * Reads a JSON request body into `req.body`, within a size limit that is enforced before the body
 * is read: a request whose `Content-Length` is over the limit is answered 413 (`BODY_TOO_LARGE`)
 * from its headers alone, and a chunked body is refused as soon as it passes the limit. Either way
 * the connection is closed rather than read to the end, which would let one client keep the
 * service busy for as long as it cares to send.
 *
 * Requests without a body pass through with `req.body` undefined; answering a body that is not
 * JSON is {@link requireJsonBody}'s job, mounted before it.
 *
 * ```ts
 * app.use(requireJsonBody());
 * app.use(jsonBody({ limit: '100kb' }));
 * ```
 */
export function jsonBody(options: JsonBodyOptions = {}): RequestHandler {
  const limit = parseByteSize(options.limit ?? '100kb');
  const lingerMs = options.lingerMs ?? 2000;

  const refuse = (req: Request, res: Response, next: (err: unknown) => void, err: unknown) => {
    res.set('Connection', 'close');
    lingerOnClose(req.socket, lingerMs);
    next(err);
  };

  const readJson: RequestHandler = (req, res, next) => {
    req.body = undefined;
    if (!hasBody(req)) {
      next();
      return;
    }
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      refuse(req, res, next, tooLarge(limit));
      return;
    }
    if (continueDeferred.delete(res)) res.writeContinue();

    const chunks: Buffer[] = [];
    let received = 0;
    const stop = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      received += chunk.length;
      if (received > limit) {
        stop();
        chunks.length = 0;
        refuse(req, res, next, tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      stop();
      // Like an absent body: nothing to parse.
      if (received === 0) {
        next();
        return;
      }
      const text = Buffer.concat(chunks, received)
        .toString('utf8')
        .replace(/^\uFEFF/, '');
      try {
        req.body = JSON.parse(text) as unknown;
      } catch (err) {
        next(
          bodyError('entity.parse.failed', 400, err instanceof Error ? err.message : String(err)),
        );
        return;
      }
      next();
    };
    const onError = (): void => {
      stop();
      next(bodyError('request.aborted', 400, 'request aborted'));
    };
    const onClose = (): void => {
      if (!req.complete) onError();
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  };
  return readJson;
}
