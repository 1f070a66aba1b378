import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createCluster, type Cluster } from '../src/routing/cluster.js';
import { parseLsn } from '../src/routing/lsn.js';
import type { ConsistencyToken } from '../src/routing/consistency-token.js';
import { LocalStack, type PromoteResult } from '../src/stack/index.js';
import { eventually } from './support/stack.js';

/**
 * A real failover on a stack of its own: replica1 (A) is cut off, the primary writes more, which
 * replica2 (B) replays, then A is promoted. B stays on timeline 1 past A's fork: its replay
 * position is numerically beyond A's new writes, yet it will never hold them.
 */
const A = 'replica1';
const B = 'replica2';
const DB = 'app';

let root: string;
let stack: LocalStack;
let promotion: PromoteResult;
let cluster: Cluster;
let token: ConsistencyToken;
let bClient: pg.Client;
const warnings: { fields: Record<string, unknown>; message: string }[] = [];

async function replayOf(node: string): Promise<bigint> {
  const [row] = await stack.query<{ lsn: string }>(
    node,
    'select pg_last_wal_replay_lsn()::text as lsn',
  );
  return parseLsn(row?.lsn ?? '') ?? 0n;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'replikit-routing-failover-'));
  await chmod(root, 0o755);
  stack = await LocalStack.start({ dir: join(root, 'stack') });
  await stack.query('primary', `create database ${DB}`);
  await stack.query('primary', 'create table items (value text primary key)', [], DB);
  await stack.waitForReplicas();

  // Pausing A's replay would not do: promotion replays everything A has received. A must not
  // receive the primary's last WAL at all.
  await stack.stopNode(A);
  await stack.query('primary', "insert into items values ('old-timeline-only')", [], DB);
  // A segment switch carries B's replay position far past anything A writes after promotion.
  await stack.query('primary', 'select pg_switch_wal()');
  await stack.stopNode('primary');
  await stack.startNode(A);
  promotion = await stack.promote(A);

  cluster = createCluster({
    primary: stack.url(A, DB),
    replicas: { [B]: stack.url(B, DB) },
    monitorIntervalMs: 20,
    waitTimeoutMs: 300,
    breakerHalfOpenAfterMs: 200,
    logger: { warn: (fields, message) => warnings.push({ fields, message }) },
  });
  await cluster.ready();
  ({ token } = await cluster.write("insert into items values ('new-timeline')"));
  bClient = new pg.Client({ connectionString: stack.url(B, DB) });
  await bClient.connect();
}, 180_000);

afterAll(async () => {
  await bClient?.end().catch(() => undefined);
  await cluster?.close();
  await stack?.stop();
  await rm(root, { recursive: true, force: true });
});

describe('reads after a failover', () => {
  it('control: B is on the old timeline, numerically past the token, and lacks the write', async () => {
    expect(promotion).toMatchObject({ primary: A, timeline: 2 });
    expect(promotion.diverged).toContain(B);
    expect(token.timeline).toBe(2);
    // A position-only check would call B caught up for this token …
    expect(await replayOf(B)).toBeGreaterThanOrEqual(token.written);
    // … yet B does not have the row, and never will: a read served there is stale.
    const { rowCount } = await bClient.query("select 1 from items where value = 'new-timeline'");
    expect(rowCount).toBe(0);
  });

  it('never serves a read-your-writes read with a new-timeline token from B', async () => {
    for (let i = 0; i < 20; i++) {
      const result = await cluster.read(
        "select value from items where value = 'new-timeline'",
        [],
        {
          consistency: { level: 'read-your-writes' },
          token,
        },
      );
      expect({ servedBy: result.servedBy, rows: result.rowCount }).toEqual({
        servedBy: 'primary',
        rows: 1,
      });
    }
  });

  it('takes B out of eventual and bounded rotation, saying it diverged', async () => {
    const health = await eventually(() => {
      const status = cluster.replicaStatus()[0]?.health;
      // The fork position shows once the primary's history has been read, a sample or two later.
      return status?.state === 'diverged' && status.forkLsn !== undefined ? status : undefined;
    });
    expect(health).toMatchObject({
      state: 'diverged',
      timeline: 1,
      primaryTimeline: 2,
      forkLsn: promotion.switchLsn,
    });
    expect(warnings).toContainEqual({
      message: 'replica left rotation',
      fields: expect.objectContaining({
        replica: B,
        to: 'diverged',
        timeline: 1,
        primaryTimeline: 2,
      }) as unknown,
    });
    for (const consistency of [
      { level: 'eventual' as const },
      { level: 'bounded-staleness' as const, maxStalenessMs: 60_000 },
    ]) {
      const result = await cluster.read('select 1', [], { consistency });
      expect(result.servedBy).toBe('primary');
    }
  });

  it('puts B back once it is rebuilt as a replica of the new primary', async () => {
    await bClient.end();
    await stack.rebuild(B);
    await eventually(
      () => (cluster.replicaStatus()[0]?.health.state === 'healthy' ? true : undefined),
      30_000,
    );
    const result = await eventually(async () => {
      const read = await cluster.read("select value from items where value = 'new-timeline'", [], {
        consistency: { level: 'read-your-writes' },
        token,
      });
      return read.servedBy === B ? read : undefined;
    });
    expect(result.rowCount).toBe(1);
    expect(
      (await cluster.read('select 1', [], { consistency: { level: 'eventual' } })).servedBy,
    ).toBe(B);
  });
});
