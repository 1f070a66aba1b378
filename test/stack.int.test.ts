import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { LocalStack } from '../src/stack/index.js';
import { createTestDatabase, eventually, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
const clients = new Map<string, pg.Client>();

async function client(node: string): Promise<pg.Client> {
  const existing = clients.get(node);
  if (existing !== undefined) return existing;
  const url = node === 'primary' ? db.primaryUrl : db.replicaUrls[node];
  const created = new pg.Client({ connectionString: url });
  created.on('error', () => undefined); // a killed node ends the connection; tests reconnect
  await created.connect();
  clients.set(node, created);
  return created;
}

async function dropClient(node: string): Promise<void> {
  const existing = clients.get(node);
  clients.delete(node);
  await existing?.end().catch(() => undefined);
}

/** Inserts a row on the primary; resolves once COMMIT has returned. */
async function write(value: string): Promise<{ lsn: string; committedAt: Date }> {
  const primary = await client('primary');
  const { rows } = await primary.query<{ committed_at: Date }>(
    'insert into items (value) values ($1) returning pg_xact_commit_timestamp(xmin) as committed_at',
    [value],
  );
  // Read after COMMIT returned, so the position covers the commit record.
  const lsn = await primary.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn');
  const committed = rows[0]?.committed_at;
  return { lsn: lsn.rows[0]!.lsn, committedAt: committed ?? new Date() };
}

async function sees(node: string, value: string): Promise<boolean> {
  const c = await client(node);
  const { rowCount } = await c.query('select 1 from items where value = $1', [value]);
  return rowCount === 1;
}

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('stack');
  const primary = await client('primary');
  await primary.query('create table items (id serial primary key, value text not null)');
  await stack.waitForReplicas();
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  for (const node of [...clients.keys()]) await dropClient(node);
  await db.drop();
});

describe('local stack', () => {
  it('has a primary and two replicas, the replicas in recovery', async () => {
    const status = await stack.status();
    expect(status.map((node) => [node.name, node.running, node.inRecovery])).toEqual([
      ['primary', true, false],
      ['replica1', true, true],
      ['replica2', true, true],
    ]);
    const [settings] = await stack.query<{ wal_level: string; mpx: string; hot: string }>(
      'replica1',
      "select current_setting('wal_level') as wal_level, current_setting('max_prepared_transactions') as mpx, current_setting('hot_standby') as hot",
    );
    expect(settings).toMatchObject({ wal_level: 'logical', hot: 'on' });
    // 200 on stacks made now; a stack folder made by an earlier version keeps its 64.
    expect(Number(settings?.mpx)).toBeGreaterThanOrEqual(64);
    const slots = await stack.query<{ slot_name: string; active: boolean }>(
      'primary',
      'select slot_name, active from pg_replication_slots order by slot_name',
    );
    expect(slots).toEqual([
      { slot_name: 'replica1', active: true },
      { slot_name: 'replica2', active: true },
    ]);
  });

  it('shows a row written on the primary on both replicas', async () => {
    await write('everywhere');
    for (const replica of ['replica1', 'replica2']) {
      expect(
        await eventually(async () => ((await sees(replica, 'everywhere')) ? true : undefined)),
      ).toBe(true);
    }
  });

  it('hides new rows on a replica whose replay is paused, and shows them after resume', async () => {
    await stack.pauseReplay('replica1');
    const { lsn } = await write('paused');
    // The WAL has reached the replica; only replay is held back. Without this the check below could
    // pass merely because the WAL had not arrived yet.
    const replica = await client('replica1');
    await eventually(async () => {
      const { rows } = await replica.query<{ ok: boolean }>(
        'select pg_last_wal_receive_lsn() >= $1::pg_lsn as ok',
        [lsn],
      );
      return rows[0]?.ok === true ? true : undefined;
    });
    expect(await sees('replica1', 'paused')).toBe(false);
    // The control: the other replica, not paused, shows it.
    expect(
      await eventually(async () => ((await sees('replica2', 'paused')) ? true : undefined)),
    ).toBe(true);

    await stack.resumeReplay('replica1');
    expect(
      await eventually(async () => ((await sees('replica1', 'paused')) ? true : undefined)),
    ).toBe(true);
  });

  it('with a 300 ms apply delay, shows a commit no sooner than 300 ms after it', async () => {
    // Measured on the replica, in microseconds, against the commit timestamp replayed from the
    // primary: clock_timestamp() runs after the statement's snapshot, so it is no earlier than
    // the moment the row became visible.
    const visibleAfterMs = async (value: string): Promise<number | undefined> => {
      const replica = await client('replica2');
      const { rows } = await replica.query<{ ms: number }>(
        'select extract(epoch from clock_timestamp() - pg_xact_commit_timestamp(xmin))::float8 * 1000 as ms from items where value = $1',
        [value],
      );
      return rows[0]?.ms;
    };
    await stack.setApplyDelay('replica2', 300);
    await write('delayed');
    expect(await eventually(() => visibleAfterMs('delayed'))).toBeGreaterThanOrEqual(300);

    // The control: the same measurement without the delay shows the row, so the probe does see rows.
    await stack.clearApplyDelay('replica2');
    await write('undelayed');
    expect(await eventually(() => visibleAfterMs('undelayed'))).toBeGreaterThanOrEqual(0);
  });

  it('restarts a killed replica, which then catches up on what it missed', async () => {
    await dropClient('replica1');
    await stack.killNode('replica1');
    const status = await stack.status();
    expect(status.find((node) => node.name === 'replica1')?.running).toBe(false);
    await write('while-down');
    await expect(client('replica1')).rejects.toThrow();

    await stack.startNode('replica1');
    expect(
      await eventually(async () => ((await sees('replica1', 'while-down')) ? true : undefined)),
    ).toBe(true);
  });

  it('keeps its data across a stop and start', async () => {
    await write('durable');
    await stack.waitForReplicas();
    for (const node of [...clients.keys()]) await dropClient(node);
    await stack.stop();
    await stack.resetFaults();
    for (const node of ['primary', 'replica1', 'replica2']) {
      expect(await sees(node, 'durable')).toBe(true);
    }
  });
});
