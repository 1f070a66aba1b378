import { Counter, Gauge } from 'prom-client';

import type { EventStore, EventStoreObserver, ProjectionStatusSample } from '../events/index.js';
import type { MetricsRegistry } from './metrics.js';
import type { MetricsLogger } from './routing-metrics.js';

/** The event store metrics: an observer to hand to `createEventStore`, and the store to read the xmin age from. */
export interface EventMetrics {
  readonly observer: EventStoreObserver;
  /** Attaches the store whose latest horizon sample `replikit_eventstore_xmin_age_seconds` shows. */
  attach(store: EventStore): void;
}

/** Options for {@link createEventMetrics}. */
export interface EventMetricsOptions {
  readonly logger?: MetricsLogger;
}

/**
 * The `projection` label of a version: its name while it serves, `<name>@v<version>` while a
 * rebuild builds it beside the serving one (two series, never two values fighting over one).
 */
function projectionLabel(
  sample: Pick<ProjectionStatusSample, 'projection' | 'version' | 'status'>,
): string {
  return sample.status === 'building'
    ? `${sample.projection}@v${sample.version}`
    : sample.projection;
}

/**
 * Prometheus metrics of the event store and its projections (docs/events.md, docs/observability.md): appends by
 * outcome; per projection the lag in events and in seconds and the append time of the last
 * event applied; and the age of the oldest transaction holding back the horizon.
 *
 * Collectors only read values the runners and the store sampled already (no query at scrape
 * time), and never throw: prom-client fails the whole scrape when one collect does.
 *
 * ```ts
 * const metrics = createEventMetrics(registry, { logger });
 * const store = createEventStore({ connection, observer: metrics.observer });
 * metrics.attach(store);
 * ```
 */
export function createEventMetrics(
  registry: MetricsRegistry,
  options: EventMetricsOptions = {},
): EventMetrics {
  const registers = [registry];
  let store: EventStore | undefined;
  /** Latest status per runner, by `name\u0000version`. */
  const statuses = new Map<string, ProjectionStatusSample>();
  const guarded = (name: string, collect: () => void) =>
    function (): void {
      try {
        collect();
      } catch (err) {
        options.logger?.warn(
          { metric: name, err: err instanceof Error ? err.message : String(err) },
          'metric collection failed',
        );
      }
    };
  const perProjection =
    (gauge: () => Gauge<'projection'>, value: (s: ProjectionStatusSample) => number | undefined) =>
    (): void => {
      const g = gauge();
      g.reset();
      for (const sample of statuses.values()) {
        const v = value(sample);
        if (v !== undefined && Number.isFinite(v))
          g.set({ projection: projectionLabel(sample) }, v);
      }
    };

  const appends = new Counter({
    name: 'replikit_eventstore_appends_total',
    help: 'Appends by outcome (appended, duplicate, conflict, error)',
    labelNames: ['outcome'] as const,
    registers,
  });
  const lagEvents: Gauge<'projection'> = new Gauge({
    name: 'replikit_projection_lag_events',
    help: 'Committed events a projection has not applied yet (capped by the runner)',
    labelNames: ['projection'],
    registers,
    collect: guarded(
      'replikit_projection_lag_events',
      perProjection(
        () => lagEvents,
        (s) => s.lagEvents,
      ),
    ),
  });
  const lagSeconds: Gauge<'projection'> = new Gauge({
    name: 'replikit_projection_lag_seconds',
    help: 'Age of the oldest committed event a projection has not applied yet; 0 when caught up',
    labelNames: ['projection'],
    registers,
    collect: guarded(
      'replikit_projection_lag_seconds',
      perProjection(
        () => lagSeconds,
        (s) => s.lagSeconds,
      ),
    ),
  });
  const lastProcessed: Gauge<'projection'> = new Gauge({
    name: 'replikit_projection_last_processed_timestamp_seconds',
    help: 'Append time (Unix seconds) of the last event a projection applied',
    labelNames: ['projection'],
    registers,
    collect: guarded(
      'replikit_projection_last_processed_timestamp_seconds',
      perProjection(
        () => lastProcessed,
        (s) => (s.lastProcessedAt === undefined ? undefined : s.lastProcessedAt.getTime() / 1000),
      ),
    ),
  });
  const xminAge: Gauge = new Gauge({
    name: 'replikit_eventstore_xmin_age_seconds',
    help: 'Age of the oldest transaction holding back the event horizon (projections see nothing appended after it began)',
    registers,
    collect: guarded('replikit_eventstore_xmin_age_seconds', () => {
      const sample = store?.lastHorizon;
      if (sample !== undefined) xminAge.set(sample.xminAgeSeconds);
    }),
  });

  return {
    observer: {
      onAppend(event) {
        appends.inc({ outcome: event.outcome });
      },
      onProjectionStatus(sample) {
        statuses.set(`${sample.projection}\u0000${sample.version}`, sample);
      },
      onProjectionGone(projection, version) {
        statuses.delete(`${projection}\u0000${version}`);
      },
      onHorizon(sample) {
        xminAge.set(sample.xminAgeSeconds);
      },
    },
    attach(target) {
      store = target;
    },
  };
}
