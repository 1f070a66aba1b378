import { context, SpanStatusCode } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { OrderInput } from '../src/app/orders/order-saga.js';
import { createSagaEngine, type SagaDefinition, type SagaEngine } from '../src/saga/index.js';
import {
  createMetricsRegistry,
  renderMetrics,
  type MetricsRegistry,
} from '../src/telemetry/metrics.js';
import { createSagaMetrics } from '../src/telemetry/saga-metrics.js';
import {
  createOrderDatabases,
  orderSagaOn,
  sampleOrder,
  type OrderDatabases,
} from './support/orders.js';

let dbs: OrderDatabases;
let engine: SagaEngine;
let saga: SagaDefinition<OrderInput>;
let registry: MetricsRegistry;
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(async () => {
  context.setGlobalContextManager(contextManager.enable());
  dbs = await createOrderDatabases('sagatel');
  saga = orderSagaOn(dbs.pools);
  registry = createMetricsRegistry({ defaultMetrics: false });
  const metrics = createSagaMetrics(registry);
  engine = createSagaEngine({
    database: dbs.urls.orders,
    sagas: [saga],
    pollIntervalMs: 100,
    observer: metrics.observer,
    tracer: provider.getTracer('test'),
  });
  metrics.attach(engine);
  await engine.start();
});

afterAll(async () => {
  await engine.close();
  await dbs.drop();
  context.disable();
  await provider.shutdown();
});

/** The finished spans of one saga: its root and its children, as `name status` lines in start order. */
function tree(sagaId: string): { root: ReadableSpan; children: ReadableSpan[] } {
  const spans = exporter
    .getFinishedSpans()
    .filter((span) => span.attributes['replikit.saga.id'] === sagaId);
  const root = spans.find((span) => span.name === 'saga order');
  if (root === undefined) throw new Error(`no saga span for ${sagaId}`);
  const children = spans
    .filter((span) => span.parentSpanContext?.spanId === root.spanContext().spanId)
    .sort((a, b) => a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1]);
  return { root, children };
}

const line = (span: ReadableSpan): string =>
  `${span.name} ${span.status.code === SpanStatusCode.ERROR ? 'error' : 'ok'}`;

describe('saga telemetry', () => {
  it('traces saga → step → compensation with statuses, links retried attempts, and counts them', async () => {
    const completed = await engine.run(
      saga,
      sampleOrder({
        faults: [{ step: 'reserve_stock', phase: 'run', action: 'fail', times: 1, ms: 0 }],
      }),
    );
    const compensated = await engine.run(
      saga,
      sampleOrder({ faults: [{ step: 'charge_payment', phase: 'run', action: 'reject', ms: 0 }] }),
    );
    expect((await engine.wait(completed.id, { timeoutMs: 10_000 })).state.status).toBe('completed');
    expect((await engine.wait(compensated.id, { timeoutMs: 10_000 })).state.status).toBe(
      'compensated',
    );

    const ok = tree(completed.id);
    expect(ok.root.attributes['replikit.saga.outcome']).toBe('completed');
    expect(ok.children.map(line)).toEqual([
      'saga.step create_order ok',
      'saga.step reserve_stock error',
      'saga.step reserve_stock ok',
      'saga.step charge_payment ok',
      'saga.step schedule_shipment ok',
    ]);
    // The second attempt links to the first.
    const [first, second] = ok.children.filter((span) => span.name === 'saga.step reserve_stock');
    expect(second?.links.map((link) => link.context.spanId)).toEqual([first?.spanContext().spanId]);
    expect(second?.attributes['replikit.saga.attempt']).toBe(2);

    const undone = tree(compensated.id);
    expect(undone.root.attributes).toMatchObject({
      'replikit.saga.outcome': 'compensated',
      'replikit.saga.failure.reason': 'injected',
      'replikit.saga.failure.step': 'charge_payment',
    });
    expect(undone.children.map(line)).toEqual([
      'saga.step create_order ok',
      'saga.step reserve_stock ok',
      'saga.step charge_payment error',
      'saga.compensate reserve_stock ok',
      'saga.compensate create_order ok',
    ]);

    await engine.refreshStats();
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain('replikit_sagas_total{saga="order",outcome="completed"} 1');
    expect(body).toContain('replikit_sagas_total{saga="order",outcome="compensated"} 1');
    expect(body).toContain('replikit_sagas_started_total{saga="order"} 2');
    expect(body).toMatch(
      /^replikit_saga_step_duration_seconds_count\{saga="order",step="reserve_stock",outcome="failed"\} 1$/m,
    );
    expect(body).toMatch(
      /^replikit_saga_step_duration_seconds_count\{saga="order",step="create_order",outcome="completed"\} 2$/m,
    );
    expect(body).toContain(
      'replikit_saga_compensations_total{saga="order",step="reserve_stock",outcome="completed"} 1',
    );
    expect(body).toContain('replikit_saga_lease_takeovers_total 0');
    // Nothing left in flight: the gauge has no series, and none needs attention.
    expect(body).not.toMatch(/^replikit_sagas_in_flight\{/m);
    expect(body).not.toMatch(/^replikit_sagas_needing_attention\{/m);
  });
});
