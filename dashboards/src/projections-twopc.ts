import { DashboardBuilder, RowBuilder } from '@grafana/grafana-foundation-sdk/dashboard';

import { quantile, rate, stat, timeseries } from './panels.js';

/**
 * Projections & 2PC: the event store's appends and how far each projection is behind; the
 * outcomes and phase times of distributed transactions, and the prepared transactions left over.
 */
export function projectionsTwoPhaseDashboard(): DashboardBuilder {
  return new DashboardBuilder('replikit / Projections & 2PC')
    .uid('replikit-projections-2pc')
    .description(
      'Event appends and projection lag; two-phase commit outcomes, phases, in-doubt and prepared transactions',
    )
    .tags(['replikit', 'events', '2pc'])
    .refresh('10s')
    .time({ from: 'now-30m', to: 'now' })
    .timezone('browser')
    .withRow(new RowBuilder('Event store and projections'))
    .withPanel(
      timeseries({
        title: 'Appends',
        description:
          'Appends to the event store per second, by outcome (appended, duplicate, conflict, error).',
        queries: [
          {
            expr: `sum by (outcome) (${rate('replikit_eventstore_appends_total')})`,
            legend: '{{outcome}}',
          },
        ],
        unit: 'ops',
        stacked: true,
      }),
    )
    .withPanel(
      stat({
        title: 'Last event applied',
        description:
          'Append time of the last event each projection applied (a projection being rebuilt shows as name@vN). On an idle store this stays put without anything being wrong: read it with the lag panels.',
        queries: [
          {
            expr: 'max by (projection) (replikit_projection_last_processed_timestamp_seconds) * 1000',
            legend: '{{projection}}',
          },
        ],
        unit: 'dateTimeFromNow',
        width: 12,
        height: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Projection lag (events)',
        description: 'Committed events each projection has not applied yet (capped by the runner).',
        queries: [
          {
            expr: 'max by (projection) (replikit_projection_lag_events)',
            legend: '{{projection}}',
          },
        ],
        unit: 'short',
        width: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Projection lag (seconds)',
        description:
          'Age of the oldest committed event each projection has not applied yet; 0 when caught up.',
        queries: [
          {
            expr: 'max by (projection) (replikit_projection_lag_seconds)',
            legend: '{{projection}}',
          },
        ],
        unit: 's',
        width: 8,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Event horizon held back',
        description:
          'Age of the oldest transaction holding back the event horizon: projections see nothing appended after it began.',
        queries: [{ expr: 'max(replikit_eventstore_xmin_age_seconds)', legend: 'xmin age' }],
        unit: 's',
        width: 8,
      }),
    )
    .withRow(new RowBuilder('Two-phase commit'))
    .withPanel(
      stat({
        title: 'In-doubt transactions',
        description:
          'Prepared transactions the latest recovery pass found and could not settle: they hold locks until someone decides them.',
        queries: [{ expr: 'max(replikit_2pc_in_doubt_transactions)', legend: 'in doubt' }],
        unit: 'none',
        red: 1,
      }),
    )
    .withPanel(
      stat({
        title: 'Oldest prepared transaction',
        description:
          'Age of the oldest prepared transaction per participant database, as of the latest recovery pass. An orphan holds locks and holds back VACUUM.',
        queries: [
          {
            expr: 'max by (database) (replikit_prepared_xact_oldest_age_seconds)',
            legend: '{{database}}',
          },
        ],
        unit: 's',
        red: 300,
        amber: 60,
        width: 18,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Transactions by outcome',
        description:
          'Distributed transactions per second by outcome (committed, aborted, prepare_timeout, partial_commit: committed on some participants only, needs a person).',
        queries: [
          {
            expr: `sum by (outcome) (${rate('replikit_2pc_transactions_total')})`,
            legend: '{{outcome}}',
          },
        ],
        unit: 'ops',
        stacked: true,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Phase latency',
        description:
          'Time spent in each phase of a distributed transaction (work, prepare, decide, commit): p50 and p99.',
        queries: [
          {
            expr: quantile(0.5, 'replikit_2pc_phase_duration_seconds', ['phase']),
            legend: '{{phase}} p50',
          },
          {
            expr: quantile(0.99, 'replikit_2pc_phase_duration_seconds', ['phase']),
            legend: '{{phase}} p99',
          },
        ],
        unit: 's',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Prepared transaction age',
        description:
          'Age of the oldest prepared transaction per participant database over time; the alert fires past 5 minutes.',
        queries: [
          {
            expr: 'max by (database) (replikit_prepared_xact_oldest_age_seconds)',
            legend: '{{database}}',
          },
        ],
        unit: 's',
        redLine: 300,
        width: 24,
      }),
    );
}
