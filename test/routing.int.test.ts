import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  createCluster,
  newSession,
  RoutingError,
  withSession,
  type Cluster,
  type Consistency,
  type ConsistencyToken,
  type ReadEvent,
  type WaitEvent,
} from '../src/routing/index.js';
import { parseLsn } from '../src/routing/lsn.js';
import { LocalStack } from '../src/stack/index.js';
import { createTestDatabase, eventually, testStack, type TestDatabase } from './support/stack.js';
import { TcpProxy } from './support/tcp-proxy.js';

let stack: LocalStack;
let db: TestDatabase;
let cluster: Cluster;
const reads: ReadEvent[] = [];
const waits: WaitEvent[] = [];

const ROWS = 50;

async function bump(id: number): Promise<{ version: number; token: ConsistencyToken }> {
  const { rows, token } = await cluster.write<{ version: number }>(
    'update counters set version = version + 1 where id = $1 returning version',
    [id],
  );
  return { version: rows[0]!.version, token };
}

async function readVersion(
  id: number,
  consistency: Consistency,
  token?: ConsistencyToken,
  waitTimeoutMs?: number,
) {
  const result = await cluster.read<{ version: number }>(
    'select version from counters where id = $1',
    [id],
    {
      consistency,
      ...(token === undefined ? {} : { token }),
      ...(waitTimeoutMs === undefined ? {} : { waitTimeoutMs }),
    },
  );
  return { version: result.rows[0]!.version, servedBy: result.servedBy, reason: result.reason };
}

/** A write by another client: it never passes through the cluster or any session under test. */
async function otherWrite(id: number): Promise<number> {
  const [row] = await stack.query<{ version: number }>(
    'primary',
    'update counters set version = version + 1 where id = $1 returning version',
    [id],
    db.name,
  );
  return row!.version;
}

/**
 * `cycles` write-then-read cycles, `concurrency` at a time, each on its own row: the number of
 * reads that returned a version older than the one just written, and where reads were served.
 */
async function cycles(count: number, consistency: Consistency, concurrency = 25) {
  let stale = 0;
  const servedBy: Record<string, number> = {};
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      while (next < count) {
        next++;
        const id = (worker % ROWS) + 1;
        const written = await bump(id);
        const read = await readVersion(id, consistency, written.token);
        if (read.version < written.version) stale++;
        servedBy[read.servedBy] = (servedBy[read.servedBy] ?? 0) + 1;
      }
    }),
  );
  return { stale, servedBy };
}

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('routing');
  await stack.query(
    'primary',
    'create table counters (id int primary key, version int not null)',
    [],
    db.name,
  );
  await stack.query(
    'primary',
    `insert into counters select g, 0 from generate_series(1, ${ROWS}) g`,
    [],
    db.name,
  );
  await stack.waitForReplicas();
  cluster = createCluster({
    primary: db.primaryUrl,
    replicas: db.replicaUrls,
    waitTimeoutMs: 2000,
    observer: { onRead: (event) => reads.push(event), onWait: (event) => waits.push(event) },
  });
  await cluster.ready();
});

afterEach(async () => {
  await stack.resetFaults();
});

afterAll(async () => {
  await cluster.close();
  await db.drop();
});

