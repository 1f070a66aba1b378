import { Counter, Gauge, Histogram } from 'prom-client';

import type { Coordinator, TwoPhaseObserver } from '../twopc/index.js';
import type { MetricsRegistry } from './metrics.js';
import type { MetricsLogger } from './routing-metrics.js';

/** The two-phase commit metrics: an observer to hand to `createCoordinator`, and the coordinator to read gauges from. */
export interface TwoPhaseMetrics {
  readonly observer: TwoPhaseObserver;
  /** Attaches the coordinator whose latest recovery pass the gauges describe. */
  attach(coordinator: Coordinator): void;
}

const PHASE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * Prometheus metrics of two-phase commit (DESIGN.md §6–7): transactions by outcome, time per
 * phase, prepared transactions recovery could not settle, and the age of the oldest prepared
 * transaction per participant database (an orphan holds locks and holds back VACUUM).
 *
 * ```ts
 * const metrics = createTwoPhaseMetrics(registry);
 * const coordinator = createCoordinator({ ...options, observer: metrics.observer });
 * metrics.attach(coordinator);
 * ```
 */
export function createTwoPhaseMetrics(
  registry: MetricsRegistry,
  options: { readonly logger?: MetricsLogger } = {},
): TwoPhaseMetrics {
  let coordinator: Coordinator | undefined;
  const registers = [registry];
  const guarded = (name: string, collect: (c: Coordinator) => void) =>
    function (): void {
      if (coordinator === undefined) return;
      try {
        collect(coordinator);
      } catch (err) {
        options.logger?.warn(
          { metric: name, err: err instanceof Error ? err.message : String(err) },
          'metric collection failed',
        );
      }
    };

  const transactions = new Counter({
    name: 'replikit_2pc_transactions_total',
    help: 'Distributed transactions by outcome (committed, aborted, prepare_timeout, partial_commit)',
    labelNames: ['outcome'] as const,
    registers,
  });
  const phases = new Histogram({
    name: 'replikit_2pc_phase_duration_seconds',
    help: 'Time spent in each phase of a distributed transaction (work, prepare, decide, commit)',
    labelNames: ['phase'] as const,
    buckets: PHASE_BUCKETS,
    registers,
  });
  const inDoubt: Gauge = new Gauge({
    name: 'replikit_2pc_in_doubt_transactions',
    help: 'Prepared transactions the latest recovery pass found but could not settle',
    registers,
    collect: guarded('replikit_2pc_in_doubt_transactions', (c) => {
      inDoubt.set(c.lastRecovery?.unresolved ?? 0);
    }),
  });
  const oldest: Gauge<'database'> = new Gauge({
    name: 'replikit_prepared_xact_oldest_age_seconds',
    help: 'Age of the oldest prepared transaction in each participant database, as of the latest recovery pass',
    labelNames: ['database'],
    registers,
    collect: guarded('replikit_prepared_xact_oldest_age_seconds', (c) => {
      oldest.reset();
      for (const [database, age] of Object.entries(
        c.lastRecovery?.oldestPreparedAgeSeconds ?? {},
      )) {
        oldest.set({ database }, age);
      }
    }),
  });

  return {
    observer: {
      onTransaction(event) {
        transactions.inc({ outcome: event.outcome });
        for (const [phase, ms] of Object.entries(event.phases))
          phases.observe({ phase }, ms / 1000);
      },
    },
    attach(target) {
      coordinator = target;
    },
  };
}
