import type { RequestListener, Server } from 'node:http';
import type { AddressInfo } from 'node:net';

import { ReplikitError } from '../errors.js';
import { createHttpServer, type HttpServerOptions } from '../http/http-server.js';

/** Where to listen, and how long a client may take to send a request. */
export interface ListenOptions extends HttpServerOptions {
  /** 0 lets the system choose a free port; {@link RunningServer.port} tells which. */
  readonly port: number;
  readonly host: string;
}

/** A listening HTTP server. */
export interface RunningServer {
  readonly server: Server;
  /** The port actually bound. */
  readonly port: number;
  /** Base URL to reach it from this machine, such as `http://127.0.0.1:3000`. */
  readonly url: string;
  /**
   * Stops accepting connections and resolves once in-flight requests are answered. Idle
   * keep-alive connections are closed at once; connections still busy after `graceMs` are cut.
   * Safe to call more than once.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** Why {@link listen} could not bind, as one line for the person at the terminal. */
function listenError(err: NodeJS.ErrnoException, options: ListenOptions): ReplikitError {
  switch (err.code) {
    case 'EADDRINUSE':
      return new ReplikitError(
        'HTTP_PORT_IN_USE',
        `port ${options.port} is already in use; set PORT to another port`,
        { cause: err, details: { port: options.port, host: options.host } },
      );
    case 'EACCES':
      return new ReplikitError(
        'HTTP_LISTEN_FAILED',
        `not allowed to listen on port ${options.port}; set PORT to a port above 1023`,
        { cause: err, details: { port: options.port, host: options.host } },
      );
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new ReplikitError(
        'HTTP_LISTEN_FAILED',
        `cannot listen on HOST ${options.host}: it is not an address of this machine`,
        { cause: err, details: { port: options.port, host: options.host } },
      );
    default:
      return new ReplikitError(
        'HTTP_LISTEN_FAILED',
        `cannot listen on ${options.host}:${options.port}: ${err.message}`,
        { cause: err, details: { port: options.port, host: options.host } },
      );
  }
}

/** A URL a browser on this machine can open, even when listening on every address. */
function localUrl(host: string, port: number): string {
  const shown = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${shown.includes(':') ? `[${shown}]` : shown}:${port}`;
}

/**
 * Starts an HTTP server for `handler` (an Express app, say) and resolves once it listens.
 *
 * ```ts
 * const running = await listen(createApp(options), { port: 3000, host: '127.0.0.1' });
 * process.once('SIGTERM', () => void running.close({ graceMs: 5000 }));
 * ```
 *
 * @throws ReplikitError `HTTP_PORT_IN_USE` when the port is taken, `HTTP_LISTEN_FAILED` for any
 *   other reason; the message is one line that says what to change.
 */
export function listen(handler: RequestListener, options: ListenOptions): Promise<RunningServer> {
  const server = createHttpServer(handler, options);
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      reject(listenError(err, options));
    };
    const onListening = (): void => {
      server.off('error', onError);
      const { port } = server.address() as AddressInfo;
      let closing: Promise<void> | undefined;
      resolve({
        server,
        port,
        url: localUrl(options.host, port),
        close: (closeOptions = {}) => {
          closing ??= closeServer(server, closeOptions.graceMs ?? 10_000);
          return closing;
        },
      });
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ port: options.port, host: options.host });
  });
}

function closeServer(server: Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    // A keep-alive connection that turns idle after the close began would hold it open until
    // its timeout; sweep them while in-flight requests finish.
    const sweep = setInterval(() => server.closeIdleConnections(), 100);
    const cut = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close(() => {
      clearInterval(sweep);
      clearTimeout(cut);
      resolve();
    });
    server.closeIdleConnections();
  });
}
