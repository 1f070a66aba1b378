import { connect, type Socket } from 'node:net';

/** One HTTP response as it came off the wire. */
export interface RawResponse {
  readonly status: number;
  /** Header names in lower case. */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/**
 * An HTTP/1.1 connection driven byte by byte, for what `fetch` cannot do: send headers without
 * the body they announce, trickle a body, or keep sending while the server answers.
 */
export class RawConnection {
  readonly #socket: Socket;
  #buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  #ended = false;
  /** Resolves once the server has closed its side of the connection (or it was reset). */
  readonly closed: Promise<void>;
  /** Bytes written so far. */
  written = 0;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    // A server that closes while we still send may reset the connection: that is a close too.
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => {
      const done = (): void => {
        this.#ended = true;
        this.#wake?.();
        resolve();
      };
      socket.once('end', done);
      socket.once('close', done);
    });
  }

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host: '127.0.0.1' }, () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Writes `data`; resolves once the socket can take more (never rejects: a closed socket drops it). */
  async write(data: string | Buffer): Promise<void> {
    if (this.#socket.destroyed || !this.#socket.writable) return;
    this.written += typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    if (!this.#socket.write(data)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.#socket.off('drain', done);
          this.#socket.off('close', done);
          resolve();
        };
        this.#socket.once('drain', done);
        this.#socket.once('close', done);
      });
    }
  }

  /** True once a whole response (head, and body when it has one) has arrived. */
  get hasResponse(): boolean {
    return this.#parse(false) !== undefined;
  }

  /**
   * The next response (a `100 Continue` counts as one). Rejects when the connection closes first,
   * or after `withinMs` (a bound for a test that would otherwise hang, not a speed requirement).
   */
  async response(withinMs = 10_000): Promise<RawResponse> {
    const deadline = Date.now() + withinMs;
    for (;;) {
      const parsed = this.#parse(true);
      if (parsed !== undefined) return parsed;
      if (this.#ended) {
        throw new Error(
          `the connection closed without a (complete) response; received: ${JSON.stringify(this.#buffer.toString('latin1'))}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no response within ${withinMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  /** Waits for the server to close the connection, within `withinMs`. */
  async closedWithin(withinMs = 10_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.closed,
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the server kept the connection open for ${withinMs} ms`)),
            withinMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  destroy(): void {
    this.#socket.destroy();
  }

  /** Runs `fn` on a new connection to `port`, closed afterwards whatever happens. */
  static async with<T>(port: number, fn: (connection: RawConnection) => Promise<T>): Promise<T> {
    const connection = await RawConnection.open(port);
    try {
      return await fn(connection);
    } finally {
      connection.destroy();
    }
  }

  #parse(consume: boolean): RawResponse | undefined {
    const end = this.#buffer.indexOf('\r\n\r\n');
    if (end === -1) return undefined;
    const head = this.#buffer.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '')?.[1]);
    const headers: Record<string, string> = {};
    for (const line of head.slice(1)) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    let length = 0;
    if (status >= 200 && headers['content-length'] !== undefined)
      length = Number(headers['content-length']);
    else if (status >= 200 && headers['transfer-encoding'] !== undefined)
      throw new Error('chunked responses are not supported by this test client');
    else if (status >= 200 && !this.#ended)
      return undefined; // body until the connection closes
    else if (status >= 200) length = this.#buffer.length - end - 4;
    if (this.#buffer.length < end + 4 + length) return undefined;
    const body = this.#buffer.subarray(end + 4, end + 4 + length).toString('utf8');
    if (consume) this.#buffer = this.#buffer.subarray(end + 4 + length);
    return { status, headers, body };
  }
}

/** The request head for `method path` with `headers`, ending with the blank line. */
export function requestHead(
  method: string,
  path: string,
  headers: Readonly<Record<string, string>>,
): string {
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1'];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  return `${lines.join('\r\n')}\r\n\r\n`;
}
