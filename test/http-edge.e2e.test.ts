import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { MIGRATIONS } from '../src/app/migrations.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { migrate } from '../src/db/migrate.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { RawConnection, requestHead, type RawResponse } from './support/raw-http.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let cluster: Cluster;
let running: RunningServer;
/** The same app with short timeouts for slow clients. */
let impatient: RunningServer;

beforeAll(async () => {
  db = await createTestDatabase('http_edge');
  cluster = createCluster({ primary: db.primaryUrl, replicas: db.replicaUrls });
  await cluster.ready();
  await migrate(cluster.primary, MIGRATIONS);
  const app = createApp({
    config: loadConfig({ REPLIKIT_BODY_LIMIT: '1kb' }),
    logger: createLogger({ level: 'silent', service: 'replikit-test' }),
    cluster,
    registry: createMetricsRegistry(),
  });
  running = await listen(app, { port: 0, host: '127.0.0.1' });
  impatient = await listen(app, {
    port: 0,
    host: '127.0.0.1',
    headersTimeoutMs: 300,
    requestTimeoutMs: 600,
  });
});

afterAll(async () => {
  await impatient?.close();
  await running?.close();
  await cluster?.close();
  await db?.drop();
});

function problemOf(response: RawResponse): Record<string, unknown> {
  expect(response.headers['content-type']).toBe('application/problem+json; charset=utf-8');
  return JSON.parse(response.body) as Record<string, unknown>;
}

describe('a body over the limit', () => {
  it.each([999_999_999, 200_000])(
    'declared as %i bytes is refused at the header, before any of it is sent, and the connection closed',
    async (length) => {
      await RawConnection.with(running.port, async (connection) => {
        await connection.write(
          requestHead('POST', '/users', {
            'Content-Type': 'application/json',
            'Content-Length': String(length),
          }),
        );
        const response = await connection.response();
        expect(response.status).toBe(413);
        expect(response.headers['connection']).toBe('close');
        expect(problemOf(response)).toMatchObject({
          status: 413,
          code: 'BODY_TOO_LARGE',
          instance: '/users',
          detail: expect.stringMatching(/larger than the 1024 bytes/) as unknown,
        });
        await connection.closedWithin();
      });
    },
  );

  it('sent in chunks is refused once it passes the limit, not read to its end', async () => {
    const most = 8 * 1024 * 1024;
    await RawConnection.with(running.port, async (connection) => {
      await connection.write(
        requestHead('POST', '/users', {
          'Content-Type': 'application/json',
          'Transfer-Encoding': 'chunked',
        }),
      );
      const chunk = `4000\r\n${' '.repeat(0x4000)}\r\n`;
      // Keeps sending (never the last chunk) until the server answers, or gives up at 8 MiB.
      while (!connection.hasResponse && connection.written < most) await connection.write(chunk);
      const response = await connection.response();
      expect(response.status).toBe(413);
      expect(problemOf(response)).toMatchObject({ code: 'BODY_TOO_LARGE' });
      expect(connection.written).toBeLessThan(most);
      await connection.closedWithin();
    });
  });

  it('announced with Expect: 100-continue is refused without inviting the body', async () => {
    await RawConnection.with(running.port, async (connection) => {
      await connection.write(
        requestHead('POST', '/users', {
          'Content-Type': 'application/json',
          'Content-Length': '999999999',
          Expect: '100-continue',
        }),
      );
      const response = await connection.response();
      expect(response.status).toBe(413);
      expect(problemOf(response)).toMatchObject({ code: 'BODY_TOO_LARGE' });
      await connection.closedWithin();
    });
  });

  it('a body within the limit announced with Expect: 100-continue is invited, then answered', async () => {
    const body = JSON.stringify({ name: 'Ada', email: `ada-${Date.now()}@example.com` });
    await RawConnection.with(running.port, async (connection) => {
      await connection.write(
        requestHead('POST', '/users', {
          'Content-Type': 'application/json',
          'Content-Length': String(Buffer.byteLength(body)),
          Expect: '100-continue',
        }),
      );
      expect((await connection.response()).status).toBe(100);
      await connection.write(body);
      const response = await connection.response();
      expect(response.status).toBe(201);
      expect(JSON.parse(response.body)).toMatchObject({ name: 'Ada' });
    });
  });
});

/** Sends `bytes` one at a time, 50 ms apart, until the server answers or closes (or they run out). */
async function trickle(connection: RawConnection, bytes: string): Promise<void> {
  for (const byte of bytes) {
    if (connection.hasResponse) return;
    await connection.write(byte);
    await Promise.race([sleep(50), connection.closed]);
  }
}

describe('a slow client', () => {
  it('that never finishes its headers is answered 408 problem+json and cut off', async () => {
    await RawConnection.with(impatient.port, async (connection) => {
      await connection.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n');
      await trickle(connection, `X-Slow: ${'z'.repeat(200)}`);
      const response = await connection.response();
      expect(response.status).toBe(408);
      expect(response.headers['connection']).toBe('close');
      expect(problemOf(response)).toMatchObject({
        type: 'urn:replikit:problem:REQUEST_TIMEOUT',
        status: 408,
        code: 'REQUEST_TIMEOUT',
      });
      await connection.closedWithin();
    });
  });

  it('that trickles its body is answered 408 problem+json and cut off', async () => {
    const body = JSON.stringify({ name: `Slow ${'w'.repeat(150)}`, email: 'slow@example.com' });
    await RawConnection.with(impatient.port, async (connection) => {
      await connection.write(
        requestHead('POST', '/users', {
          'Content-Type': 'application/json',
          'Content-Length': String(Buffer.byteLength(body)),
        }),
      );
      await trickle(connection, body);
      const response = await connection.response();
      expect(response.status).toBe(408);
      expect(problemOf(response)).toMatchObject({ code: 'REQUEST_TIMEOUT' });
      await connection.closedWithin();
    });
  });
});

describe('a request that is not HTTP', () => {
  it('is answered 400 problem+json', async () => {
    await RawConnection.with(running.port, async (connection) => {
      await connection.write('HELLO THERE\r\n\r\n');
      const response = await connection.response();
      expect(response.status).toBe(400);
      expect(problemOf(response)).toMatchObject({ status: 400, code: 'REQUEST_MALFORMED' });
      await connection.closedWithin();
    });
  });

  it('with headers over 16 KiB is answered 431 problem+json', async () => {
    await RawConnection.with(running.port, async (connection) => {
      await connection.write(requestHead('GET', '/healthz', { 'X-Big': 'b'.repeat(20_000) }));
      const response = await connection.response();
      expect(response.status).toBe(431);
      expect(problemOf(response)).toMatchObject({ status: 431, code: 'HEADERS_TOO_LARGE' });
    });
  });
});
