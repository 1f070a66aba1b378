import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { MIGRATIONS } from '../src/app/migrations.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { migrate } from '../src/db/migrate.js';
import { createCluster, decodeToken, encodeToken, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import {
  createMetricsRegistry,
  renderMetrics,
  type MetricsRegistry,
} from '../src/telemetry/metrics.js';
import { createRoutingMetrics } from '../src/telemetry/routing-metrics.js';
import { jsonClient, problem } from './support/http.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let cluster: Cluster;
let registry: MetricsRegistry;
let running: RunningServer;
let base: string;

interface UserBody {
  id: string;
  name: string;
  email: string;
  version: number;
  updatedAt: string;
}

let emails = 0;
function uniqueEmail(): string {
  emails++;
  return `user${emails}-${Date.now()}@example.com`;
}

const call = jsonClient(() => base);

async function createUser(): Promise<{ user: UserBody; token: string }> {
  const created = await call('POST', '/users', { body: { name: 'Ada', email: uniqueEmail() } });
  expect(created.status).toBe(201);
  return { user: created.body as UserBody, token: created.headers.get('x-consistency-token')! };
}

/**
 * `count` PATCH→GET cycles over HTTP, `concurrency` users at a time, each GET carrying the token
 * its PATCH returned: how many GETs showed a version below the one the PATCH returned.
 */
async function cycles(count: number, consistency: string, concurrency = 25) {
  let stale = 0;
  let started = 0;
  const servedBy: Record<string, number> = {};
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      let { user, token } = await createUser();
      while (started < count) {
        started++;
        const patched = await call('PATCH', `/users/${user.id}`, {
          body: { name: `Ada ${started}` },
          headers: { 'x-consistency-token': token },
        });
        expect(patched.status).toBe(200);
        token = patched.headers.get('x-consistency-token')!;
        const written = (patched.body as UserBody).version;
        const read = await call('GET', `/users/${user.id}`, {
          headers: { 'x-consistency-token': token, 'x-consistency': consistency },
        });
        // A replica that has not replayed the user's creation answers 404: stale as well.
        expect([200, 404]).toContain(read.status);
        if (read.status === 404 || (read.body as UserBody).version < written) stale++;
        else user = read.body as UserBody;
        const node = read.headers.get('x-served-by') ?? 'missing';
        servedBy[node] = (servedBy[node] ?? 0) + 1;
        token = read.headers.get('x-consistency-token') ?? token;
      }
    }),
  );
  return { stale, servedBy };
}

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('users');
  registry = createMetricsRegistry();
  const metrics = createRoutingMetrics(registry);
  cluster = createCluster({
    primary: db.primaryUrl,
    replicas: db.replicaUrls,
    waitTimeoutMs: 2000,
    observer: metrics.observer,
  });
  metrics.attach(cluster);
  await cluster.ready();
  await migrate(cluster.primary, MIGRATIONS);
  await stack.waitForReplicas();
  const app = createApp({
    config: loadConfig({ REPLIKIT_BODY_LIMIT: '1kb' }),
    logger: createLogger({ level: 'silent', service: 'test' }),
    cluster,
    registry,
  });
  running = await listen(app, { port: 0, host: '127.0.0.1' });
  base = running.url;
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await running.close();
  await cluster.close();
  await db.drop();
});

