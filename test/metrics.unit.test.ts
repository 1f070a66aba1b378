import { Counter, Gauge, Histogram } from 'prom-client';
import { describe, expect, it } from 'vitest';

import {
  createMetricsRegistry,
  type MetricsRegistry,
  renderMetrics,
} from '../src/telemetry/metrics.js';

function registryWithSamples() {
  const registry = createMetricsRegistry({ defaultMetrics: false });
  new Counter({ name: 'replikit_reads_total', help: 'Reads.', registers: [registry] }).inc(3);
  const histogram = new Histogram({
    name: 'replikit_wait_seconds',
    help: 'Waits.',
    buckets: [0.1, 1],
    enableExemplars: true,
    registers: [registry],
  });
  histogram.observe({
    value: 0.5,
    labels: {},
    exemplarLabels: { trace_id: '4bf92f3577b34da6a3ce929d0e0e4736' },
  });
  return registry;
}

/** The name a registered metric now carries (prom-client's types do not declare it). */
function nameOf(registry: MetricsRegistry, registeredAs: string): unknown {
  return (registry.getSingleMetric(registeredAs) as { name?: unknown } | undefined)?.name;
}

describe('createMetricsRegistry', () => {
  it('collects the default process metrics under their usual names', async () => {
    const registry = createMetricsRegistry();
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(body).toMatch(/^nodejs_heap_size_used_bytes \d/m);
  });

  it('is not the global registry', async () => {
    const { register } = await import('prom-client');
    const registry = createMetricsRegistry();
    expect(registry).not.toBe(register);
  });
});

describe('renderMetrics', () => {
  it('writes the Prometheus text format, without exemplars', async () => {
    const { contentType, body, failed } = await renderMetrics(registryWithSamples(), 'prometheus');
    expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(body).toContain('# TYPE replikit_reads_total counter\nreplikit_reads_total 3');
    expect(body).not.toContain('trace_id');
    expect(body).not.toContain('# EOF');
    expect(failed).toEqual([]);
  });

  it('writes OpenMetrics, with counter families and exemplars', async () => {
    const { contentType, body } = await renderMetrics(registryWithSamples(), 'openmetrics');
    expect(contentType).toBe('application/openmetrics-text; version=1.0.0; charset=utf-8');
    expect(body).toContain('# TYPE replikit_reads counter\nreplikit_reads_total 3');
    expect(body).toMatch(
      /^replikit_wait_seconds_bucket\{le="1"\} 1 # \{trace_id="4bf92f3577b34da6a3ce929d0e0e4736"\} 0\.5 \d/m,
    );
    expect(body.endsWith('# EOF\n')).toBe(true);
  });

  it('leaves the registry as it was: a Prometheus scrape after an OpenMetrics one keeps _total', async () => {
    // Control: prom-client's own OpenMetrics rendering renames the counter in place, and every
    // Prometheus-text scrape after it loses the suffix. That is the corruption being avoided.
    const control = registryWithSamples();
    await control.metrics();
    expect(nameOf(control, 'replikit_reads_total')).toBe('replikit_reads');
    expect((await renderMetrics(control, 'prometheus')).body).not.toContain('replikit_reads_total');

    const registry = registryWithSamples();
    await renderMetrics(registry, 'openmetrics');
    await renderMetrics(registry, 'openmetrics');
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain('\nreplikit_reads_total 3');
    expect(nameOf(registry, 'replikit_reads_total')).toBe('replikit_reads_total');
  });

  it('serves the rest of the scrape when one collector throws, and says which failed', async () => {
    const registry = registryWithSamples();
    new Gauge({
      name: 'replikit_broken',
      help: 'Always fails.',
      registers: [registry],
      collect() {
        throw new Error('boom');
      },
    });
    const errors: [string, unknown][] = [];
    const { body, failed } = await renderMetrics(registry, 'prometheus', {
      onCollectError: (metric, error) => errors.push([metric, error]),
    });
    expect(failed).toEqual(['replikit_broken']);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.[0]).toBe('replikit_broken');
    expect(body).not.toContain('replikit_broken');
    expect(body).toContain('replikit_reads_total 3');
  });
});
