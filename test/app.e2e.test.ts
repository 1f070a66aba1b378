import { createServer, type AddressInfo } from 'node:net';

import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { closeNodePools, createNodePools, type NodePools } from '../src/db/pools.js';
import { createCluster, type Cluster } from '../src/routing/index.js';
import { ReplikitError } from '../src/errors.js';
import { problemDetailsMiddleware } from '../src/http/problem-details.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

/** Prometheus 2.x/3.x scrape header. */
const PROMETHEUS_ACCEPT =
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';

interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

/** A logger whose lines the test can read. */
function capturingLogger() {
  const lines: LogLine[] = [];
  const logger = createLogger({
    level: 'debug',
    service: 'replikit-test',
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
  });
  return { logger, lines };
}

async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}

async function expectProblem(response: Response, status: number, instance: string, code?: string) {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toBe('application/problem+json; charset=utf-8');
  const body = (await response.json()) as Record<string, unknown>;
  expect(body).toMatchObject({
    type: code === undefined ? 'about:blank' : `urn:replikit:problem:${code}`,
    status,
    instance,
    ...(code === undefined ? {} : { code }),
  });
  expect(typeof body['title']).toBe('string');
  expect(typeof body['detail']).toBe('string');
  return body;
}

let db: TestDatabase;
let pools: NodePools;
let cluster: Cluster;
let running: RunningServer;
let base: string;
const capture = capturingLogger();

beforeAll(async () => {
  db = await createTestDatabase('app');
  pools = createNodePools({
    primary: db.primaryUrl,
    replicas: Object.entries(db.replicaUrls).map(([name, url]) => ({ name, url })),
  });
  cluster = createCluster({ primary: db.primaryUrl, replicas: db.replicaUrls });
  await cluster.ready();
  const app = createApp({
    config: loadConfig({ REPLIKIT_BODY_LIMIT: '1kb' }),
    logger: capture.logger,
    cluster,
    pools,
    registry: createMetricsRegistry(),
  });
  running = await listen(app, { port: 0, host: '127.0.0.1' });
  base = running.url;
});

afterAll(async () => {
  await running.close();
  await closeNodePools(pools);
  await cluster.close();
  await db.drop();
});

