import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { MIGRATIONS } from '../src/app/migrations.js';
import { PROFILES_MIGRATIONS } from '../src/app/profiles.js';
import { postgresTransportMigrations } from '../src/messaging/index.js';
import { SAGA_MIGRATIONS } from '../src/saga/index.js';
import { LocalStack } from '../src/stack/index.js';
import {
  postgresProcessesUnder,
  signalGroup,
  killSpawned,
  spawnTs,
  type Spawned,
} from './support/process.js';
import { createTestDatabase, type TestDatabase } from './support/stack.js';

const START = 'src/app/start.ts';

/** Environment for a child that must start its own local stack in `dir`. */
function localStackEnv(dir: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    REPLIKIT_PRIMARY_URL: '',
    REPLIKIT_REPLICA_URLS: '',
    REPLIKIT_STACK_DIR: dir,
    REPLIKIT_STACK_PORT: '',
    PORT: '0',
    LOG_LEVEL: 'info',
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
    ...extra,
  };
}

/** The order demo's databases, in the order of {@link ORDER_VARIABLES}; created once for the file. */
let orderDbs: readonly TestDatabase[] = [];
const ORDER_VARIABLES = [
  'REPLIKIT_ORDERS_DATABASE',
  'REPLIKIT_PAYMENTS_DATABASE',
  'REPLIKIT_INVENTORY_DATABASE',
  'REPLIKIT_SHIPPING_DATABASE',
] as const;

/**
 * Environment for a child that uses the test stack's servers: `db` for the service, and the
 * ledger databases of the transfers demo when given (else they are named after `db`).
 */
function externalEnv(
  db: TestDatabase,
  extra: NodeJS.ProcessEnv = {},
  ledgers?: readonly [TestDatabase, TestDatabase],
): NodeJS.ProcessEnv {
  return {
    REPLIKIT_PRIMARY_URL: db.primaryUrl,
    REPLIKIT_REPLICA_URLS: Object.entries(db.replicaUrls)
      .map(([name, url]) => `${name}=${url}`)
      .join(','),
    REPLIKIT_LEDGER_A_DATABASE: ledgers?.[0].name ?? '',
    REPLIKIT_LEDGER_B_DATABASE: ledgers?.[1].name ?? '',
    ...Object.fromEntries(
      ORDER_VARIABLES.map((variable, i) => [variable, orderDbs[i]?.name ?? '']),
    ),
    PORT: '0',
    LOG_LEVEL: 'info',
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
    ...extra,
  };
}

/** Collects the child's standard error apart from its standard output. */
function stderrOf(spawned: Spawned): () => string {
  let text = '';
  spawned.child.stderr?.on('data', (chunk: Buffer) => {
    text += chunk.toString('utf8');
  });
  return () => text;
}

/** Waits for the ready banner and returns the service's base URL. */
async function serviceUrl(spawned: Spawned): Promise<string> {
  await spawned.waitFor(/Press Ctrl-C to stop/, 90_000);
  const match = /^\s+service\s+(http:\/\/\S+)$/m.exec(spawned.output());
  if (match?.[1] === undefined) throw new Error(`no service URL in:\n${spawned.output()}`);
  return match[1];
}

async function occupyPort(): Promise<{ port: number; release: () => Promise<void> }> {
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  return {
    port: (holder.address() as AddressInfo).port,
    release: () => new Promise<void>((resolve) => holder.close(() => resolve())),
  };
}

