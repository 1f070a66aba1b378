import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createApp } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { PROFILE_HEADERS, PROFILES_PROJECTION } from '../src/app/profiles.js';
import { listen, type RunningServer } from '../src/app/server.js';
import { createEventStore, type EventStore } from '../src/events/index.js';
import { createCluster, decodeToken, encodeToken, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createLogger } from '../src/telemetry/logger.js';
import { createMetricsRegistry } from '../src/telemetry/metrics.js';
import { migrateEvents } from './support/events.js';
import { jsonClient, problem } from './support/http.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let store: EventStore;
let cluster: Cluster;
let server: RunningServer;
let base = '';
const call = jsonClient(() => base);

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('profiles');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl });
  cluster = createCluster({ primary: db.primaryUrl, replicas: db.replicaUrls });
  await cluster.ready();
  await store.startProjection(PROFILES_PROJECTION).activated;
  server = await listen(
    createApp({
      config: loadConfig({}),
      logger: createLogger({ level: 'silent', service: 'test' }),
      cluster,
      registry: createMetricsRegistry(),
      profiles: { store, cluster },
    }),
    { port: 0, host: '127.0.0.1' },
  );
  base = server.url;
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await server?.close();
  await store?.close();
  await cluster?.close();
  await db?.drop();
});

describe('profiles demo (CQRS over the event store)', () => {
  it('reads its own follows and profile updates through the read model when it passes the position', async () => {
    const ada = randomUUID();
    const patched = await call('PATCH', `/users/${ada}/profile`, {
      body: { name: 'Ada', email: 'ada@example.com' },
    });
    expect(patched.status).toBe(200);
    for (let i = 1; i <= 10; i++) {
      const follow = await call('POST', `/users/${randomUUID()}/follow`, {
        body: { targetId: ada },
      });
      expect(follow.status).toBe(202);
      const position = follow.headers.get(PROFILE_HEADERS.position)!;
      const read = await call('GET', `/users/${ada}/profile`, {
        headers: { [PROFILE_HEADERS.position]: position },
      });
      expect(read.status).toBe(200);
      expect(read.headers.get(PROFILE_HEADERS.stale)).toBe('false');
      expect(read.body).toMatchObject({
        name: 'Ada',
        email: 'ada@example.com',
        followers: i,
        stale: false,
      });
    }
  });

  it('hands back a consistency token from profile writes, and read-your-writes with it (header or cookie) waits for projection and replica', async () => {
    const ada = randomUUID();
    const created = await call('PATCH', `/users/${ada}/profile`, { body: { name: 'Ada' } });
    const first = created.headers.get('x-consistency-token');
    expect(first).toMatch(/^rk1\./);
    // Everyone has the first version: the projection applied it and both replicas replayed it.
    expect(
      (await store.waitForProjection('profiles', 'latest', { timeoutMs: 10_000 })).reached,
    ).toBe(true);
    await stack.waitForReplicas();
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');

    // Header: the token of the write, and nothing else, asks for the write.
    const patched = await call('PATCH', `/users/${ada}/profile`, {
      body: { name: 'Grace' },
      headers: { 'x-consistency-token': first! },
    });
    expect(patched.status).toBe(200);
    const token = patched.headers.get('x-consistency-token')!;
    expect(token).toMatch(/^rk1\./);
    expect(token).not.toBe(first);
    const read = await call('GET', `/users/${ada}/profile`, {
      headers: { 'x-consistency': 'read-your-writes', 'x-consistency-token': token },
    });
    expect(read.body).toMatchObject({ name: 'Grace', stale: false });

    // Control: with replay paused, an eventual read shows the old name.
    const eventual = await call('GET', `/users/${ada}/profile`, {
      headers: { 'x-consistency': 'eventual' },
    });
    expect(eventual.body).toMatchObject({ name: 'Ada' });

    // Cookie: a follow refreshes the cookie it came with, and the cookie alone asks for the write.
    const follower = randomUUID();
    const followed = await call('POST', `/users/${follower}/follow`, {
      body: { targetId: ada },
      headers: { cookie: `replikit_token=${token}` },
    });
    expect(followed.status).toBe(202);
    const cookie = /^replikit_token=([^;]+)/.exec(followed.headers.get('set-cookie') ?? '')?.[1];
    expect(cookie).toMatch(/^rk1\./);
    expect(cookie).not.toBe(token);
    const afterFollow = await call('GET', `/users/${ada}/profile`, {
      headers: { 'x-consistency': 'read-your-writes', cookie: `replikit_token=${cookie!}` },
    });
    expect(afterFollow.body).toMatchObject({ name: 'Grace', followers: 1, stale: false });
  });

  it("checks the token on every route: one ahead of the primary is refused, another cluster's is untrusted", async () => {
    const ada = randomUUID();
    const patched = await call('PATCH', `/users/${ada}/profile`, { body: { name: 'Ada' } });
    const real = decodeToken(patched.headers.get('x-consistency-token')!);
    const forged = encodeToken({ ...real, written: real.written + 1_000_000_000_000n });
    const foreign = encodeToken({ ...real, systemId: '42' });
    const follower = randomUUID();
    for (const [method, path, body] of [
      ['PATCH', `/users/${ada}/profile`, { name: 'Mallory' }],
      ['POST', `/users/${follower}/follow`, { targetId: ada }],
      ['GET', `/users/${ada}/profile`, undefined],
    ] as const) {
      const options = body === undefined ? {} : { body };
      const refused = await call(method, path, {
        ...options,
        headers: { 'x-consistency-token': forged },
      });
      expect(refused.status, `${method} ${path}`).toBe(400);
      expect(problem(refused).code).toBe('TOKEN_AHEAD');
      const untrusted = await call(method, path, {
        ...options,
        headers: { 'x-consistency-token': foreign },
      });
      expect(untrusted.status, `${method} ${path}`).toBeLessThan(300);
      expect(untrusted.headers.get('x-consistency-token-status')).toBe('untrusted');
      // Never the token sent: a write's own, and none from a read.
      const answered = untrusted.headers.get('x-consistency-token');
      if (method === 'GET') expect(answered).toBeNull();
      else expect(decodeToken(answered!).systemId).toBe(real.systemId);
    }
    // Each write went through once: with the untrusted token, never with the refused one.
    const types = async (user: string) =>
      (await store.readStream(`user-${user}`)).map((event) => event.type);
    expect(await types(ada)).toEqual(['UserProfileUpdated', 'UserProfileUpdated']);
    expect(await types(follower)).toEqual(['UserFollowed']);
  });

  it('answers problems for bad input', async () => {
    const id = randomUUID();
    expect(
      problem(await call('POST', `/users/${id}/follow`, { body: { targetId: id } })).status,
    ).toBe(400);
    expect(
      problem(
        await call('GET', `/users/${id}/profile`, {
          headers: { [PROFILE_HEADERS.position]: 'soon' },
        }),
      ).status,
    ).toBe(400);
    expect(problem(await call('GET', `/users/${randomUUID()}/profile`)).status).toBe(404);
  });

  it('refuses an X-Projection-Position past the end of the event log with 400', async () => {
    const ada = randomUUID();
    const patched = await call('PATCH', `/users/${ada}/profile`, { body: { name: 'Ada' } });
    const [transactionId, position] = patched.headers
      .get(PROFILE_HEADERS.position)!
      .split('.')
      .map(BigInt) as [bigint, bigint];
    for (const ahead of [
      `${transactionId}.${position + 1_000_000n}`,
      `${transactionId + 1_000_000n}.1`,
      '18446744073709551615.9223372036854775807',
    ]) {
      const read = await call('GET', `/users/${ada}/profile`, {
        headers: { [PROFILE_HEADERS.position]: ahead },
      });
      expect(read.status, ahead).toBe(400);
      expect(problem(read).code).toBe('PROJECTION_POSITION_AHEAD');
    }
    // Control: the write's own position is no problem.
    const own = await call('GET', `/users/${ada}/profile`, {
      headers: { [PROFILE_HEADERS.position]: `${transactionId}.${position}` },
    });
    expect(own.status).toBe(200);
    expect(own.body).toMatchObject({ name: 'Ada', stale: false });
  });

  it('rebuilds the projection beside the serving one and switches over', async () => {
    const rebuilt = await call('POST', '/projections/profiles/rebuild');
    expect(rebuilt.status).toBe(202);
    expect(rebuilt.body).toMatchObject({ version: 2 });
    const active = await store.waitForProjection('profiles', 'latest', { timeoutMs: 30_000 });
    expect(active.reached).toBe(true);
    const deadline = Date.now() + 30_000;
    while (
      (await store.projections('profiles')).find((p) => p.status === 'active')?.version !== 2
    ) {
      if (Date.now() > deadline) throw new Error('version 2 did not take over within 30 s');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });
});
