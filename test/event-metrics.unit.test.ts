import { describe, expect, it } from 'vitest';

import { createEventMetrics } from '../src/telemetry/event-metrics.js';
import { createMetricsRegistry, renderMetrics } from '../src/telemetry/metrics.js';

describe('event store metrics', () => {
  it('counts appends by outcome and shows each projection version under its own label', async () => {
    const registry = createMetricsRegistry({ defaultMetrics: false });
    const metrics = createEventMetrics(registry);
    metrics.observer.onAppend!({ outcome: 'appended', events: 1, durationMs: 1 });
    metrics.observer.onAppend!({ outcome: 'conflict', events: 1, durationMs: 1 });
    metrics.observer.onAppend!({ outcome: 'appended', events: 3, durationMs: 1 });
    metrics.observer.onProjectionStatus!({
      projection: 'profiles',
      version: 1,
      status: 'active',
      lagEvents: 12,
      lagSeconds: 0.25,
      lastProcessedAt: new Date(1_700_000_000_000),
    });
    metrics.observer.onProjectionStatus!({
      projection: 'profiles',
      version: 2,
      status: 'building',
      lagEvents: 5000,
      lagSeconds: 30,
      lastProcessedAt: undefined,
    });
    metrics.observer.onHorizon!({ xminAgeSeconds: 4.5 });
    const { body } = await renderMetrics(registry, 'prometheus');
    expect(body).toContain('replikit_eventstore_appends_total{outcome="appended"} 2');
    expect(body).toContain('replikit_eventstore_appends_total{outcome="conflict"} 1');
    expect(body).toContain('replikit_projection_lag_events{projection="profiles"} 12');
    expect(body).toContain('replikit_projection_lag_events{projection="profiles@v2"} 5000');
    expect(body).toContain('replikit_projection_lag_seconds{projection="profiles"} 0.25');
    expect(body).toContain(
      'replikit_projection_last_processed_timestamp_seconds{projection="profiles"} 1700000000',
    );
    expect(body).not.toContain('last_processed_timestamp_seconds{projection="profiles@v2"}');
    expect(body).toContain('replikit_eventstore_xmin_age_seconds 4.5');

    // A retired or stopped runner's series go away.
    metrics.observer.onProjectionGone!('profiles', 2);
    expect((await renderMetrics(registry, 'prometheus')).body).not.toContain('profiles@v2');
  });
});