/** A stand-in OTLP/HTTP receiver that records what reaches it. */
async function otlpReceiver() {
  const received: { url: string; contentType: string; body: Buffer }[] = [];
  const server = createHttpServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      received.push({
        url: req.url ?? '',
        contentType: req.headers['content-type'] ?? '',
        body: Buffer.concat(chunks),
      });
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

// A test that failed half way must not leave a service or worker running.
afterEach(killSpawned);

describe('start-up with a bad configuration', () => {
  it('exits 2 with one line on stderr naming the variable, before starting anything', async () => {
    const child = spawnTs([START], { PORT: 'abc' });
    const stderr = stderrOf(child);
    expect(await child.exit()).toEqual({ code: 2, signal: null });
    expect(stderr()).toBe(
      'replikit: invalid PORT (got "abc"): must be a whole number from 0 to 65535\n',
    );
    expect(child.output()).toBe(stderr()); // nothing on stdout either
  });
});

describe('with existing servers', () => {
  let db: TestDatabase;
  let ledgers: readonly [TestDatabase, TestDatabase];

  beforeAll(async () => {
    db = await createTestDatabase('start');
    orderDbs = await Promise.all(
      ['orders', 'payments', 'inventory', 'shipping'].map((name) =>
        createTestDatabase(`start_${name}`),
      ),
    );
    ledgers = [
      await createTestDatabase('start_ledger_a'),
      await createTestDatabase('start_ledger_b'),
    ];
  });

  afterAll(async () => {
    await Promise.all([
      db.drop(),
      ...ledgers.map((ledger) => ledger.drop()),
      ...orderDbs.map((other) => other.drop()),
    ]);
    orderDbs = [];
  });

  it('migrates, serves, and on Ctrl-C closes its connections and exits 0', async () => {
    const child = spawnTs(
      [START],
      externalEnv(db, { REPLIKIT_SHUTDOWN_TIMEOUT_MS: '15000' }, ledgers),
    );
    const url = await serviceUrl(child);

    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    const body = (await ready.json()) as { nodes: { name: string }[] };
    expect(body.nodes.map((node) => node.name)).toEqual(['primary', 'replica1', 'replica2']);
    expect(child.output()).toMatch(
      /^\s+replica2\s+postgres:\/\/postgres@127\.0\.0\.1:\d+\/start_/m,
    );
    expect(child.output()).toMatch(
      new RegExp(
        `^\\s+ledger_b\\s+postgres://postgres@127\\.0\\.0\\.1:\\d+/${ledgers[1].name}$`,
        'm',
      ),
    );
    const transfer = await fetch(`${url}/transfers`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ from: 'b2', to: 'a1', amount: 7 }),
    });
    expect(transfer.status).toBe(201);
    const account = await fetch(`${url}/accounts/a1`, {
      headers: { 'x-consistency-token': transfer.headers.get('x-consistency-token')! },
    });
    expect(await account.json()).toMatchObject({ id: 'a1', ledger: 'ledger_a', balance: 1007 });

    const admin = new pg.Client({ connectionString: db.primaryUrl });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ id: string }>(
        'select id from replikit_migrations order by applied_at, id',
      );
      // Everything the service's own database gets, in order: its tables, the event store, the
      // transfers' saga log, the message queue of the choreographed flow.
      expect(rows.map((row) => row.id)).toEqual(
        [
          ...MIGRATIONS,
          ...PROFILES_MIGRATIONS,
          ...SAGA_MIGRATIONS,
          ...postgresTransportMigrations,
        ].map((migration) => migration.id),
      );
      const busy = await admin.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where application_name like 'replikit%' and datname = $1",
        [db.name],
      );
      expect(busy.rows[0]?.n).toBeGreaterThan(0);

      // A terminal's Ctrl-C reaches the whole group, and impatient people press it twice.
      signalGroup(child, 'SIGINT');
      signalGroup(child, 'SIGINT');
      expect(await child.exit()).toEqual({ code: 0, signal: null });
      expect(child.output()).toMatch(/"msg":"shutting down"/);

      const left = await admin.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where application_name like 'replikit%' and datname = $1",
        [db.name],
      );
      expect(left.rows[0]?.n).toBe(0);
    } finally {
      await admin.end();
    }
  });

  it('fails with one clear line and exit 1 when a ledger database does not exist', async () => {
    const child = spawnTs([START], externalEnv(db));
    const stderr = stderrOf(child);
    expect((await child.exit()).code).toBe(1);
    expect(stderr()).toBe(
      `replikit: the ledger database ${db.name}_ledger_a does not exist on the primary; create it (create database ${db.name}_ledger_a) or name another one with REPLIKIT_LEDGER_A_DATABASE\n`,
    );
  });

  it('fails with one clear line and exit 1 when the port is taken', async () => {
    const { port, release } = await occupyPort();
    try {
      const child = spawnTs([START], externalEnv(db, { PORT: String(port) }, ledgers));
      const stderr = stderrOf(child);
      expect((await child.exit()).code).toBe(1);
      expect(stderr()).toBe(`replikit: port ${port} is already in use; set PORT to another port\n`);
    } finally {
      await release();
    }
  });

  it('exports traces over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT is set, flushing them on exit', async () => {
    const receiver = await otlpReceiver();
    try {
      // Signal-specific endpoints alone must not switch exporting on (the SDK's defaults would).
      const quiet = spawnTs(
        ['--import', './src/telemetry/register.ts', START],
        externalEnv(
          db,
          {
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/v1/traces`,
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${receiver.url}/v1/metrics`,
            OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: `${receiver.url}/v1/logs`,
            OTEL_METRIC_EXPORT_INTERVAL: '100',
          },
          ledgers,
        ),
      );
      const quietUrl = await serviceUrl(quiet);
      await (await fetch(`${quietUrl}/no-such-route`)).body?.cancel();
      quiet.child.kill('SIGTERM');
      expect((await quiet.exit()).code).toBe(0);
      expect(receiver.received).toEqual([]);

      const traced = spawnTs(
        ['--import', './src/telemetry/register.ts', START],
        externalEnv(
          db,
          {
            OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
            // Long enough that only the flush at shutdown can deliver the spans.
            OTEL_BSP_SCHEDULE_DELAY: '600000',
          },
          ledgers,
        ),
      );
      const tracedUrl = await serviceUrl(traced);
      await (await fetch(`${tracedUrl}/no-such-route`)).body?.cancel();
      await traced.waitFor(/"url":"\/no-such-route".*"msg":"request"/);
      expect(traced.output()).toMatch(/"trace_id":"[0-9a-f]{32}".*"url":"\/no-such-route"/);
      expect(receiver.received).toEqual([]);
      traced.child.kill('SIGTERM');
      expect((await traced.exit()).code).toBe(0);

      expect(receiver.received.map(({ url, contentType }) => ({ url, contentType }))).toEqual([
        { url: '/v1/traces', contentType: 'application/x-protobuf' },
      ]);
      const payload = receiver.received[0]!.body.toString('latin1');
      expect(payload).toContain('@opentelemetry/instrumentation-http');
      expect(payload).toContain('@opentelemetry/instrumentation-express');
      expect(payload).toContain('/no-such-route');
    } finally {
      await receiver.close();
    }
  });
});

