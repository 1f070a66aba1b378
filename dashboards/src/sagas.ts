import { DashboardBuilder, RowBuilder } from '@grafana/grafana-foundation-sdk/dashboard';

import { quantile, rate, stat, timeseries } from './panels.js';

/**
 * Sagas: how many start and how they end, step latency, compensations, the sagas that wait for a
 * person, and the outbox and inbox of the choreographed flow.
 *
 * The saga gauges count rows of the saga log, so every process reports the same numbers: they are
 * aggregated with `max`, never `sum`.
 */
export function sagasDashboard(): DashboardBuilder {
  return new DashboardBuilder('replikit / Sagas')
    .uid('replikit-sagas')
    .description(
      'Saga outcomes, step latency, compensations, sagas needing attention, outbox backlog',
    )
    .tags(['replikit', 'sagas'])
    .refresh('10s')
    .time({ from: 'now-30m', to: 'now' })
    .timezone('browser')
    .withRow(new RowBuilder('Sagas'))
    .withPanel(
      stat({
        title: 'Sagas needing attention',
        description:
          'Sagas whose compensation (or a step after the pivot) kept failing: each waits for a person (GET /sagas?status=needs_attention, then POST /sagas/:id/retry).',
        queries: [
          {
            expr: 'sum(max by (saga) (replikit_sagas_needing_attention)) or vector(0)',
            legend: 'needing attention',
          },
        ],
        unit: 'none',
        red: 1,
      }),
    )
    .withPanel(
      stat({
        title: 'Stuck sagas',
        description:
          'Running or compensating sagas that have not moved for the stuck-saga threshold.',
        queries: [
          { expr: 'sum(max by (saga) (replikit_sagas_stuck)) or vector(0)', legend: 'stuck' },
        ],
        unit: 'none',
        red: 1,
      }),
    )
    .withPanel(
      stat({
        title: 'Sagas in flight',
        description: 'Sagas running or compensating, in the saga log.',
        queries: [
          {
            expr: 'sum(max by (saga) (replikit_sagas_in_flight)) or vector(0)',
            legend: 'in flight',
          },
        ],
        unit: 'none',
      }),
    )
    .withPanel(
      stat({
        title: 'Lease takeovers and fencing (1 h)',
        description:
          'Sagas taken over after their owner stopped renewing its lease, and sagas a process stopped because another took the lease, over the last hour.',
        queries: [
          {
            expr: 'sum(increase(replikit_saga_lease_takeovers_total[1h]))',
            legend: 'takeovers',
          },
          { expr: 'sum(increase(replikit_saga_fenced_total[1h]))', legend: 'fenced' },
        ],
        unit: 'none',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Sagas started and finished',
        description:
          'Sagas started, and finished by outcome (completed, compensated, needs_attention), per second.',
        queries: [
          {
            expr: `sum by (saga) (${rate('replikit_sagas_started_total')})`,
            legend: '{{saga}} started',
          },
          {
            expr: `sum by (saga, outcome) (${rate('replikit_sagas_total')})`,
            legend: '{{saga}} {{outcome}}',
          },
        ],
        unit: 'ops',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Sagas in flight and needing attention',
        description: 'Per saga: running or compensating, and waiting for a person.',
        queries: [
          {
            expr: 'max by (saga) (replikit_sagas_in_flight)',
            legend: '{{saga}} in flight',
          },
          {
            expr: 'max by (saga) (replikit_sagas_needing_attention)',
            legend: '{{saga}} needing attention',
          },
        ],
        unit: 'none',
      }),
    )
    .withRow(new RowBuilder('Steps'))
    .withPanel(
      timeseries({
        title: 'Step latency',
        description:
          'Duration of step attempts that completed, by saga and step: p50, p95 and p99.',
        queries: [0.5, 0.95, 0.99].map((q) => ({
          expr: quantile(
            q,
            'replikit_saga_step_duration_seconds',
            ['saga', 'step'],
            '{outcome="completed"}',
          ),
          legend: `{{saga}} {{step}} p${Math.round(q * 100)}`,
        })),
        unit: 's',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Step attempts by outcome',
        description:
          'Step attempts per second by outcome: completed, rejected (a business refusal, which compensates), failed (retried), parked.',
        queries: [
          {
            expr: `sum by (saga, step, outcome) (${rate('replikit_saga_step_duration_seconds_count')})`,
            legend: '{{saga}} {{step}} {{outcome}}',
          },
        ],
        unit: 'ops',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Compensations',
        description:
          'Attempts of compensations per second, by step and outcome (completed, failed, parked).',
        queries: [
          {
            expr: `sum by (saga, step, outcome) (${rate('replikit_saga_compensations_total')})`,
            legend: '{{saga}} {{step}} {{outcome}}',
          },
        ],
        unit: 'ops',
        width: 24,
      }),
    )
    .withRow(new RowBuilder('Outbox and inbox'))
    .withPanel(
      timeseries({
        title: 'Outbox backlog',
        description: 'Messages written to each outbox and not yet published.',
        queries: [
          {
            expr: 'max by (outbox) (replikit_outbox_pending_messages)',
            legend: '{{outbox}}',
          },
        ],
        unit: 'short',
        width: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Oldest unpublished message',
        description:
          'Age of the oldest message not yet published from each outbox; 0 when none is pending.',
        queries: [
          {
            expr: 'max by (outbox) (replikit_outbox_oldest_pending_age_seconds)',
            legend: '{{outbox}}',
          },
        ],
        unit: 's',
        width: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Published and publish failures',
        description:
          'Messages the relays published per second, and relay batches the transport refused.',
        queries: [
          {
            expr: `sum by (outbox) (${rate('replikit_outbox_published_total')})`,
            legend: '{{outbox}} published',
          },
          {
            expr: `sum by (outbox) (${rate('replikit_outbox_publish_failures_total')})`,
            legend: '{{outbox}} failed batches',
          },
        ],
        unit: 'ops',
        width: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Inbox',
        description:
          'Per consumer group, per second: messages handled, duplicates the inbox dropped, retries, and dead letters (each needs attention).',
        queries: [
          ['handled', 'replikit_inbox_handled_total'],
          ['duplicates', 'replikit_inbox_duplicates_total'],
          ['retries', 'replikit_inbox_retries_total'],
          ['dead letters', 'replikit_inbox_dead_letters_total'],
        ].map(([what, metric]) => ({
          expr: `sum by (group) (${rate(metric!)})`,
          legend: `{{group}} ${what!}`,
        })),
        unit: 'ops',
        width: 24,
      }),
    );
}