describe('users over HTTP', () => {
  it('creates, patches and reads a user, answering with the token and where reads were served', async () => {
    const { user, token } = await createUser();
    expect(user).toMatchObject({ name: 'Ada', version: 1 });
    expect(token).toMatch(/^rk1(\.[0-9a-z]+){5}$/);

    const patched = await call('PATCH', `/users/${user.id}`, {
      body: { name: 'Grace' },
      headers: { 'x-consistency-token': token },
    });
    expect(patched.body).toMatchObject({
      id: user.id,
      name: 'Grace',
      email: user.email,
      version: 2,
    });
    const newer = patched.headers.get('x-consistency-token')!;
    expect(decodeToken(newer).written).toBeGreaterThanOrEqual(decodeToken(token).written);

    const read = await call('GET', `/users/${user.id}`, {
      headers: { 'x-consistency-token': newer },
    });
    expect(read.status).toBe(200);
    expect(read.body).toMatchObject({ name: 'Grace', version: 2 });
    expect(read.headers.get('x-served-by')).toMatch(/^(primary|replica1|replica2)$/);
    // The same write, and what this read saw (for a later monotonic read): at least the write.
    const echoed = decodeToken(read.headers.get('x-consistency-token')!);
    expect(echoed.written).toBe(decodeToken(newer).written);
    expect(echoed.seen).toBeGreaterThanOrEqual(echoed.written);

    const strong = await call('GET', `/users/${user.id}`, {
      headers: { 'x-consistency': 'strong' },
    });
    expect(strong.headers.get('x-served-by')).toBe('primary');
  });

  it('lists users a page at a time', async () => {
    for (let i = 0; i < 3; i++) await createUser();
    const first = await call('GET', '/users?limit=2', { headers: { 'x-consistency': 'strong' } });
    const page = first.body as { items: UserBody[]; next: string | null };
    expect(page.items).toHaveLength(2);
    expect(page.next).toBe(page.items[1]!.id);
    const second = await call('GET', `/users?limit=2&after=${page.next}`, {
      headers: { 'x-consistency': 'strong' },
    });
    const ids = (second.body as { items: UserBody[] }).items.map((item) => item.id);
    expect(ids.every((id) => id > page.next!)).toBe(true);
  });

  it('takes the token from a cookie as well', async () => {
    const { user, token } = await createUser();
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');
    const patched = await call('PATCH', `/users/${user.id}`, {
      body: { name: 'Cookie' },
      headers: { cookie: `replikit_token=${token}` },
    });
    expect(patched.headers.get('set-cookie')).toMatch(/^replikit_token=rk1\./);
    const fresh = patched.headers.get('x-consistency-token')!;
    const read = await call('GET', `/users/${user.id}`, {
      headers: { cookie: `replikit_token=${fresh}` },
    });
    expect(read.body).toMatchObject({ name: 'Cookie', version: 2 });
    // Both replicas are paused, so only the primary can have shown the write.
    expect(read.headers.get('x-served-by')).toBe('primary');
  });
});

describe('read-your-writes over HTTP', () => {
  it('1000 PATCH→GET cycles with replica1 paused: no stale read; eventual reads are stale (control)', async () => {
    await stack.pauseReplay('replica1');
    const ryw = await cycles(1000, 'read-your-writes');
    expect(ryw.stale).toBe(0);
    expect(ryw.servedBy['replica1'] ?? 0).toBe(0);
    expect(ryw.servedBy['replica2'] ?? 0).toBeGreaterThan(0);

    const eventual = await cycles(200, 'eventual');
    expect(eventual.stale).toBeGreaterThan(0);
  });

  it('1000 PATCH→GET cycles with a 200 ms apply delay: no stale read; eventual reads are stale (control)', async () => {
    await stack.setApplyDelay('replica1', 200);
    await stack.setApplyDelay('replica2', 200);
    const ryw = await cycles(1000, 'read-your-writes', 50);
    expect(ryw.stale).toBe(0);
    expect((ryw.servedBy['replica1'] ?? 0) + (ryw.servedBy['replica2'] ?? 0)).toBeGreaterThan(0);

    const eventual = await cycles(200, 'eventual', 50);
    expect(eventual.stale).toBeGreaterThan(0);
  });

  it('1000 PATCH→GET cycles with nothing injected: no stale read, mostly from replicas', async () => {
    const ryw = await cycles(1000, 'read-your-writes');
    expect(ryw.stale).toBe(0);
    expect((ryw.servedBy['replica1'] ?? 0) + (ryw.servedBy['replica2'] ?? 0)).toBeGreaterThan(900);
  });

  it('counts reads by consistency, target and reason, and exposes lag per replica', async () => {
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toMatch(
      /^replikit_reads_total\{consistency="read-your-writes",target="replica",reason="(caught_up|waited)"\} [1-9]/m,
    );
    expect(body).toMatch(
      /^replikit_reads_total\{consistency="eventual",target="replica",reason="any_replica"\} [1-9]/m,
    );
    expect(body).toMatch(/^replikit_replica_lag_seconds\{replica="replica1"\} /m);
    expect(body).toMatch(/^replikit_replica_lag_bytes\{replica="replica2"\} /m);
    expect(body).toMatch(/^replikit_replica_up\{replica="replica1"\} 1$/m);
    expect(body).toMatch(
      /^replikit_read_wait_seconds_count\{replica="replica\d",outcome="caught_up"\} [1-9]/m,
    );
    expect(body).toMatch(/^replikit_replica_visibility_seconds_count [1-9]/m);
  });
});