describe('with its own local stack', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'replikit-start-'));
    await chmod(dir, 0o755);
  });

  afterAll(async () => {
    const stack = await LocalStack.open({ dir }).catch(() => undefined);
    await stack?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  // Each test starts from a stopped stack: one that failed half way must not leave its servers
  // running for the next (which would then find them "already running").
  afterEach(async () => {
    await killSpawned();
    const stack = await LocalStack.open({ dir }).catch(() => undefined);
    await stack?.stop();
  });

  it('starts the stack, serves, and on SIGTERM stops every PostgreSQL it started', async () => {
    const child = spawnTs([START], localStackEnv(dir));
    const url = await serviceUrl(child);
    expect(postgresProcessesUnder(dir)).toHaveLength(3);
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(child.output()).toMatch(
      /^\s+primary\s+postgres:\/\/postgres@127\.0\.0\.1:\d+\/replikit$/m,
    );
    // The ledger databases were created and seeded beside it.
    const account = await fetch(`${url}/accounts/b10`);
    expect(account.status).toBe(200);
    expect(await account.json()).toMatchObject({ id: 'b10', ledger: 'ledger_b' });

    child.child.kill('SIGTERM');
    expect(await child.exit()).toEqual({ code: 0, signal: null });
    expect(postgresProcessesUnder(dir)).toEqual([]);
  });

  it('stops the stack it started before exiting 1 when the port is taken', async () => {
    const { port, release } = await occupyPort();
    try {
      const child = spawnTs([START], localStackEnv(dir, { PORT: String(port) }));
      const stderr = stderrOf(child);
      expect((await child.exit()).code).toBe(1);
      // It did get as far as starting PostgreSQL: the check below is not vacuous.
      expect(child.output()).toMatch(/"msg":"started primary, replica1, replica2"/);
      expect(stderr()).toBe(`replikit: port ${port} is already in use; set PORT to another port\n`);
      expect(postgresProcessesUnder(dir)).toEqual([]);
    } finally {
      await release();
    }
  });

  it('stops what it started when interrupted during start-up', async () => {
    const child = spawnTs([START], localStackEnv(dir));
    await child.waitFor(/starting primary/, 60_000);
    child.child.kill('SIGTERM');
    expect(await child.exit()).toEqual({ code: 0, signal: null });
    expect(child.output()).not.toMatch(/Press Ctrl-C to stop/);
    expect(postgresProcessesUnder(dir)).toEqual([]);
  });

  it('leaves a stack it found running as it was', async () => {
    const stack = await LocalStack.start({ dir });
    try {
      const child = spawnTs([START], localStackEnv(dir));
      await serviceUrl(child);
      child.child.kill('SIGTERM');
      expect(await child.exit()).toEqual({ code: 0, signal: null });
      expect(child.output()).toMatch(/leaving the local stack running/);
      expect(postgresProcessesUnder(dir)).toHaveLength(3);
    } finally {
      await stack.stop();
    }
    expect(postgresProcessesUnder(dir)).toEqual([]);
  });
});
