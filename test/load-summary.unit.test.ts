import { describe, expect, it } from 'vitest';

import { MetricSet } from '../load/node/metrics.js';
import {
  COLLECT,
  DELAYS_MS,
  LEVELS,
  METRICS,
  buildSummary,
  cellOf,
  isStale,
  isUnexpected,
  levelTable,
  orderFor,
  outcomeOf,
  sagaThresholds,
  stalenessTable,
  stalenessThresholds,
  summaryText,
  type SummaryData,
} from '../load/shared/scenarios.js';

describe('the staleness scenario', () => {
  it('visits every (level, t) cell once per round, so cells fill evenly', () => {
    const cells = LEVELS.length * DELAYS_MS.length;
    const seen = new Set<string>();
    for (let i = 0; i < cells; i++) {
      const { level, t } = cellOf(i);
      seen.add(`${level}/${t}`);
    }
    expect(seen.size).toBe(cells);
    expect(cellOf(cells)).toEqual(cellOf(0));
    expect(cellOf(2, [0, 7])).toEqual({ level: 'monotonic', t: 0 });
    expect(cellOf(LEVELS.length, [0, 7])).toEqual({ level: 'strong', t: 7 });
  });

  it('calls a read stale when it misses the user or shows an older version', () => {
    expect(isStale(1, { status: 404 })).toBe(true);
    expect(isStale(3, { status: 200, version: 2 })).toBe(true);
    expect(isStale(3, { status: 200, version: 3 })).toBe(false);
    expect(isStale(3, { status: 200, version: 4 })).toBe(false);
    expect(isStale(3, { status: 200 })).toBe(true);
  });

  it('has one real threshold (no read-your-writes violations) and a collector per cell', () => {
    const thresholds = stalenessThresholds();
    expect(thresholds[METRICS.rywViolations]).toEqual(['count==0']);
    expect(thresholds['stale_reads{level:eventual,t:0}']).toEqual([COLLECT.rate]);
    expect(thresholds['stale_reads{level:bounded-staleness,t:100}']).toEqual([COLLECT.rate]);
    const cells = Object.keys(thresholds).filter((key) => key.startsWith('stale_reads{'));
    expect(cells).toHaveLength(LEVELS.length * DELAYS_MS.length);
  });
});

/** Samples of a small run: eventual misses half its reads at t=0, nothing else misses. */
function stalenessRun(violation: boolean): MetricSet {
  const metrics = new MetricSet();
  const stale = metrics.rate(METRICS.staleReads);
  const visibility = metrics.trend(METRICS.visibility);
  const violations = metrics.counter(METRICS.rywViolations);
  const replica = metrics.rate(METRICS.replicaReads);
  for (const level of LEVELS) {
    for (const t of [0, 5]) {
      for (let i = 0; i < 4; i++) {
        const missed =
          (level === 'eventual' && t === 0 && i < 2) ||
          (violation && level === 'read-your-writes' && t === 0 && i === 0);
        stale.add(missed, { level, t });
        replica.add(level !== 'strong', { level });
        visibility.add(missed ? 3 : t + 1, { level });
        if (missed && level === 'read-your-writes') violations.add(1, { level });
      }
    }
  }
  return metrics;
}