describe('bad input gets a 4xx problem, never a 500', () => {
  it('an unknown consistency level', async () => {
    const response = await call('GET', '/users', { headers: { 'x-consistency': 'linearizable' } });
    expect(response.status).toBe(400);
    expect(problem(response)).toMatchObject({ code: 'CONSISTENCY_INVALID' });
    expect(problem(response).detail).toContain('linearizable');
  });

  it('a bound that is not a number', async () => {
    const response = await call('GET', '/users', {
      headers: { 'x-consistency': 'bounded-staleness=soon' },
    });
    expect(response.status).toBe(400);
    expect(problem(response).code).toBe('CONSISTENCY_INVALID');
  });

  it('a malformed token', async () => {
    for (const token of ['garbage', 'rk1.1.1.1.1', 'rk1.ZZ.1.1.1.1', 'rk2.1.1.1.1.1']) {
      const response = await call('GET', '/users', { headers: { 'x-consistency-token': token } });
      expect(response.status).toBe(400);
      expect(problem(response).code).toBe('TOKEN_MALFORMED');
    }
  });

  it('a forged token ahead of the primary', async () => {
    const { token } = await createUser();
    const real = decodeToken(token);
    const forged = encodeToken({ ...real, written: real.written + 1_000_000_000_000n });
    const response = await call('GET', '/users', { headers: { 'x-consistency-token': forged } });
    expect(response.status).toBe(400);
    expect(problem(response).code).toBe('TOKEN_AHEAD');
  });

  it('a token of another cluster is not trusted: the primary answers and says so', async () => {
    const { user, token } = await createUser();
    const foreign = encodeToken({ ...decodeToken(token), systemId: '42' });
    const response = await call('GET', `/users/${user.id}`, {
      headers: { 'x-consistency-token': foreign },
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-served-by')).toBe('primary');
    expect(response.headers.get('x-consistency-token-status')).toBe('untrusted');
    expect(response.headers.get('x-consistency-token')).toBeNull();
  });

  it('a forged token ahead of the primary on a write: 400, nothing written, nothing handed back', async () => {
    const { user, token } = await createUser();
    const real = decodeToken(token);
    const forged = encodeToken({ ...real, written: real.written + 1_000_000_000_000n });
    const seenAhead = encodeToken({ ...real, seen: real.seen + 1_000_000_000_000n });
    const email = uniqueEmail();
    const sent: Record<string, string>[] = [
      { 'x-consistency-token': forged },
      { 'x-consistency-token': seenAhead },
      { cookie: `replikit_token=${forged}` },
    ];
    for (const headers of sent) {
      for (const [method, path, body] of [
        ['POST', '/users', { name: 'Mallory', email }],
        ['PATCH', `/users/${user.id}`, { name: 'Mallory' }],
        // Every route, whatever its consistency: an eventual read checks no position of its own.
        ['GET', `/users/${user.id}`, undefined],
      ] as const) {
        const response = await call(method, path, {
          headers: { ...headers, 'x-consistency': 'eventual' },
          ...(body === undefined ? {} : { body }),
        });
        expect(response.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(400);
        expect(problem(response).code).toBe('TOKEN_AHEAD');
        expect(response.headers.get('x-consistency-token')).toBeNull();
        expect(response.headers.get('set-cookie')).toBeNull();
      }
    }
    const { rows } = await cluster.primary.query(
      'select name from users where email = $1 or id = $2',
      [email, user.id],
    );
    expect(rows).toEqual([{ name: 'Ada' }]);
  });

  it('a token of another cluster or timeline on a write is not merged into the new one, and is called untrusted', async () => {
    const { user, token } = await createUser();
    const real = decodeToken(token);
    const ahead = real.written + 1_000_000_000_000n;
    for (const other of [
      { ...real, systemId: '42', written: ahead },
      { ...real, timeline: real.timeline + 1, written: ahead },
      { ...real, timeline: real.timeline + 1 },
    ]) {
      const sent = encodeToken(other);
      const patched = await call('PATCH', `/users/${user.id}`, {
        body: { name: 'Grace' },
        headers: { 'x-consistency-token': sent, cookie: `replikit_token=${sent}` },
      });
      expect(patched.status).toBe(200);
      expect(patched.headers.get('x-consistency-token-status')).toBe('untrusted');
      const answered = decodeToken(patched.headers.get('x-consistency-token')!);
      expect(answered).toMatchObject({ systemId: real.systemId, timeline: real.timeline });
      expect(answered.written).toBeGreaterThan(real.written);
      expect(answered.written).toBeLessThan(ahead);
      const cookie = /^replikit_token=([^;]+)/.exec(patched.headers.get('set-cookie') ?? '')?.[1];
      expect(cookie).toBe(patched.headers.get('x-consistency-token'));

      // A read at any level says so too, and hands back no token: neither that one, nor one of
      // its own that would make the caller forget it wrote.
      const read = await call('GET', `/users/${user.id}`, {
        headers: { 'x-consistency-token': sent, 'x-consistency': 'eventual' },
      });
      expect(read.status).toBe(200);
      expect(read.headers.get('x-consistency-token-status')).toBe('untrusted');
      expect(read.headers.get('x-consistency-token')).toBeNull();
    }
    // Control: this cluster's own token is trusted, merged, and not flagged.
    const trusted = await call('PATCH', `/users/${user.id}`, {
      body: { name: 'Ada' },
      headers: { 'x-consistency-token': token },
    });
    expect(trusted.status).toBe(200);
    expect(trusted.headers.get('x-consistency-token-status')).toBeNull();
  });

  it('malformed JSON, wrong types, unknown fields, oversized bodies, bad ids', async () => {
    const malformed = await call('POST', '/users', { raw: '{"name": "Ada",' });
    expect(malformed.status).toBe(400);
    problem(malformed);

    const wrongType = await call('POST', '/users', { body: { name: 42, email: 'a@b.c' } });
    expect(wrongType.status).toBe(400);
    expect(problem(wrongType)).toMatchObject({ code: 'VALIDATION_FAILED' });
    expect(problem(wrongType).detail).toContain('name');

    const unknown = await call('POST', '/users', {
      body: { name: 'Ada', email: uniqueEmail(), admin: true },
    });
    expect(unknown.status).toBe(400);

    const empty = await call('PATCH', '/users/00000000-0000-4000-8000-000000000000', { body: {} });
    expect(empty.status).toBe(400);

    const oversized = await call('POST', '/users', {
      body: { name: 'x'.repeat(5000), email: 'a@b.c' },
    });
    expect(oversized.status).toBe(413);
    problem(oversized);

    const badId = await call('GET', '/users/not-a-uuid');
    expect(badId.status).toBe(400);
    expect(problem(badId).detail).toContain('id');

    const badLimit = await call('GET', '/users?limit=1000');
    expect(badLimit.status).toBe(400);
  });

  it('a missing user is 404 and a taken email 409, and nothing is half-written', async () => {
    const missing = await call('GET', '/users/00000000-0000-4000-8000-000000000000', {
      headers: { 'x-consistency': 'strong' },
    });
    expect(missing.status).toBe(404);
    expect(problem(missing).code).toBe('NOT_FOUND');

    const email = uniqueEmail();
    expect((await call('POST', '/users', { body: { name: 'One', email } })).status).toBe(201);
    const duplicate = await call('POST', '/users', { body: { name: 'Two', email } });
    expect(duplicate.status).toBe(409);
    expect(problem(duplicate).code).toBe('CONFLICT');
    const [row] = await stack.query<{ n: string }>(
      'primary',
      'select count(*) as n from users where email = $1',
      [email],
      db.name,
    );
    expect(row?.n).toBe('1');
  });
});
