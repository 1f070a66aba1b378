import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { createCluster, type Cluster } from '../src/routing/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { createTestDatabase, eventually, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let cluster: Cluster;
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

function lagOf(name: string): number {
  return cluster.replicaStatus().find((replica) => replica.name === name)!.lagSeconds;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Writes every `everyMs` until `ms` have passed. */
async function steadyWrites(ms: number, everyMs = 20): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    await cluster.write('insert into ticks default values');
    await sleep(everyMs);
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

beforeAll(async () => {
  context.setGlobalContextManager(contextManager.enable());
  stack = await testStack();
  db = await createTestDatabase('health');
  await stack.query(
    'primary',
    'create table ticks (id bigserial primary key, at timestamptz default now())',
    [],
    db.name,
  );
  await stack.waitForReplicas();
  cluster = createCluster({
    primary: db.primaryUrl,
    replicas: db.replicaUrls,
    tracer: provider.getTracer('test'),
    breakerHalfOpenAfterMs: 500,
  });
  await cluster.ready();
});

afterEach(async () => {
  await stack.resetFaults();
  exporter.reset();
});

afterAll(async () => {
  await cluster.close();
  await db.drop();
  context.disable();
  await provider.shutdown();
});

describe('replication lag', () => {
  it('stays at 0 while the primary is idle, where now() - pg_last_xact_replay_timestamp() grows', async () => {
    await steadyWrites(300);
    await stack.waitForReplicas();
    const lags: number[] = [];
    for (let i = 0; i < 30; i++) {
      await sleep(100);
      lags.push(lagOf('replica1'), lagOf('replica2'));
    }
    expect(Math.max(...lags)).toBeLessThan(0.5);
    // The control: the naive measure on the same replica has grown with the idle time.
    const [naive] = await stack.query<{ s: number }>(
      'replica1',
      'select extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 as s',
    );
    expect(naive!.s).toBeGreaterThan(2.5);
  });

  it('matches an injected 1 s apply delay within 10% under steady writes', async () => {
    await stack.setApplyDelay('replica1', 1000);
    const samples: number[] = [];
    const writes = steadyWrites(5000);
    await sleep(2500);
    while (samples.length < 20) {
      samples.push(lagOf('replica1'));
      await sleep(100);
    }
    await writes;
    expect(median(samples)).toBeGreaterThanOrEqual(0.9);
    expect(median(samples)).toBeLessThanOrEqual(1.1);
    expect(lagOf('replica2')).toBeLessThan(0.5);
  });

  it('grows and is marked down for a disconnected replica, never 0', async () => {
    await stack.killNode('replica2');
    const first = await eventually(() => {
      const status = cluster.replicaStatus().find((replica) => replica.name === 'replica2')!;
      return status.health.state === 'down' ? status : undefined;
    });
    expect(first.up).toBe(false);
    expect(first.lagSeconds).toBeGreaterThan(0);
    await steadyWrites(500);
    expect(lagOf('replica2')).toBeGreaterThan(first.lagSeconds);

    // Back in rotation once it proves healthy again.
    await stack.startNode('replica2');
    await eventually(() =>
      cluster.replicaStatus().find((replica) => replica.name === 'replica2')!.health.state ===
      'healthy'
        ? true
        : undefined,
    );
  });
});

describe('replica health', () => {
  it('takes a lagging replica out of eventual rotation and back, with hysteresis', async () => {
    const states: string[] = [];
    const strict = createCluster({
      primary: db.primaryUrl,
      replicas: db.replicaUrls,
      maxLagMs: 400,
    });
    const stateOf = (): string =>
      strict.replicaStatus().find((replica) => replica.name === 'replica1')!.health.state;
    try {
      await strict.ready();
      const { token: oldToken } = await strict.write('insert into ticks default values');
      await stack.waitForReplicas();
      await stack.setApplyDelay('replica1', 1000);
      const writes = steadyWrites(3500);
      await eventually(() => (stateOf() === 'lagging' ? true : undefined));
      states.push(stateOf());
      const eventual = new Set<string>();
      const ryw = new Set<string>();
      for (let i = 0; i < 40; i++) {
        eventual.add(
          (await strict.read('select 1', [], { consistency: { level: 'eventual' } })).servedBy,
        );
        // A token the lagging replica has long replayed: it may still serve read-your-writes.
        ryw.add((await strict.read('select 1', [], { token: oldToken })).servedBy);
      }
      await writes;
      expect([...eventual]).toEqual(['replica2']);
      expect(ryw.has('replica1')).toBe(true);

      await stack.clearApplyDelay('replica1');
      await eventually(() => (stateOf() === 'healthy' ? true : undefined));
      const after = new Set<string>();
      for (let i = 0; i < 20; i++)
        after.add(
          (await strict.read('select 1', [], { consistency: { level: 'eventual' } })).servedBy,
        );
      expect(after.has('replica1')).toBe(true);
      expect(states).toEqual(['lagging']);
    } finally {
      await strict.close();
    }
  });

  it('takes a server that is not in recovery (a promoted replica) out of rotation', async () => {
    const promoted = createCluster({
      primary: db.primaryUrl,
      replicas: { replica1: db.replicaUrls['replica1']!, former: db.primaryUrl },
    });
    try {
      await promoted.ready();
      await eventually(() =>
        promoted.replicaStatus().find((replica) => replica.name === 'former')!.health.state ===
        'promoted'
          ? true
          : undefined,
      );
      const served = new Set<string>();
      for (let i = 0; i < 50; i++)
        served.add(
          (await promoted.read('select 1', [], { consistency: { level: 'eventual' } })).servedBy,
        );
      expect([...served]).toEqual(['replica1']);
    } finally {
      await promoted.close();
    }
  });

  it('sends reads to the primary, visibly, when every replica is out', async () => {
    const events: boolean[] = [];
    const lonely = createCluster({
      primary: db.primaryUrl,
      replicas: { only: db.primaryUrl },
      observer: { onAllReplicasOut: (out) => events.push(out) },
    });
    try {
      await lonely.ready();
      await eventually(() => (events.includes(true) ? true : undefined));
      const result = await lonely.read('select 1', [], { consistency: { level: 'eventual' } });
      expect(result).toMatchObject({ servedBy: 'primary', reason: 'no_replica' });
    } finally {
      await lonely.close();
    }
  });
});

describe('tracing', () => {
  function spans(name: string): ReadableSpan[] {
    return exporter.getFinishedSpans().filter((span) => span.name === name);
  }

  it('records a span per routed read, the wait as a child, a fallback as an event', async () => {
    await stack.pauseReplay('replica1');
    await stack.pauseReplay('replica2');
    const { token } = await cluster.write('insert into ticks default values');
    await cluster.read('select count(*) from ticks', [], { token, waitTimeoutMs: 100 });

    const [read] = spans('replikit.read');
    const [wait] = spans('replikit.wait');
    expect(read?.attributes).toMatchObject({
      'replikit.consistency': 'read-your-writes',
      'replikit.route.target': 'primary',
      'replikit.route.reason': 'timeout_fallback',
      'replikit.token.lsn': expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/) as unknown,
    });
    expect(read?.events.map((event) => event.name)).toContain('replikit.fallback');
    expect(read?.status.code).not.toBe(2);
    expect(wait?.parentSpanContext?.spanId).toBe(read?.spanContext().spanId);
    expect(wait?.attributes['replikit.wait.outcome']).toBe('timeout');

    exporter.reset();
    await stack.resumeReplay('replica1');
    await stack.resumeReplay('replica2');
    await eventually(async () => {
      const result = await cluster.read('select 1', [], { token });
      return result.servedBy === 'primary' ? undefined : result;
    });
    const routed = spans('replikit.read').at(-1)!;
    expect(routed.attributes['replikit.route.target']).toBe('replica');
    expect(routed.attributes['replikit.replica.lsn']).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
  });

  it('keeps the read inside the caller trace', async () => {
    const tracer = provider.getTracer('caller');
    await tracer.startActiveSpan('request', async (parent) => {
      await cluster.read('select 1', [], { consistency: { level: 'eventual' } });
      parent.end();
    });
    const [read] = spans('replikit.read');
    const [request] = spans('request');
    expect(read?.spanContext().traceId).toBe(request?.spanContext().traceId);
    expect(trace.getActiveSpan()).toBeUndefined();
  });
});
