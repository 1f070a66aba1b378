import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';

import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { closeNodePools, createNodePools, type NodePools } from '../src/db/pools.js';
import { checkReadiness } from '../src/db/readiness.js';
import type { LocalStack } from '../src/stack/index.js';
import { createTestDatabase, eventually, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let pools: NodePools;
const extraPools: NodePools[] = [];

/** A TCP server that accepts connections and never says a word, as a hung server would. */
async function blackHole(): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port nothing listens on (bound a moment ago, then released). */
async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `postgres://postgres@127.0.0.1:${port}/postgres`;
}

function poolsFor(primary: string, replicas: { name: string; url: string }[]): NodePools {
  const created = createNodePools({ primary, replicas }, { connectionTimeoutMillis: 500 });
  extraPools.push(created);
  return created;
}

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('readiness');
  pools = createNodePools({
    primary: db.primaryUrl,
    replicas: Object.entries(db.replicaUrls).map(([name, url]) => ({ name, url })),
  });
  await pools.primary.query('create table filler (id serial primary key, pad text)');
  await stack.waitForReplicas();
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await closeNodePools(pools);
  for (const extra of extraPools) await closeNodePools(extra);
  await db.drop();
});

describe('checkReadiness', () => {
  it('lists the primary and every replica, with positions and lag', async () => {
    const report = await checkReadiness(pools);
    expect(report.status).toBe('ok');
    expect(report.ready).toBe(true);
    expect(
      report.nodes.map(({ name, role, reachable, inRecovery }) => ({
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
    expect(report.nodes[0]?.currentLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    for (const replica of report.nodes.slice(1)) {
      expect(replica.replayLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(replica.lagBytes).toBeGreaterThanOrEqual(0);
      expect(replica.error).toBeUndefined();
    }
  });

  it('shows the lag of a replica whose replay is paused, and not of the others', async () => {
    await stack.pauseReplay('replica1');
    await pools.primary.query(
      "insert into filler (pad) select repeat('x', 100) from generate_series(1, 1000)",
    );
    const report = await checkReadiness(pools);
    const replica1 = report.nodes.find((node) => node.name === 'replica1');
    expect(replica1?.lagBytes).toBeGreaterThan(100_000);
    expect(report.status).toBe('ok');
    await eventually(async () => {
      const again = await checkReadiness(pools);
      return again.nodes.find((node) => node.name === 'replica2')?.lagBytes === 0
        ? true
        : undefined;
    });

    await stack.resumeReplay('replica1');
    await eventually(async () => {
      const again = await checkReadiness(pools);
      return again.nodes.find((node) => node.name === 'replica1')?.lagBytes === 0
        ? true
        : undefined;
    });
  });

  it('stays ready, degraded, when a replica is down', async () => {
    const down = await closedPortUrl();
    const report = await checkReadiness(
      poolsFor(db.primaryUrl, [
        { name: 'replica1', url: db.replicaUrls['replica1']! },
        { name: 'gone', url: down },
      ]),
    );
    expect(report.ready).toBe(true);
    expect(report.status).toBe('degraded');
    expect(report.nodes[2]).toEqual({
      name: 'gone',
      role: 'replica',
      reachable: false,
      inRecovery: null,
      error: expect.stringMatching(/ECONNREFUSED/) as unknown,
    });
  });

  it('is not ready when the primary is down', async () => {
    const report = await checkReadiness(
      poolsFor(await closedPortUrl(), [{ name: 'replica1', url: db.replicaUrls['replica1']! }]),
    );
    expect(report.ready).toBe(false);
    expect(report.status).toBe('unavailable');
    expect(report.nodes[0]).toMatchObject({ name: 'primary', reachable: false, inRecovery: null });
    // No primary position, so no lag to report, though the replica answers.
    expect(report.nodes[1]).toMatchObject({ reachable: true, inRecovery: true });
    expect(report.nodes[1]?.lagBytes).toBeUndefined();
  });

  it('answers within its deadline when a node accepts connections but never replies', async () => {
    const hole = await blackHole();
    try {
      // Control: without a deadline, a connection to it stays pending well past the check's.
      const client = new pg.Client({ connectionString: hole.url });
      client.on('error', () => undefined);
      const outcome = await Promise.race([
        client.connect().then(
          () => 'connected',
          () => 'failed',
        ),
        new Promise((resolve) => setTimeout(() => resolve('still pending'), 1_000)),
      ]);
      expect(outcome).toBe('still pending');
      // (client.end() would wait for the handshake too; closing the hole ends the connection.)

      const started = performance.now();
      // The pool's own connection timeout is far longer: only the check's deadline can answer.
      const hung = createNodePools(
        { primary: hole.url, replicas: [] },
        { connectionTimeoutMillis: 60_000 },
      );
      extraPools.push(hung);
      const report = await checkReadiness(hung, { timeoutMs: 300 });
      const elapsed = performance.now() - started;
      expect(elapsed).toBeLessThan(1_000);
      expect(report.ready).toBe(false);
      expect(report.nodes[0]?.error).toBe('no answer within 300 ms');
    } finally {
      await hole.close();
    }
  });
});
