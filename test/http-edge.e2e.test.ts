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
});

afterAll(async () => {
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
      const connection = await RawConnection.open(running.port);
      try {
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
      } finally {
        connection.destroy();
      }
    },
  );

  it('sent in chunks is refused once it passes the limit, not read to its end', async () => {
    const connection = await RawConnection.open(running.port);
    const most = 8 * 1024 * 1024;
    try {
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
    } finally {
      connection.destroy();
    }
  });

  it('announced with Expect: 100-continue is refused without inviting the body', async () => {
    const connection = await RawConnection.open(running.port);
    try {
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
    } finally {
      connection.destroy();
    }
  });

  it('a body within the limit announced with Expect: 100-continue is invited, then answered', async () => {
    const connection = await RawConnection.open(running.port);
    const body = JSON.stringify({ name: 'Ada', email: `ada-${Date.now()}@example.com` });
    try {
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
    } finally {
      connection.destroy();
    }
  });
});
