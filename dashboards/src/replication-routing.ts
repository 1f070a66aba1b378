import { DashboardBuilder, RowBuilder } from '@grafana/grafana-foundation-sdk/dashboard';

import {
  anyOf,
  FALLBACK_REASONS,
  heatmap,
  quantile,
  rate,
  stat,
  timeseries,
  WAIT_BUDGET_SECONDS,
} from './panels.js';

/**
 * Replication & routing: how far each replica is behind, where reads went and why, how long
 * read-your-writes reads waited (exemplars open the trace of a slow one), and fallbacks.
 */
export function replicationRoutingDashboard(): DashboardBuilder {
  const fallbacks = `{reason=~"${anyOf(FALLBACK_REASONS)}"}`;
  return new DashboardBuilder('replikit / Replication & routing')
    .uid('replikit-routing')
    .description(
      'Replica lag, routed reads by target and reason, read-your-writes waits, fallbacks',
    )
    .tags(['replikit', 'routing'])
    .refresh('10s')
    .time({ from: 'now-30m', to: 'now' })
    .timezone('browser')
    .withRow(new RowBuilder('Replicas'))
    .withPanel(
      stat({
        title: 'Replica up',
        description:
          'Whether each replica answered its latest health sample (replikit_replica_up). A replica that is down serves no reads; the primary takes them.',
        queries: [{ expr: 'max by (replica) (replikit_replica_up)', legend: '{{replica}}' }],
        unit: 'none',
        width: 8,
        mappings: { '1': { text: 'up', color: 'green' }, '0': { text: 'down', color: 'red' } },
      }),
    )
    .withPanel(
      stat({
        title: 'Replicas in rotation',
        description:
          'Replicas healthy or lagging, so able to serve routed reads. 0 means every read goes to the primary.',
        queries: [{ expr: 'min(replikit_replicas_in_rotation)', legend: 'in rotation' }],
        unit: 'none',
        width: 8,
        green: 1,
        mappings: { '0': { text: 'none: all reads on the primary', color: 'red' } },
      }),
    )
    .withPanel(
      timeseries({
        title: 'Replica health state',
        description:
          'The health state each node is in (healthy, lagging, down, promoted, foreign, diverged, starting; primary for the writable one of candidate nodes); one line per node and state while it holds.',
        queries: [
          {
            expr: 'max by (replica, state) (replikit_replica_health) == 1',
            legend: '{{replica}} {{state}}',
          },
        ],
        unit: 'none',
        width: 8,
        height: 4,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Replica lag (seconds)',
        description: `Age of the oldest WAL each replica has not replayed: 0 when caught up, growing while cut off. The red line is the read-your-writes wait budget (REPLIKIT_READ_WAIT_TIMEOUT_MS, ${WAIT_BUDGET_SECONDS} s by default): above it, reads that need this replica wait out the budget and fall back to the primary.`,
        queries: [
          { expr: 'max by (replica) (replikit_replica_lag_seconds)', legend: '{{replica}}' },
        ],
        unit: 's',
        redLine: WAIT_BUDGET_SECONDS,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Replica lag (bytes)',
        description: 'WAL bytes the primary has written beyond each replica’s replay position.',
        queries: [{ expr: 'max by (replica) (replikit_replica_lag_bytes)', legend: '{{replica}}' }],
        unit: 'bytes',
      }),
    )
    .withRow(new RowBuilder('Reads'))
    .withPanel(
      timeseries({
        title: 'Share of reads served by replicas',
        description:
          'Routed reads that a replica served, of all routed reads, overall and per consistency level (strong reads always go to the primary).',
        queries: [
          {
            expr: `sum(${rate('replikit_reads_total{target="replica"}')}) / sum(${rate('replikit_reads_total')})`,
            legend: 'all reads',
          },
          {
            expr: `sum by (consistency) (${rate('replikit_reads_total{target="replica"}')}) / sum by (consistency) (${rate('replikit_reads_total')})`,
            legend: '{{consistency}}',
          },
        ],
        unit: 'percentunit',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Reads by reason',
        description:
          'Routed reads per second by routing reason: caught_up and waited went to a replica for read-your-writes, any_replica and within_bound for eventual and bounded staleness; the rest went to the primary.',
        queries: [
          {
            expr: `sum by (reason) (${rate('replikit_reads_total')})`,
            legend: '{{reason}}',
          },
        ],
        unit: 'reqps',
        stacked: true,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Fallbacks to the primary',
        description: `Reads a replica could have served that went to the primary (${FALLBACK_REASONS.join(', ')}), per second.`,
        queries: [
          {
            expr: `sum by (reason) (${rate(`replikit_reads_total${fallbacks}`)})`,
            legend: '{{reason}}',
          },
        ],
        unit: 'reqps',
        stacked: true,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Read duration p99',
        description:
          'Routed read time at the 99th percentile by consistency level and target, routing and any wait included.',
        queries: [
          {
            expr: quantile(0.99, 'replikit_read_duration_seconds', ['consistency', 'target']),
            legend: '{{consistency}} on {{target}}',
          },
        ],
        unit: 's',
      }),
    )
    .withRow(new RowBuilder('Read-your-writes waits'))
    .withPanel(
      heatmap({
        title: 'Wait time',
        description:
          'How long reads waited for a replica to replay their consistency token. The dots are exemplars: click one to open that read’s trace in Jaeger.',
        queries: [
          {
            expr: `sum by (le) (${rate('replikit_read_wait_seconds_bucket')})`,
            legend: '{{le}}',
            exemplars: true,
          },
        ],
        unit: 's',
      }),
    )
    .withPanel(
      timeseries({
        title: 'Waits by outcome',
        description:
          'Waits per second that ended with a replica caught up, or timed out (the read then fell back to the primary, or failed under REPLIKIT_READ_WAIT_FALLBACK=error).',
        queries: [
          {
            expr: `sum by (outcome) (${rate('replikit_read_wait_seconds_count')})`,
            legend: '{{outcome}}',
          },
        ],
        unit: 'reqps',
        stacked: true,
      }),
    )
    .withPanel(
      timeseries({
        title: 'Commit to visible on a replica',
        description:
          'Time from a write’s commit to its visibility on a replica, as seen by the reads that waited for it (p50 and p99).',
        queries: [
          { expr: quantile(0.5, 'replikit_replica_visibility_seconds'), legend: 'p50' },
          { expr: quantile(0.99, 'replikit_replica_visibility_seconds'), legend: 'p99' },
        ],
        unit: 's',
        redLine: WAIT_BUDGET_SECONDS,
      }),
    )
    .withPanel(
      timeseries({
        title: 'HTTP request duration p99',
        description: 'Requests served by the service at the 99th percentile, by route template.',
        queries: [
          {
            expr: quantile(0.99, 'replikit_http_server_request_duration_seconds', ['route']),
            legend: '{{route}}',
          },
        ],
        unit: 's',
      }),
    );
}
