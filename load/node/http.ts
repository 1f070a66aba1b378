/**
 * A small HTTP client for the Node runner that counts what k6 counts for every request
 * (`http_reqs`, `http_req_failed`), so both runners' summaries carry the same built-ins.
 */
import type { MetricSet } from './metrics.js';

export interface Reply {
  /** 0 when no answer came (a network error or the timeout). */
  readonly status: number;
  readonly headers: Headers;
  readonly body: unknown;
  readonly durationMs: number;
}

export interface Client {
  request(
    method: string,
    path: string,
    options?: {
      body?: unknown;
      headers?: Readonly<Record<string, string>>;
      /** Statuses that do not count as failed; default 2xx and 3xx. */
      expected?: readonly number[];
    },
  ): Promise<Reply>;
}

export function createClient(base: string, metrics: MetricSet, timeoutMs = 30_000): Client {
  const reqs = metrics.counter('http_reqs');
  const failed = metrics.rate('http_req_failed');
  return {
    async request(method, path, options = {}) {
      const started = performance.now();
      let status = 0;
      let headers = new Headers();
      let body: unknown;
      try {
        const res = await fetch(`${base}${path}`, {
          method,
          headers: {
            ...(options.body === undefined ? {} : { 'content-type': 'application/json' }),
            ...options.headers,
          },
          ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        status = res.status;
        headers = res.headers;
        const text = await res.text();
        body = text === '' ? undefined : (JSON.parse(text) as unknown);
      } catch {
        // Counted as failed below; the caller sees status 0.
      }
      const durationMs = performance.now() - started;
      reqs.add(1);
      failed.add(
        options.expected === undefined
          ? !(status >= 200 && status < 400)
          : !options.expected.includes(status),
      );
      return { status, headers, body, durationMs };
    },
  };
}

/** A line on stderr that rewrites itself on a terminal, and prints every few seconds otherwise. */
export function progressLine(scenario: string): { update(text: string): void; done(): void } {
  const tty = process.stderr.isTTY;
  let last = 0;
  let shown = '';
  return {
    update(text) {
      shown = `[load:${scenario}] ${text}`;
      if (tty) {
        process.stderr.write(`\r\x1b[2K${shown}`);
      } else if (Date.now() - last >= 5000) {
        last = Date.now();
        process.stderr.write(`${shown}\n`);
      }
    },
    done() {
      if (tty) process.stderr.write('\n');
      else if (shown !== '') process.stderr.write(`${shown}\n`);
    },
  };
}
