import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy in front of a server, to cut it off the way a network would: `stall()` stops
 * forwarding on open connections (a hung peer), `block()` drops every connection and refuses new
 * ones (a peer that is down), `resume()` puts things back. `retarget()` sends new connections to
 * another server, as a DNS name or a load balancer does after a change.
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  #mode: 'open' | 'stalled' | 'blocked' = 'open';
  #targetPort: number;

  private constructor(targetPort: number) {
    this.#targetPort = targetPort;
    this.#server = createServer((client) => this.#accept(client, this.#targetPort));
  }

  static async start(targetPort: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetPort);
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    const address = this.#server.address();
    if (address === null || typeof address === 'string')
      throw new Error('the proxy is not listening');
    return address.port;
  }

  /** The URL of `database` through this proxy. */
  url(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  stall(): void {
    this.#mode = 'stalled';
    for (const [client, server] of this.#pairs) {
      client.pause();
      server.pause();
    }
  }

  block(): void {
    this.#mode = 'blocked';
    for (const [client, server] of this.#pairs) {
      client.destroy();
      server.destroy();
    }
  }

  resume(): void {
    this.#mode = 'open';
    for (const [client, server] of this.#pairs) {
      client.resume();
      server.resume();
    }
  }

  /**
   * Sends new connections to `targetPort`. Open ones are dropped (they belong to the old server,
   * as after a failover), or with `keepOpen` stay where they are (as behind a DNS name whose
   * answer changed, where old and new connections reach different servers).
   */
  retarget(targetPort: number, options: { keepOpen?: boolean } = {}): void {
    this.#targetPort = targetPort;
    if (options.keepOpen === true) return;
    for (const [client, server] of this.#pairs) {
      client.destroy();
      server.destroy();
    }
  }

  async close(): Promise<void> {
    this.block();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket, targetPort: number): void {
    if (this.#mode === 'blocked') {
      client.destroy();
      return;
    }
    const server = createConnection({ host: '127.0.0.1', port: targetPort });
    const pair: [Socket, Socket] = [client, server];
    this.#pairs.add(pair);
    client.pipe(server);
    server.pipe(client);
    const end = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      server.destroy();
    };
    client.on('close', end).on('error', end);
    server.on('close', end).on('error', end);
    if (this.#mode === 'stalled') {
      client.pause();
      server.pause();
    }
  }
}
