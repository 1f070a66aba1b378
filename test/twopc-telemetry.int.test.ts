import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createMetricsRegistry,
  renderMetrics,
  type MetricsRegistry,
} from '../src/telemetry/metrics.js';
import { createTwoPhaseMetrics } from '../src/telemetry/twopc-metrics.js';
import { createCoordinator, type Coordinator } from '../src/twopc/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { LEDGER_SCHEMA, OPEN_ACCOUNTS, transfer } from './support/ledger.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let dbs: TestDatabase[];
let coordinator: Coordinator;
let registry: MetricsRegistry;
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(async () => {
  context.setGlobalContextManager(contextManager.enable());
  stack = await testStack();
  dbs = await Promise.all(
    ['tel_coordinator', 'tel_ledger_a', 'tel_ledger_b'].map((name) => createTestDatabase(name)),
  );
  for (const ledger of dbs.slice(1)) {
    for (const sql of [LEDGER_SCHEMA, OPEN_ACCOUNTS])
      await stack.query('primary', sql, [], ledger.name);
  }
  registry = createMetricsRegistry({ defaultMetrics: false });
  const metrics = createTwoPhaseMetrics(registry);
  coordinator = createCoordinator({
    name: 'telemetry',
    coordinator: dbs[0]!.primaryUrl,
    participants: { ledger_a: dbs[1]!.primaryUrl, ledger_b: dbs[2]!.primaryUrl },
    recoveryIntervalMs: 0,
    observer: metrics.observer,
    tracer: provider.getTracer('test'),
  });
  metrics.attach(coordinator);
  await coordinator.start();
});

afterAll(async () => {
  await coordinator.close();
  await Promise.all(dbs.map((db) => db.drop()));
  context.disable();
  await provider.shutdown();
});

describe('two-phase commit telemetry', () => {
  it('traces a transaction with a child per participant and phase, and counts outcomes', async () => {
    await coordinator.run((tx) =>
      transfer(tx, { from: 'ledger_a', fromAccount: 'acct1', toAccount: 'acct1', amount: 1 }),
    );
    const root = exporter.getFinishedSpans().find((span) => span.name === 'replikit.2pc')!;
    expect(root.attributes).toMatchObject({
      'replikit.2pc.outcome': 'committed',
      'replikit.2pc.attempts': 1,
    });
    const children = exporter
      .getFinishedSpans()
      .filter((span) => span.parentSpanContext?.spanId === root.spanContext().spanId)
      .map((span) => `${span.name} ${String(span.attributes['replikit.2pc.participant'])}`)
      .sort();
    expect(children).toEqual([
      'replikit.2pc.commit ledger_a',
      'replikit.2pc.commit ledger_b',
      'replikit.2pc.prepare ledger_a',
      'replikit.2pc.prepare ledger_b',
    ]);

    exporter.reset();
    await coordinator
      .run((tx) =>
        transfer(tx, {
          from: 'ledger_a',
          fromAccount: 'acct2',
          toAccount: 'acct2',
          amount: 1_000_000,
        }),
      )
      .catch(() => undefined);
    const failed = exporter.getFinishedSpans().find((span) => span.name === 'replikit.2pc')!;
    expect(failed.status.code).toBe(2);
    expect(failed.attributes['replikit.2pc.outcome']).toBe('aborted');

    await coordinator.recover();
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain('replikit_2pc_transactions_total{outcome="committed"} 1');
    expect(body).toContain('replikit_2pc_transactions_total{outcome="aborted"} 1');
    expect(body).toMatch(/^replikit_2pc_phase_duration_seconds_count\{phase="prepare"\} 1$/m);
    expect(body).toMatch(/^replikit_2pc_phase_duration_seconds_count\{phase="work"\} 2$/m);
    expect(body).toContain('replikit_2pc_in_doubt_transactions 0');
    expect(body).toMatch(/^replikit_prepared_xact_oldest_age_seconds\{database="ledger_a"\} \d/m);
  });
});
