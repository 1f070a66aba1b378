import { isSpanContextValid, trace } from '@opentelemetry/api';
import { Counter, Gauge, Histogram } from 'prom-client';

import type { Cluster, ReplicaStatus, RoutingObserver } from '../routing/index.js';
import type { MetricsRegistry } from './metrics.js';

/** Where a failure to collect a metric is reported; the scrape itself goes on. */
export interface MetricsLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

/** Options for {@link createRoutingMetrics}. */
export interface RoutingMetricsOptions {
  readonly logger?: MetricsLogger;
}

/** The routing metrics: an observer to hand to `createCluster`, and the cluster to read gauges from. */
export interface RoutingMetrics {
  readonly observer: RoutingObserver;
  /** Attaches the cluster whose replicas the lag, up and rotation gauges describe. */
  attach(cluster: Cluster): void;
}

const WAIT_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
const READ_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** `{ trace_id }` of the active, valid span, for an exemplar that links a panel to the trace. */
function traceExemplar(): Record<string, string> | undefined {
  const context = trace.getActiveSpan()?.spanContext();
  return context !== undefined && isSpanContextValid(context)
    ? { trace_id: context.traceId }
    : undefined;
}

/**
 * Prometheus metrics of read routing (docs/observability.md): lag per replica in seconds and bytes,
 * replica up and rotation, reads by consistency, target and reason, waits with trace exemplars,
 * and commit-to-visible times seen by waits.
 *
 * ```ts
 * const metrics = createRoutingMetrics(registry);
 * const cluster = createCluster({ ...options, observer: metrics.observer });
 * metrics.attach(cluster);
 * ```
 *
 * The gauges read the monitors' cached samples when scraped: cheap, and guarded so a failing
 * collector never fails the scrape.
 */
export function createRoutingMetrics(
  registry: MetricsRegistry,
  options: RoutingMetricsOptions = {},
): RoutingMetrics {
  let cluster: Cluster | undefined;
  const registers = [registry];

  const guarded = (name: string, collect: (c: Cluster) => void) =>
    function (this: unknown): void {
      if (cluster === undefined) return;
      try {
        collect(cluster);
      } catch (err) {
        options.logger?.warn(
          { metric: name, err: err instanceof Error ? err.message : String(err) },
          'metric collection failed',
        );
      }
    };

  /** A gauge with one value per replica, read from the cluster's cached status when scraped. */
  const perReplica = (
    name: string,
    help: string,
    valueOf: (replica: ReplicaStatus) => number,
  ): void => {
    const gauge: Gauge<'replica'> = new Gauge({
      name,
      help,
      labelNames: ['replica'],
      registers,
      collect: guarded(name, (c) => {
        gauge.reset();
        for (const replica of c.replicaStatus())
          gauge.set({ replica: replica.name }, valueOf(replica));
      }),
    });
  };
  perReplica(
    'replikit_replica_lag_seconds',
    'Age of the oldest WAL the replica has not replayed: 0 when caught up, growing while it is cut off',
    (replica) => (Number.isFinite(replica.lagSeconds) ? replica.lagSeconds : Number.MAX_VALUE),
  );
  perReplica(
    'replikit_replica_lag_bytes',
    'WAL bytes the primary has written beyond the replica replay position',
    (replica) => replica.lagBytes,
  );
  perReplica(
    'replikit_replica_up',
    '1 when the replica answered its latest sample, 0 otherwise',
    (replica) => (replica.up ? 1 : 0),
  );
  const health: Gauge<'replica' | 'state'> = new Gauge({
    name: 'replikit_replica_health',
    help: '1 for the health state each replica is in (healthy, lagging, down, promoted, foreign, diverged, starting; primary for the writable one of candidate nodes)',
    labelNames: ['replica', 'state'],
    registers,
    collect: guarded('replikit_replica_health', (c) => {
      health.reset();
      for (const replica of c.replicaStatus())
        health.set({ replica: replica.name, state: replica.health.state }, 1);
    }),
  });
  const inRotation: Gauge = new Gauge({
    name: 'replikit_replicas_in_rotation',
    help: 'Replicas that can serve routed reads; 0 means every read goes to the primary',
    registers,
    collect: guarded('replikit_replicas_in_rotation', (c) => {
      inRotation.set(
        c
          .replicaStatus()
          .filter(
            (replica) => replica.health.state === 'healthy' || replica.health.state === 'lagging',
          ).length,
      );
    }),
  });

  const reads = new Counter({
    name: 'replikit_reads_total',
    help: 'Routed reads by consistency level, target (primary or replica) and routing reason',
    labelNames: ['consistency', 'target', 'reason'] as const,
    registers,
  });
  const readDuration = new Histogram({
    name: 'replikit_read_duration_seconds',
    help: 'Routed read time, routing and any wait included',
    labelNames: ['consistency', 'target'] as const,
    buckets: READ_BUCKETS,
    registers,
  });
  const waits = new Histogram({
    name: 'replikit_read_wait_seconds',
    help: 'Time reads waited for a replica to replay their token; replica="none" after a timeout',
    labelNames: ['replica', 'outcome'] as const,
    buckets: WAIT_BUCKETS,
    enableExemplars: true,
    registers,
  });
  const visibility = new Histogram({
    name: 'replikit_replica_visibility_seconds',
    help: "Time from a write's commit to its visibility on a replica, observed by reads that waited for it",
    buckets: WAIT_BUCKETS,
    registers,
  });

  const observer: RoutingObserver = {
    onRead(event) {
      reads.inc({ consistency: event.consistency, target: event.target, reason: event.reason });
      readDuration.observe(
        { consistency: event.consistency, target: event.target },
        event.durationMs / 1000,
      );
    },
    onWait(event) {
      const exemplarLabels = traceExemplar();
      waits.observe({
        labels: { replica: event.replica ?? 'none', outcome: event.outcome },
        value: event.waitedMs / 1000,
        ...(exemplarLabels === undefined ? {} : { exemplarLabels }),
      });
      if (event.visibilityMs !== undefined) visibility.observe(event.visibilityMs / 1000);
    },
  };

  return {
    observer,
    attach(target) {
      cluster = target;
    },
  };
}
