import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createCluster, type Cluster } from '../src/routing/cluster.js';
import type { ConsistencyToken } from '../src/routing/consistency-token.js';
import { LocalStack } from '../src/stack/index.js';
import { eventually } from './support/stack.js';

/**
 * A cluster given candidate nodes instead of a fixed primary, through a real failover on a stack
 * of its own: the stack's primary is stopped, replica1 promoted, replica2 re-pointed, and the old
 * primary rebuilt as a replica. Node names are the cluster's own (`n0`…), not the stack's.
 */
const DB = 'app';
const NODE_OF: Record<string, string> = { n0: 'primary', n1: 'replica1', n2: 'replica2' };

let root: string;
let stack: LocalStack;
let cluster: Cluster;
/** The control: the same cluster with the first primary's address fixed. */
let fixed: Cluster;
let before: ConsistencyToken;
let after: ConsistencyToken;
const logs: { level: 'warn' | 'info'; fields: Record<string, unknown>; message: string }[] = [];

function healthOf(c: Cluster, name: string): string | undefined {
  return c.replicaStatus().find((replica) => replica.name === name)?.health.state;
}

async function writeEventually(c: Cluster, value: string): Promise<ConsistencyToken> {
  // Writes fail while no node is writable (the old primary stopped, the new one not yet seen).
  return eventually(async () => (await c.write('insert into items values ($1)', [value])).token);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'replikit-routing-candidates-'));
  await chmod(root, 0o755);
  stack = await LocalStack.start({ dir: join(root, 'stack') });
  await stack.query('primary', `create database ${DB}`);
  await stack.query('primary', 'create table items (value text primary key)', [], DB);
  await stack.waitForReplicas();
  const common = {
    monitorIntervalMs: 20,
    waitTimeoutMs: 500,
    breakerHalfOpenAfterMs: 200,
  };
  cluster = createCluster({
    nodes: Object.fromEntries(
      Object.entries(NODE_OF).map(([name, node]) => [name, stack.url(node, DB)]),
    ),
    ...common,
    logger: {
      warn: (fields, message) => logs.push({ level: 'warn', fields, message }),
      info: (fields, message) => logs.push({ level: 'info', fields, message }),
    },
  });
  fixed = createCluster({
    primary: stack.url('primary', DB),
    replicas: { n1: stack.url('replica1', DB), n2: stack.url('replica2', DB) },
    ...common,
  });
  await Promise.all([cluster.ready(), fixed.ready()]);
}, 180_000);

afterAll(async () => {
  await cluster?.close();
  await fixed?.close();
  await stack?.stop();
  await rm(root, { recursive: true, force: true });
});

describe('a cluster given candidate nodes', () => {
  it('finds the writable node, and reads from the others', async () => {
    expect(cluster.primaryStatus()).toMatchObject({ node: 'n0', timeline: 1 });
    before = (await cluster.write("insert into items values ('before')")).token;
    expect(before.timeline).toBe(1);
    expect(healthOf(cluster, 'n0')).toBe('primary');
    // The primary has nothing to replay: no lag to alert on.
    expect(cluster.replicaStatus().find((node) => node.name === 'n0')).toMatchObject({
      lagSeconds: 0,
      lagBytes: 0,
      up: true,
    });
    await eventually(() =>
      healthOf(cluster, 'n1') === 'healthy' && healthOf(cluster, 'n2') === 'healthy'
        ? true
        : undefined,
    );
    const read = await cluster.read("select 1 from items where value = 'before'", [], {
      consistency: { level: 'read-your-writes' },
      token: before,
    });
    expect(read.rowCount).toBe(1);
    expect(['n1', 'n2']).toContain(read.servedBy);
  });

  it('refuses a node named like the primary role, and a configuration with both forms', () => {
    expect(() => createCluster({ nodes: { primary: stack.url('primary', DB) } })).toThrow(
      /"primary"/,
    );
    // Types refuse it too; plain JavaScript callers meet the runtime check.
    const both = {
      primary: stack.url('primary', DB),
      replicas: {},
      nodes: { n0: stack.url('primary', DB) },
    } as unknown as Parameters<typeof createCluster>[0];
    expect(() => createCluster(both)).toThrow(/either/);
  });

  it('moves writes and tokens to a promoted replica, and the other replica follows it', async () => {
    const promotion = await stack.promote(NODE_OF.n1!);
    expect(promotion).toMatchObject({ primary: 'replica1', timeline: 2 });
    after = await writeEventually(cluster, 'after');
    expect(after.timeline).toBe(2);
    expect(after.systemId).toBe(before.systemId);
    expect(cluster.primaryStatus()).toMatchObject({ node: 'n1', timeline: 2 });
    expect(healthOf(cluster, 'n1')).toBe('primary');
    expect(logs).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        message: 'the primary changed',
        fields: expect.objectContaining({ from: 'n0', to: 'n1', timeline: 2 }) as unknown,
      }),
    );
    // n2 follows the new timeline; n0 is stopped.
    await eventually(() => (healthOf(cluster, 'n2') === 'healthy' ? true : undefined), 30_000);
    expect(healthOf(cluster, 'n0')).toBe('down');
    for (let i = 0; i < 10; i++) {
      const read = await cluster.read("select 1 from items where value = 'after'", [], {
        consistency: { level: 'read-your-writes' },
        token: after,
      });
      expect({ rows: read.rowCount, on: read.servedBy === 'n0' }).toEqual({ rows: 1, on: false });
    }
  });

  it('control: a cluster with the old primary fixed cannot write after the failover', async () => {
    await expect(fixed.write("insert into items values ('fixed')")).rejects.toThrow();
    expect(fixed.primaryStatus()?.timeline).toBe(1);
  });

  it('takes the old primary back once it is rebuilt as a replica of the new one', async () => {
    await stack.rebuild(NODE_OF.n0!);
    await eventually(() => (healthOf(cluster, 'n0') === 'healthy' ? true : undefined), 30_000);
    const read = await eventually(async () => {
      const result = await cluster.read("select 1 from items where value = 'after'", [], {
        consistency: { level: 'read-your-writes' },
        token: after,
      });
      return result.servedBy === 'n0' ? result : undefined;
    });
    expect(read.rowCount).toBe(1);
    // Writes stay on n1: n0 is a replica now.
    const next = await cluster.write("insert into items values ('later')");
    expect(next.token.timeline).toBe(2);
    expect(cluster.primaryStatus()).toMatchObject({ node: 'n1' });
  });
});