describe('the summary', () => {
  it('aggregates stale reads per level and t, and passes with no read-your-writes violation', () => {
    const data = stalenessRun(false).summaryData(stalenessThresholds([0, 5]), 2000);
    const summary = buildSummary(data, {
      scenario: 'staleness',
      runner: 'node',
      target: 'http://127.0.0.1:3000',
      delaysMs: [0, 5],
    });
    expect(summary.ok).toBe(true);
    expect(summary.durationMs).toBe(2000);
    // Collectors are not thresholds worth reporting.
    expect(summary.thresholds).toEqual([
      { metric: 'ryw_violations', expression: 'count==0', ok: true },
    ]);
    expect(summary.staleness?.cells).toContainEqual({
      level: 'eventual',
      t: 0,
      reads: 4,
      stale: 2,
      rate: 0.5,
    });
    expect(summary.staleness?.cells).toContainEqual({
      level: 'eventual',
      t: 5,
      reads: 4,
      stale: 0,
      rate: 0,
    });
    expect(summary.staleness?.cells).toHaveLength(LEVELS.length * 2);
    const strong = summary.staleness?.levels.find((level) => level.level === 'strong');
    expect(strong).toMatchObject({ reads: 8, stale: 0, replicaShare: 0 });
    const eventual = summary.staleness?.levels.find((level) => level.level === 'eventual');
    expect(eventual).toMatchObject({ reads: 8, stale: 2, replicaShare: 1 });
    expect(eventual?.visibilityMs?.['max']).toBe(6);
    expect(summary.staleness?.rywViolations).toBe(0);
    // Submetrics stay out of the flat metric list; the scenario's own metrics are in it.
    expect(Object.keys(summary.metrics).sort()).toEqual(
      ['replica_reads', 'ryw_violations', 'stale_reads', 'visibility_ms'].sort(),
    );
  });

  it('fails the threshold on a read-your-writes violation', () => {
    const data = stalenessRun(true).summaryData(stalenessThresholds([0, 5]), 2000);
    const summary = buildSummary(data, {
      scenario: 'staleness',
      runner: 'node',
      target: 'x',
      delaysMs: [0, 5],
    });
    expect(summary.ok).toBe(false);
    expect(summary.staleness?.rywViolations).toBe(1);
    expect(summary.staleness?.cells).toContainEqual({
      level: 'read-your-writes',
      t: 0,
      reads: 4,
      stale: 1,
      rate: 0.25,
    });
  });

  it('reads k6 handleSummary data the same way as the Node runner’s', () => {
    // As k6 hands it over: metrics by name, submetrics named by their thresholds.
    const k6: SummaryData = {
      state: { testRunDurationMs: 1500 },
      metrics: {
        stale_reads: {
          type: 'rate',
          contains: 'default',
          values: { rate: 0.25, passes: 1, fails: 3 },
        },
        'stale_reads{level:eventual,t:0}': {
          type: 'rate',
          contains: 'default',
          values: { rate: 0.5, passes: 1, fails: 1 },
          thresholds: { 'rate>=0': { ok: true } },
        },
        'stale_reads{level:strong,t:0}': {
          type: 'rate',
          contains: 'default',
          values: { rate: 0, passes: 0, fails: 2 },
          thresholds: { 'rate>=0': { ok: true } },
        },
        ryw_violations: {
          type: 'counter',
          contains: 'default',
          values: { count: 0, rate: 0 },
          thresholds: { 'count==0': { ok: true } },
        },
        http_req_duration: { type: 'trend', contains: 'time', values: { avg: 1 } },
      },
    };
    const node = new MetricSet();
    const stale = node.rate(METRICS.staleReads);
    stale.add(true, { level: 'eventual', t: 0 });
    stale.add(false, { level: 'eventual', t: 0 });
    stale.add(false, { level: 'strong', t: 0 });
    stale.add(false, { level: 'strong', t: 0 });
    node.counter(METRICS.rywViolations);
    const thresholds = {
      ryw_violations: ['count==0'],
      'stale_reads{level:eventual,t:0}': [COLLECT.rate],
      'stale_reads{level:strong,t:0}': [COLLECT.rate],
    };
    const meta = { scenario: 'staleness', target: 'http://127.0.0.1:3000', delaysMs: [0] } as const;
    const fromK6 = buildSummary(k6, { ...meta, runner: 'k6' });
    const fromNode = buildSummary(node.summaryData(thresholds, 1500), { ...meta, runner: 'node' });
    expect({ ...fromNode, runner: 'k6' }).toEqual(fromK6);
    expect(stalenessTable(fromK6)).toContain('| `eventual` | 50.0 % | 2 |');
  });

  it('renders the per-level × t table and the level table as markdown', () => {
    const summary = buildSummary(
      stalenessRun(false).summaryData(stalenessThresholds([0, 5]), 1000),
      {
        scenario: 'staleness',
        runner: 'node',
        target: 'x',
        delaysMs: [0, 5],
      },
    );
    const table = stalenessTable(summary).split('\n');
    expect(table[0]).toBe('| level | t = 0 ms | t = 5 ms | reads |');
    expect(table).toContain('| `eventual` | 50.0 % | 0.0 % | 8 |');
    expect(table).toContain('| `read-your-writes` | 0.0 % | 0.0 % | 8 |');
    expect(levelTable(summary)).toContain('| `strong` | 8 | 0 | 0.0 % |');
    expect(summaryText(summary)).toContain('all thresholds passed');
  });
});

