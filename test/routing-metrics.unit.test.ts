import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createMetricsRegistry, renderMetrics } from '../src/telemetry/metrics.js';
import { createRoutingMetrics } from '../src/telemetry/routing-metrics.js';

const provider = new BasicTracerProvider();
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(() => {
  context.setGlobalContextManager(contextManager.enable());
});

afterAll(async () => {
  context.disable();
  await provider.shutdown();
});

describe('routing metrics', () => {
  it('count reads by consistency, target and reason', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const { observer } = createRoutingMetrics(registry);
    observer.onRead?.({
      consistency: 'read-your-writes',
      target: 'replica',
      node: 'replica1',
      reason: 'waited',
      durationMs: 3,
    });
    observer.onRead?.({
      consistency: 'read-your-writes',
      target: 'replica',
      node: 'replica2',
      reason: 'waited',
      durationMs: 4,
    });
    observer.onRead?.({
      consistency: 'strong',
      target: 'primary',
      node: 'primary',
      reason: 'strong',
      durationMs: 1,
    });
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain(
      'replikit_reads_total{consistency="read-your-writes",target="replica",reason="waited"} 2',
    );
    expect(body).toContain(
      'replikit_reads_total{consistency="strong",target="primary",reason="strong"} 1',
    );
    // No replica name, token or LSN as a label: bounded label values only.
    expect(body).not.toMatch(/replikit_reads_total\{[^}]*replica1/);
  });

  it('attach a trace_id exemplar to a wait observed inside a sampled span', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const { observer } = createRoutingMetrics(registry);
    const span = provider.getTracer('test').startSpan('read');
    context.with(trace.setSpan(context.active(), span), () => {
      observer.onWait?.({
        replica: 'replica1',
        outcome: 'caught_up',
        waitedMs: 7,
        visibilityMs: 9,
      });
    });
    span.end();
    const { body } = await renderMetrics(registry, 'openmetrics');
    const traceId = span.spanContext().traceId;
    expect(body).toMatch(
      new RegExp(
        `replikit_read_wait_seconds_bucket\\{[^}]*replica="replica1"[^}]*outcome="caught_up"[^}]*\\} 1 # \\{trace_id="${traceId}"\\}`,
      ),
    );
    expect(body).toContain('replikit_replica_visibility_seconds_count 1');

    // The control: outside any span there is nothing to link to, and no exemplar is made up.
    const plain = createMetricsRegistry({ defaultMetrics: false });
    createRoutingMetrics(plain).observer.onWait?.({
      replica: undefined,
      outcome: 'timeout',
      waitedMs: 1000,
      visibilityMs: undefined,
    });
    const text = (await renderMetrics(plain, 'openmetrics')).body;
    expect(text).toMatch(/replikit_read_wait_seconds_count\{replica="none",outcome="timeout"\} 1/);
    expect(text).not.toContain('trace_id');
  });

  it('never fail the scrape when the cluster cannot report', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const warnings: string[] = [];
    const metrics = createRoutingMetrics(registry, {
      logger: { warn: (_fields, message) => warnings.push(message) },
    });
    metrics.attach({
      replicaStatus: () => {
        throw new Error('monitor state unavailable');
      },
    } as unknown as Parameters<typeof metrics.attach>[0]);
    metrics.observer.onRead?.({
      consistency: 'eventual',
      target: 'replica',
      node: 'replica1',
      reason: 'any_replica',
      durationMs: 1,
    });
    const { body, failed } = await renderMetrics(registry, 'prometheus');
    expect(failed).toEqual([]);
    expect(body).toContain(
      'replikit_reads_total{consistency="eventual",target="replica",reason="any_replica"} 1',
    );
    expect(warnings.length).toBeGreaterThan(0);
  });
});