describe('read-your-writes', () => {
  it('never returns a version older than the one just written, with replica1 paused', async () => {
    await stack.pauseReplay('replica1');
    const ryw = await cycles(1000, { level: 'read-your-writes' });
    expect(ryw.stale).toBe(0);
    // The paused replica cannot serve them; the other replica does.
    expect(ryw.servedBy['replica1'] ?? 0).toBe(0);
    expect(ryw.servedBy['replica2'] ?? 0).toBeGreaterThan(0);

    // The control: eventual reads under the same paused replica do come back stale, so the
    // harness above would have seen staleness had there been any.
    const eventual = await cycles(200, { level: 'eventual' });
    expect(eventual.stale).toBeGreaterThan(0);
  });

  it('never returns an older version with a 200 ms apply delay on both replicas', async () => {
    await stack.setApplyDelay('replica1', 200);
    await stack.setApplyDelay('replica2', 200);
    const ryw = await cycles(1000, { level: 'read-your-writes' }, 50);
    expect(ryw.stale).toBe(0);
    // Replicas still serve them, after waiting.
    expect((ryw.servedBy['replica1'] ?? 0) + (ryw.servedBy['replica2'] ?? 0)).toBeGreaterThan(500);

    const eventual = await cycles(200, { level: 'eventual' }, 50);
    expect(eventual.stale).toBeGreaterThan(0);
  });

  it('never returns an older version with nothing injected, mostly from replicas', async () => {
    const ryw = await cycles(1000, { level: 'read-your-writes' });
    expect(ryw.stale).toBe(0);
    expect((ryw.servedBy['replica1'] ?? 0) + (ryw.servedBy['replica2'] ?? 0)).toBeGreaterThan(900);
  });

  it('falls back to the primary when no replica catches up within the wait, and counts it', async () => {
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');
    const written = await bump(1);
    const before = reads.length;
    const result = await cluster.read<{ version: number }>(
      'select version from counters where id = 1',
      [],
      {
        token: written.token,
        waitTimeoutMs: 200,
      },
    );
    expect(result.rows[0]!.version).toBe(written.version);
    expect(result).toMatchObject({ servedBy: 'primary', reason: 'timeout_fallback' });
    expect(reads.slice(before)).toMatchObject([{ target: 'primary', reason: 'timeout_fallback' }]);
    expect(waits.at(-1)).toMatchObject({ outcome: 'timeout', replica: undefined });
  });

  it('fails fast with the expected wait when told not to fall back', async () => {
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');
    const written = await bump(2);
    const failure = await cluster
      .read('select 1', [], { token: written.token, waitTimeoutMs: 100, onWaitTimeout: 'error' })
      .catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(RoutingError);
    expect((failure as RoutingError).code).toBe('REPLICA_WAIT_TIMEOUT');
  });

  it('rejects a token ahead of the primary instead of waiting on it', async () => {
    const { token } = await bump(3);
    const forged = { ...token, written: token.written + 10_000_000_000n };
    const failure = await cluster
      .read('select 1', [], { token: forged })
      .catch((err: unknown) => err);
    expect((failure as RoutingError).code).toBe('TOKEN_AHEAD');
  });

  it('reads from the primary with a token of another cluster or timeline', async () => {
    const { token } = await bump(4);
    for (const foreign of [
      { ...token, systemId: '12345' },
      { ...token, timeline: token.timeline + 1 },
    ]) {
      const session = newSession({ token: foreign });
      const result = await withSession(session, () => cluster.read('select 1'));
      expect(result).toMatchObject({ servedBy: 'primary', reason: 'token_untrusted' });
      expect(session.tokenUntrusted).toBe(true);
    }
  });

  it("a write refuses a session token ahead of the primary before it writes, and never merges another cluster's", async () => {
    const { token, version } = await bump(6);
    const forged = { ...token, written: token.written + 10_000_000_000n };
    const refused = newSession({ token: forged });
    for (const write of [
      (): Promise<unknown> =>
        cluster.write('update counters set version = version + 1 where id = 6'),
      () =>
        cluster.transaction((tx) =>
          tx.query('update counters set version = version + 1 where id = 6'),
        ),
    ]) {
      refused.token = forged;
      const failure = await withSession(refused, write).catch((err: unknown) => err);
      expect((failure as RoutingError).code).toBe('TOKEN_AHEAD');
      // Not handed back with the error either.
      expect(refused.token).toBeUndefined();
    }
    expect((await readVersion(6, { level: 'strong' })).version).toBe(version);

    for (const foreign of [
      { ...forged, systemId: '12345' },
      { ...forged, timeline: token.timeline + 1 },
    ]) {
      const session = newSession({ token: foreign });
      const written = await withSession(session, () => bump(6));
      expect(session.token).toEqual(written.token);
      expect(session.tokenUntrusted).toBe(true);
    }
  });

  it('picks up the token from the session and merges new writes into it', async () => {
    const session = newSession();
    await withSession(session, async () => {
      const first = await bump(5);
      expect(session.token?.written).toBe(first.token.written);
      await stack.pauseReplay('replica1');
      await stack.pauseReplay('replica2');
      const second = await bump(5);
      expect(session.token?.written).toBe(second.token.written);
      const read = await readVersion(5, { level: 'read-your-writes' });
      expect(read.version).toBe(second.version);
      expect(session.servedBy).toBe(read.servedBy);
    });
  });
});