describe('the sagas scenario', () => {
  it('builds about the asked share of orders to fail, half by stock and half by payment', () => {
    expect(orderFor(0, 0.05, 0.2).intent).toBe('insufficient_stock');
    expect(orderFor(0, 0.15, 0.2).intent).toBe('payment_declined');
    expect(orderFor(0, 0.2, 0.2).intent).toBe('succeed');
    expect(orderFor(0, 0.5, 0).intent).toBe('succeed');
    const stock = orderFor(3, 0, 0.2).body;
    expect(stock.items.reduce((sum, item) => sum + item.qty, 0)).toBeGreaterThan(1000);
    expect(orderFor(3, 0.15, 0.2).body.amount).toBeGreaterThan(10_000);
    expect(orderFor(25, 0.9).body).toEqual({
      customerId: 'c6',
      items: [{ sku: 'sku-6', qty: 1 }],
      amount: 10,
    });
  });

  it('classifies answers and flags outcomes that contradict the intent', () => {
    expect(outcomeOf(201, 'confirmed')).toBe('confirmed');
    expect(outcomeOf(201, 'rejected')).toBe('rejected');
    expect(outcomeOf(202, 'pending')).toBe('pending');
    expect(outcomeOf(503, undefined)).toBe('failed');
    expect(outcomeOf(0, undefined)).toBe('failed');
    expect(isUnexpected('succeed', 'rejected')).toBe(true);
    expect(isUnexpected('payment_declined', 'confirmed')).toBe(true);
    expect(isUnexpected('insufficient_stock', 'rejected')).toBe(false);
    expect(isUnexpected('succeed', 'pending')).toBe(false);
  });

  it('summarises outcome rates and latency per outcome', () => {
    const metrics = new MetricSet();
    const names = {
      confirmed: metrics.rate(METRICS.ordersConfirmed),
      rejected: metrics.rate(METRICS.ordersRejected),
      pending: metrics.rate(METRICS.ordersPending),
      failed: metrics.rate(METRICS.ordersFailed),
    };
    const latency = metrics.trend(METRICS.orderLatency);
    metrics.counter(METRICS.ordersUnexpected);
    const outcomes = ['confirmed', 'confirmed', 'confirmed', 'rejected', 'pending'] as const;
    outcomes.forEach((outcome, i) => {
      for (const [name, rate] of Object.entries(names)) rate.add(name === outcome);
      latency.add(10 * (i + 1), { outcome });
    });
    const summary = buildSummary(metrics.summaryData(sagaThresholds(), 1000), {
      scenario: 'sagas',
      runner: 'node',
      target: 'x',
    });
    expect(summary.ok).toBe(true);
    expect(summary.orders?.total).toBe(5);
    expect(summary.orders?.outcomes.find((o) => o.outcome === 'confirmed')).toMatchObject({
      count: 3,
      rate: 0.6,
      latencyMs: { med: 20, max: 30 },
    });
    expect(summary.orders?.outcomes.find((o) => o.outcome === 'failed')).toMatchObject({
      count: 0,
      latencyMs: null,
    });
    expect(summary.thresholds.map((t) => `${t.metric} ${t.expression}`)).toEqual([
      'orders_failed rate<0.01',
      'orders_unexpected count==0',
    ]);
  });
});
