import { Counter, Gauge, Histogram } from 'prom-client';

import type { SagaEngine, SagaObserver, SagaStats } from '../saga/index.js';
import type { MetricsRegistry } from './metrics.js';
import type { MetricsLogger } from './routing-metrics.js';

/** The saga metrics: an observer to hand to `createSagaEngine`, and the engine to read gauges from. */
export interface SagaMetrics {
  readonly observer: SagaObserver;
  /** Attaches an engine whose unfinished-saga counts the gauges show (several may be attached, each with its own saga log). */
  attach(engine: SagaEngine): void;
}

const STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * Prometheus metrics of sagas (docs/sagas.md, docs/observability.md): sagas by outcome, step latency, compensations,
 * lease takeovers, and gauges of sagas in flight and needing attention, counted in the saga log
 * (so every process reports the same numbers; aggregate them with `max`, not `sum`).
 *
 * ```ts
 * const metrics = createSagaMetrics(registry);
 * const engine = createSagaEngine({ ...options, observer: metrics.observer });
 * metrics.attach(engine);
 * ```
 */
export function createSagaMetrics(
  registry: MetricsRegistry,
  options: { readonly logger?: MetricsLogger } = {},
): SagaMetrics {
  const engines = new Set<SagaEngine>();
  const registers = [registry];
  /** Every attached engine's counts; a throwing read is logged, never fails the scrape. */
  const guarded = (
    name: string,
    collect: (counts: SagaStats['counts'], stuck: SagaStats['stuck']) => void,
  ) =>
    function (): void {
      try {
        const counts = [...engines].flatMap((e) => e.stats?.counts ?? []);
        const stuck: Record<string, number> = {};
        for (const e of engines) {
          for (const [saga, n] of Object.entries(e.stats?.stuck ?? {}))
            stuck[saga] = (stuck[saga] ?? 0) + n;
        }
        collect(counts, stuck);
      } catch (err) {
        options.logger?.warn(
          { metric: name, err: err instanceof Error ? err.message : String(err) },
          'metric collection failed',
        );
      }
    };

  const sagas = new Counter({
    name: 'replikit_sagas_total',
    help: 'Sagas that finished (completed, compensated) or stopped for a person (needs_attention)',
    labelNames: ['saga', 'outcome'] as const,
    registers,
  });
  const started = new Counter({
    name: 'replikit_sagas_started_total',
    help: 'Sagas started',
    labelNames: ['saga'] as const,
    registers,
  });
  const steps = new Histogram({
    name: 'replikit_saga_step_duration_seconds',
    help: 'Duration of each attempt of a saga step, by outcome (completed, rejected, failed, parked)',
    labelNames: ['saga', 'step', 'outcome'] as const,
    buckets: STEP_BUCKETS,
    registers,
  });
  const compensations = new Counter({
    name: 'replikit_saga_compensations_total',
    help: 'Attempts of compensations, by outcome (completed, failed, parked)',
    labelNames: ['saga', 'step', 'outcome'] as const,
    registers,
  });
  const takeovers = new Counter({
    name: 'replikit_saga_lease_takeovers_total',
    help: 'Sagas this process took over after their owner stopped renewing its lease',
    registers,
  });
  const fenced = new Counter({
    name: 'replikit_saga_fenced_total',
    help: 'Sagas this process stopped working on because another process took their lease',
    registers,
  });
  const inFlight: Gauge<'saga'> = new Gauge({
    name: 'replikit_sagas_in_flight',
    help: 'Sagas running or compensating, in the saga log',
    labelNames: ['saga'],
    registers,
    collect: guarded('replikit_sagas_in_flight', (counts) => {
      inFlight.reset();
      for (const count of counts) {
        if (count.status === 'running' || count.status === 'compensating')
          inFlight.inc({ saga: count.saga }, count.count);
      }
    }),
  });
  const attention: Gauge<'saga'> = new Gauge({
    name: 'replikit_sagas_needing_attention',
    help: 'Sagas whose compensation (or a step after the pivot) kept failing and that wait for a person',
    labelNames: ['saga'],
    registers,
    collect: guarded('replikit_sagas_needing_attention', (counts) => {
      attention.reset();
      for (const count of counts) {
        if (count.status === 'needs_attention') attention.inc({ saga: count.saga }, count.count);
      }
    }),
  });
  const stuck: Gauge<'saga'> = new Gauge({
    name: 'replikit_sagas_stuck',
    help: 'Running or compensating sagas that have not moved for the stuck-saga threshold',
    labelNames: ['saga'],
    registers,
    collect: guarded('replikit_sagas_stuck', (_, stuckBySaga) => {
      stuck.reset();
      for (const [saga, n] of Object.entries(stuckBySaga)) stuck.set({ saga }, n);
    }),
  });

  return {
    observer: {
      onSagaStarted: (event) => started.inc({ saga: event.saga }),
      onSagaFinished: (event) => sagas.inc({ saga: event.saga, outcome: event.outcome }),
      onStep(event) {
        if (event.phase === 'run') {
          steps.observe(
            { saga: event.saga, step: event.step, outcome: event.outcome },
            event.durationMs / 1000,
          );
        } else {
          compensations.inc({ saga: event.saga, step: event.step, outcome: event.outcome });
        }
      },
      onTakeover: () => takeovers.inc(),
      onFenced: () => fenced.inc(),
    },
    attach(target) {
      engines.add(target);
    },
  };
}