describe('monotonic reads', () => {
  it('never go backwards in a session across two replicas with different delays', async () => {
    await stack.setApplyDelay('replica1', 50);
    await stack.setApplyDelay('replica2', 300);
    const session = newSession();
    let last = -1;
    let backwards = 0;
    const served = new Set<string>();
    await withSession(session, async () => {
      const writer = (async () => {
        for (let i = 0; i < 100; i++) {
          // Written outside the session: the reader has not written, only read.
          await withSession(newSession(), () => bump(10));
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })();
      for (let i = 0; i < 300; i++) {
        const read = await readVersion(10, { level: 'monotonic' });
        served.add(read.servedBy);
        if (read.version < last) backwards++;
        last = Math.max(last, read.version);
      }
      await writer;
    });
    expect(backwards).toBe(0);
    expect(served.size).toBeGreaterThan(1);

    // The control: eventual reads in the same situation do go backwards. Read until they do (a
    // busy machine can take a while to interleave the two replicas), at most 3000 reads.
    let eventualBackwards = 0;
    let eventualLast = -1;
    let reading = true;
    const writer = (async () => {
      while (reading) {
        await bump(11);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    for (let i = 0; i < 3000 && eventualBackwards === 0; i++) {
      const read = await readVersion(11, { level: 'eventual' });
      if (read.version < eventualLast) eventualBackwards++;
      eventualLast = Math.max(eventualLast, read.version);
    }
    reading = false;
    await writer;
    expect(eventualBackwards).toBeGreaterThan(0);
  });

  it('do not go back in time after a read at another level', async () => {
    await stack.pauseReplay('replica1');
    let backwards = 0;
    const served = new Set<string>();
    for (let i = 0; i < 20; i++) {
      await withSession(newSession(), async () => {
        await otherWrite(42);
        const strong = await readVersion(42, { level: 'strong' });
        const monotonic = await readVersion(42, { level: 'monotonic' });
        served.add(monotonic.servedBy);
        if (monotonic.version < strong.version) backwards++;
      });
    }
    expect(backwards).toBe(0);
    expect(served.has('replica2')).toBe(true);

    // The control: eventual reads after the strong one do go back in time on the paused replica.
    let eventualBackwards = 0;
    for (let i = 0; i < 20 && eventualBackwards === 0; i++) {
      await withSession(newSession(), async () => {
        await otherWrite(42);
        const strong = await readVersion(42, { level: 'strong' });
        const eventual = await readVersion(42, { level: 'eventual' });
        if (eventual.version < strong.version) eventualBackwards++;
      });
    }
    expect(eventualBackwards).toBeGreaterThan(0);
  });

  it('after one served by the primary, are served by replicas across a WAL segment switch on an idle primary', async () => {
    await withSession(newSession(), async () => {
      // A monotonic read the primary answers: no replica has the session's write yet.
      await stack.pauseReplay('replica1');
      await stack.pauseReplay('replica2');
      await bump(43);
      await stack.query('primary', 'select pg_switch_wal()');
      const first = await readVersion(43, { level: 'monotonic' }, undefined, 100);
      expect(first.servedBy).toBe('primary');

      // The primary stays idle; the replicas replay everything it wrote, up to the segment end.
      await stack.resumeReplay('replica1');
      await stack.resumeReplay('replica2');
      await stack.waitForReplicas();
      const second = await readVersion(43, { level: 'monotonic' }, undefined, 1000);
      expect(second.servedBy).toMatch(/^replica[12]$/);
      expect(second.version).toBeGreaterThanOrEqual(first.version);
    });
  });
});

describe('sticky window', () => {
  it('reads from the primary within the window after a write, from replicas after it', async () => {
    const session = newSession();
    await withSession(session, async () => {
      await bump(30);
      const within = await cluster.read('select 1', [], {
        consistency: { level: 'sticky-window', windowMs: 500 },
      });
      expect(within).toMatchObject({ servedBy: 'primary', reason: 'sticky_window' });
      await new Promise((resolve) => setTimeout(resolve, 600));
      const after = await cluster.read('select 1', [], {
        consistency: { level: 'sticky-window', windowMs: 500 },
      });
      expect(after.reason).toBe('any_replica');
      expect(after.servedBy).toMatch(/^replica[12]$/);
    });
    // A session that never wrote is not stuck to the primary at all.
    const fresh = await withSession(newSession(), () =>
      cluster.read('select 1', [], { consistency: { level: 'sticky-window', windowMs: 60_000 } }),
    );
    expect(fresh.reason).toBe('any_replica');
  });
});

describe('bounded staleness and rotation', () => {
  it('keeps to its bound: a replica delayed past it is not used', async () => {
    await stack.setApplyDelay('replica1', 1000);
    // Steady writes so the delayed replica's lag shows.
    const stop = AbortSignal.timeout(3000);
    const writer = (async () => {
      while (!stop.aborted) {
        await bump(20);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    await eventually(() => {
      const lag =
        cluster.replicaStatus().find((replica) => replica.name === 'replica1')?.lagSeconds ?? 0;
      return lag > 0.5 ? true : undefined;
    });
    const served: Record<string, number> = {};
    for (let i = 0; i < 100; i++) {
      const result = await cluster.read('select 1', [], {
        consistency: { level: 'bounded-staleness', maxStalenessMs: 300 },
      });
      served[result.servedBy] = (served[result.servedBy] ?? 0) + 1;
    }
    await writer;
    expect(served['replica1'] ?? 0).toBe(0);
    expect(served['replica2'] ?? 0).toBe(100);
  });

  it('serves every read when a replica is killed under load, and takes it out of rotation', async () => {
    let failed = 0;
    let done = 0;
    const stop = AbortSignal.timeout(4000);
    const load = Promise.all(
      Array.from({ length: 8 }, async () => {
        while (!stop.aborted) {
          try {
            await cluster.read('select pg_sleep(0.002)', [], {
              consistency: { level: 'eventual' },
            });
            done++;
          } catch {
            failed++;
          }
        }
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    await stack.killNode('replica1');
    await eventually(() => {
      const replica1 = cluster.replicaStatus().find((replica) => replica.name === 'replica1');
      return replica1?.health.state === 'down' ? true : undefined;
    });
    await load;
    expect(failed).toBe(0);
    expect(done).toBeGreaterThan(100);
    const replica1 = cluster.replicaStatus().find((replica) => replica.name === 'replica1')!;
    expect(replica1.up).toBe(false);
    expect(replica1.lagSeconds).toBeGreaterThan(0);
  });
});

describe('bounded staleness against writes of other clients', () => {
  const BOUNDED: Consistency = { level: 'bounded-staleness', maxStalenessMs: 20 };

  /**
   * Waits until both replicas have replayed everything and `target` knows it: its cached replay
   * positions are at or past its cached primary position.
   */
  async function replicasCaughtUp(target: Cluster): Promise<void> {
    await stack.waitForReplicas();
    await eventually(() =>
      target
        .replicaStatus()
        .every((replica) => replica.health.state === 'healthy' && replica.lagBytes === 0)
        ? true
        : undefined,
    );
  }

  /**
   * One trial of the scenario the bound must survive: replay paused on both replicas, a write by
   * another client, then a read 60 ms later. Whether the read showed the write, and who served it.
   */
  async function trial(
    target: Cluster,
    consistency: Consistency,
  ): Promise<{ stale: boolean; servedBy: string }> {
    await stack.resumeReplay('replica1');
    await stack.resumeReplay('replica2');
    await replicasCaughtUp(target);
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');
    const written = await otherWrite(41);
    await sleep(60);
    const read = await target.read<{ version: number }>(
      'select version from counters where id = 41',
      [],
      { consistency },
    );
    return { stale: read.rows[0]!.version < written, servedBy: read.servedBy };
  }

  it('never serves a read older than its bound from a paused replica', async () => {
    // Sampling every 500 ms: most of the time no sample of the primary falls between the write
    // and the read, so its position is not known to have moved, whoever wrote.
    const sparse = createCluster({
      primary: db.primaryUrl,
      replicas: db.replicaUrls,
      monitorIntervalMs: 500,
    });
    try {
      await sparse.ready();
      const served: Record<string, number> = {};
      let stale = 0;
      for (let i = 0; i < 15; i++) {
        const result = await trial(sparse, BOUNDED);
        if (result.stale) stale++;
        served[result.servedBy] = (served[result.servedBy] ?? 0) + 1;
      }
      expect(served).toEqual({ primary: 15 });
      expect(stale).toBe(0);

      // The control: the same scenario at eventual is served stale by the paused replicas, so
      // the trials above would have seen a stale read had one been served.
      let eventualStale = 0;
      for (let i = 0; i < 3; i++)
        if ((await trial(sparse, { level: 'eventual' })).stale) eventualStale++;
      expect(eventualStale).toBe(3);
    } finally {
      await sparse.close();
    }
  });

  it('still serves tight bounds from replicas that keep up', async () => {
    await replicasCaughtUp(cluster);
    const served: Record<string, number> = {};
    for (let i = 0; i < 20; i++) {
      const written = await otherWrite(41);
      // Past the bound: the read must show the write (one within the bound it may miss).
      await sleep(25);
      const read = await readVersion(41, BOUNDED);
      expect(read.version).toBeGreaterThanOrEqual(written);
      served[read.servedBy] = (served[read.servedBy] ?? 0) + 1;
    }
    expect((served['replica1'] ?? 0) + (served['replica2'] ?? 0)).toBeGreaterThan(0);
  });
});

describe('a position belongs to the server it was read from', () => {
  it('does not prove a read on another server behind the same address', async () => {
    // One replica address, as behind DNS or a load balancer: the monitor's connection reaches
    // replica2; the read pool's connections, opened later, reach replica1, whose replay is paused.
    const proxy = await TcpProxy.start(stack.node('replica2').port);
    const behind = createCluster({ primary: db.primaryUrl, replicas: { r: proxy.url(db.name) } });
    try {
      await behind.ready();
      proxy.retarget(stack.node('replica1').port, { keepOpen: true });
      await stack.pauseReplay('replica1');
      const { rows, token } = await behind.write<{ version: number }>(
        'update counters set version = version + 1 where id = 44 returning version',
      );
      const read = await behind.read<{ version: number }>(
        'select version from counters where id = 44',
        [],
        { token },
      );
      expect(read.rows[0]!.version).toBe(rows[0]!.version);
      expect(read).toMatchObject({ servedBy: 'primary', reason: 'server_changed' });
    } finally {
      await behind.close();
      await proxy.close();
    }
  });

  it('does not prove a read on a replica restarted since its position was sampled', async () => {
    // A monitor that will not look again for a minute: its cached position is from before the
    // restart, and only the read's own connection can tell that the server changed. (A restarted
    // server may come back behind that position, from a backup or an earlier restart point.)
    const restarted = createCluster({
      primary: db.primaryUrl,
      replicas: { r: db.replicaUrls['replica2']! },
      monitorIntervalMs: 60_000,
    });
    const read = () =>
      restarted.read('select 1', [], { consistency: { level: 'read-your-writes' } });
    try {
      await restarted.ready();
      await stack.restartNode('replica2');
      expect(await read()).toMatchObject({ servedBy: 'primary', reason: 'server_changed' });
      // The failed check made the monitor look again: the restarted server's own position then
      // proves reads there.
      const again = await eventually(async () => {
        const result = await read();
        return result.servedBy === 'r' ? result : undefined;
      });
      expect(again.reason).toBe('caught_up');
    } finally {
      await restarted.close();
      // The file's shared cluster saw replica2 go away: let it take it back before other tests.
      await eventually(() =>
        cluster.replicaStatus().every((replica) => replica.health.state === 'healthy')
          ? true
          : undefined,
      );
    }
  });

  it('forgets the old primary position after a failover to a primary that is behind it', async () => {
    // A stack of its own: a failover here would break every other test's stack.
    const dir = await mkdtemp(join(tmpdir(), 'replikit-failover-'));
    const own = await LocalStack.start({ dir, replicas: 1 });
    const proxy = await TcpProxy.start(own.primary.port);
    const failing = createCluster({ primary: proxy.url('postgres'), replicas: {} });
    try {
      await failing.ready();
      // The replica stops; the primary writes on, far past it.
      await own.stopNode('replica1');
      await own.query(
        'primary',
        'create table filler as select g from generate_series(1, 20000) g',
      );
      const old = failing.primaryStatus()!;
      await eventually(async () => {
        await failing.write('select 1');
        return failing.primaryStatus()!.insertLsn !== old.insertLsn ? true : undefined;
      });
      const before = parseLsn(failing.primaryStatus()!.insertLsn)!;

      // Failover: the old primary dies, the replica is promoted and the address points at it.
      await own.killNode('primary');
      await own.startNode('replica1');
      await own.query('replica1', 'select pg_promote(true, 60)');
      proxy.retarget(own.node('replica1').port, { keepOpen: true });
      const after = await eventually(() => {
        const status = failing.primaryStatus();
        return status !== undefined && status.timeline !== old.timeline ? status : undefined;
      });
      const [current] = await own.query<{ lsn: string }>(
        'replica1',
        'select pg_current_wal_insert_lsn()::text as lsn',
      );
      const actual = parseLsn(current!.lsn)!;
      expect(actual).toBeLessThan(before);
      expect(parseLsn(after.insertLsn)!).toBeLessThanOrEqual(actual);

      // A token of the new timeline beyond the new primary's position is refused, not waited on.
      const forged: ConsistencyToken = {
        systemId: after.systemId,
        timeline: after.timeline,
        written: actual + (before - actual) / 2n,
        seen: 0n,
        writtenAt: Date.now(),
      };
      const failure = await failing
        .read('select 1', [], { token: forged, waitTimeoutMs: 100 })
        .catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(RoutingError);
      expect((failure as RoutingError).code).toBe('TOKEN_AHEAD');
    } finally {
      await failing.close();
      await proxy.close();
      await own.purge();
    }
  });
});
