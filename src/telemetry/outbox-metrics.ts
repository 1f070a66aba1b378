import { Counter, Gauge } from 'prom-client';

import type { ConsumerObserver, RelayObserver, RelayStats } from '../messaging/index.js';
import type { MetricsRegistry } from './metrics.js';
import type { MetricsLogger } from './routing-metrics.js';

/** What the gauges read: a relay, or anything else that can report an outbox backlog. */
export interface OutboxStatsSource {
  readonly name: string;
  stats(): RelayStats;
}

/**
 * The messaging metrics: observers to hand to `createRelay` and `createConsumer`, and the relays
 * whose backlog the gauges describe.
 */
export interface OutboxMetrics {
  readonly relayObserver: RelayObserver;
  readonly consumerObserver: ConsumerObserver;
  /** Attaches a relay; its outbox name is the gauges' `outbox` label. */
  attach(relay: OutboxStatsSource): void;
}

/**
 * Prometheus metrics of choreography messaging (docs/observability.md): the outbox backlog per outbox
 * (pending messages and the age of the oldest), messages published and publish failures, and per
 * consumer group the messages handled, the duplicates the inbox dropped, the retries and the
 * dead letters. Labels are outbox and group names, which the code fixes: never a message id or key.
 *
 * ```ts
 * const metrics = createOutboxMetrics(registry, { logger });
 * const relay = createRelay({ ...options, observer: metrics.relayObserver });
 * metrics.attach(relay);
 * const consumer = createConsumer({ ...options, observer: metrics.consumerObserver });
 * ```
 *
 * The gauges read {@link Relay.stats}, a cached sample the relay refreshes after publishing, so a
 * scrape costs no query; a failing read is logged and skipped, since one throwing `collect`
 * fails the whole scrape in prom-client.
 */
export function createOutboxMetrics(
  registry: MetricsRegistry,
  options: { readonly logger?: MetricsLogger } = {},
): OutboxMetrics {
  const relays = new Map<string, OutboxStatsSource>();
  const registers = [registry];
  const guarded = (name: string, collect: (stats: RelayStats) => void) =>
    function (): void {
      for (const relay of relays.values()) {
        try {
          collect(relay.stats());
        } catch (err) {
          options.logger?.warn(
            { metric: name, err: err instanceof Error ? err.message : String(err) },
            'metric collection failed',
          );
        }
      }
    };

  const pending: Gauge<'outbox'> = new Gauge({
    name: 'replikit_outbox_pending_messages',
    help: 'Messages written to the outbox and not yet published, as of the relay’s latest sample',
    labelNames: ['outbox'],
    registers,
    collect: guarded('replikit_outbox_pending_messages', (stats) => {
      pending.set({ outbox: stats.outbox }, stats.pending);
    }),
  });
  const oldest: Gauge<'outbox'> = new Gauge({
    name: 'replikit_outbox_oldest_pending_age_seconds',
    help: 'Age of the oldest message not yet published from the outbox; 0 when none is pending',
    labelNames: ['outbox'],
    registers,
    collect: guarded('replikit_outbox_oldest_pending_age_seconds', (stats) => {
      oldest.set({ outbox: stats.outbox }, stats.oldestPendingAgeSeconds);
    }),
  });
  const published = new Counter({
    name: 'replikit_outbox_published_total',
    help: 'Messages the relay published and removed from the outbox',
    labelNames: ['outbox'] as const,
    registers,
  });
  const publishFailures = new Counter({
    name: 'replikit_outbox_publish_failures_total',
    help: 'Relay batches the transport did not accept (their messages stay in the outbox)',
    labelNames: ['outbox'] as const,
    registers,
  });
  const handled = new Counter({
    name: 'replikit_inbox_handled_total',
    help: 'Messages a consumer group handled and committed',
    labelNames: ['group'] as const,
    registers,
  });
  const duplicates = new Counter({
    name: 'replikit_inbox_duplicates_total',
    help: 'Deliveries the inbox recognised as already handled, skipped without effect',
    labelNames: ['group'] as const,
    registers,
  });
  const retries = new Counter({
    name: 'replikit_inbox_retries_total',
    help: 'Handler failures that will be delivered again after a backoff',
    labelNames: ['group'] as const,
    registers,
  });
  const deadLetters = new Counter({
    name: 'replikit_inbox_dead_letters_total',
    help: 'Messages parked in the dead-letter state after their last attempt; each needs attention',
    labelNames: ['group'] as const,
    registers,
  });

  return {
    relayObserver: {
      onPublished: (event) => published.inc({ outbox: event.outbox }, event.count),
      onPublishFailed: (event) => publishFailures.inc({ outbox: event.outbox }),
    },
    consumerObserver: {
      onHandled: (event) => handled.inc({ group: event.group }),
      onDuplicate: (event) => duplicates.inc({ group: event.group }),
      onRetry: (event) => retries.inc({ group: event.group }),
      onDeadLetter: (event) => deadLetters.inc({ group: event.group }),
    },
    attach(relay) {
      relays.set(relay.name, relay);
    },
  };
}