describe('the service over HTTP', () => {
  it('GET /healthz says the process is up', async () => {
    const response = await fetch(`${base}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: 'ok' });
  });

  it('GET /readyz lists the primary and both replicas', async () => {
    const response = await fetch(`${base}/readyz`);
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      status: string;
      nodes: { name: string; role: string; reachable: boolean; inRecovery: boolean }[];
    };
    expect(body.status).toBe('ok');
    expect(
      body.nodes.map(({ name, role, reachable, inRecovery }) => ({
        name,
        role,
        reachable,
        inRecovery,
      })),
    ).toEqual([
      { name: 'primary', role: 'primary', reachable: true, inRecovery: false },
      { name: 'replica1', role: 'replica', reachable: true, inRecovery: true },
      { name: 'replica2', role: 'replica', reachable: true, inRecovery: true },
    ]);
  });

  it('GET /metrics serves process metrics as Prometheus text by default', async () => {
    await fetch(`${base}/healthz`);
    const response = await fetch(`${base}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    const body = await response.text();
    expect(body).toMatch(/^# TYPE process_cpu_user_seconds_total counter$/m);
    expect(body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(body).toMatch(
      /^replikit_http_server_request_duration_seconds_count\{method="GET",route="\/healthz",status_code="200"\} [1-9]/m,
    );
  });

  it('GET /metrics answers OpenMetrics to Prometheus, and plain text again afterwards', async () => {
    const response = await fetch(`${base}/metrics`, { headers: { accept: PROMETHEUS_ACCEPT } });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe(
      'application/openmetrics-text; version=1.0.0; charset=utf-8',
    );
    const body = await response.text();
    expect(body).toMatch(/^# TYPE process_cpu_user_seconds counter$/m);
    expect(body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(body.endsWith('# EOF\n')).toBe(true);

    const after = await (await fetch(`${base}/metrics`)).text();
    expect(after).toMatch(/^# TYPE process_cpu_user_seconds_total counter$/m);
  });

  it('answers a malformed JSON body with 400 problem+json', async () => {
    const response = await fetch(`${base}/healthz`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"name": ',
    });
    const body = await expectProblem(response, 400, '/healthz');
    expect(body['detail']).toMatch(/not valid JSON/);
  });

  it('answers a body over REPLIKIT_BODY_LIMIT with 413 problem+json', async () => {
    const response = await fetch(`${base}/anything`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ pad: 'x'.repeat(2048) }),
    });
    const body = await expectProblem(response, 413, '/anything', 'BODY_TOO_LARGE');
    expect(body['detail']).toMatch(/1024 bytes/);
  });

  it('answers a body that is not JSON with 415 problem+json', async () => {
    const response = await fetch(`${base}/healthz`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: 'hello',
    });
    await expectProblem(response, 415, '/healthz');
  });

  it('answers an unknown route with 404 problem+json', async () => {
    const response = await fetch(`${base}/no/such/thing?x=1`);
    const body = await expectProblem(response, 404, '/no/such/thing?x=1');
    expect(body['detail']).toBe('No route for GET /no/such/thing.');
  });

  it('logs one line per request and echoes the request id', async () => {
    const response = await fetch(`${base}/no/such/page`, {
      headers: { 'x-request-id': 'abc-123' },
    });
    await response.body?.cancel();
    expect(response.headers.get('x-request-id')).toBe('abc-123');
    const lines = capture.lines.filter(
      (line) => line.msg === 'request' && line['reqId'] === 'abc-123',
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'info',
      service: 'replikit-test',
      method: 'GET',
      url: '/no/such/page',
      route: 'unmatched',
      status: 404,
    });
    expect(lines[0]?.['durationMs']).toBeTypeOf('number');
  });

  it('makes up a request id when the caller sends none or a bad one', async () => {
    const response = await fetch(`${base}/healthz`, {
      headers: { 'x-request-id': 'bad id\u00e9' },
    });
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('GET /readyz with nodes down', () => {
  it('is 200 and degraded when a replica is down, 503 when the primary is', async () => {
    const down = await closedPortUrl();
    const mixed = createNodePools({
      primary: db.primaryUrl,
      replicas: [{ name: 'replica1', url: down }],
    });
    const dead = createNodePools({ primary: down, replicas: [] });
    const apps = await Promise.all(
      [mixed, dead].map((nodePools) =>
        listen(
          createApp({
            config: loadConfig({}),
            logger: capturingLogger().logger,
            cluster,
            pools: nodePools,
            registry: createMetricsRegistry(),
          }),
          { port: 0, host: '127.0.0.1' },
        ),
      ),
    );
    try {
      const degraded = await fetch(`${apps[0]!.url}/readyz`);
      expect(degraded.status).toBe(200);
      expect(await degraded.json()).toMatchObject({
        status: 'degraded',
        nodes: [
          { name: 'primary', reachable: true },
          {
            name: 'replica1',
            reachable: false,
            inRecovery: null,
            error: expect.any(String) as unknown,
          },
        ],
      });

      const unavailable = await fetch(`${apps[1]!.url}/readyz`);
      expect(unavailable.status).toBe(503);
      expect(await unavailable.json()).toMatchObject({
        status: 'unavailable',
        nodes: [{ name: 'primary', reachable: false }],
      });
    } finally {
      await Promise.all(apps.map((app) => app.close()));
      await closeNodePools(mixed);
      await closeNodePools(dead);
    }
  });
});

describe('problemDetailsMiddleware', () => {
  it('answers an unexpected error with a bare 500 and logs it with its stack', async () => {
    const { logger, lines } = capturingLogger();
    const app = express();
    app.get('/boom', () => {
      throw new Error('password=hunter2 leaked in a message');
    });
    app.get('/missing', () => {
      throw new ReplikitError('NOT_FOUND', 'no user 42', { details: { id: 42 } });
    });
    app.use(problemDetailsMiddleware({ logger }));
    const server = await listen(app, { port: 0, host: '127.0.0.1' });
    try {
      const response = await fetch(`${server.url}/boom`);
      expect(response.status).toBe(500);
      const text = await response.text();
      expect(JSON.parse(text)).toEqual({
        type: 'about:blank',
        title: 'Internal Server Error',
        status: 500,
        detail: 'The service failed to handle this request; the error has been logged.',
        instance: '/boom',
      });
      expect(text).not.toContain('hunter2');
      expect(text).not.toMatch(/\bat .*:\d+:\d+/); // no stack frame
      const logged = lines.find((line) => line.msg === 'request failed');
      expect(logged).toMatchObject({ level: 'error', status: 500, url: '/boom' });
      expect(JSON.stringify(logged)).toContain('hunter2');
      expect((logged?.['err'] as { stack?: string } | undefined)?.stack).toMatch(/\n\s+at /);

      const missing = await fetch(`${server.url}/missing`);
      expect(missing.status).toBe(404);
      expect(await missing.json()).toMatchObject({
        type: 'urn:replikit:problem:NOT_FOUND',
        code: 'NOT_FOUND',
        detail: 'no user 42',
        details: { id: 42 },
      });
      // A client error is the client's business: no error log line for it.
      expect(lines.filter((line) => line.msg === 'request failed')).toHaveLength(1);
    } finally {
      await server.close();
    }
  });
});
