/**
 * What the k6 scripts (`load/k6/`) and their Node twins (`load/node/`) share: the scenarios'
 * parameters, metric names and thresholds, and the JSON summary both write.
 *
 * Pure and import-free on purpose: k6 loads it as `../shared/scenarios.ts` (its loader wants the
 * real file name), Node and the tests as `../shared/scenarios.js`; a relative import in here
 * could satisfy only one of the two.
 *
 * @packageDocumentation
 */

// ---------------------------------------------------------------------------------------------
// The staleness scenario

/** The consistency levels the staleness scenario reads at, as the `level` tag spells them. */
export const LEVELS = [
  'strong',
  'read-your-writes',
  'monotonic',
  'bounded-staleness',
  'eventual',
] as const;
export type Level = (typeof LEVELS)[number];

/** Delays (ms) between a write's response and the read that looks for it: the `t` tag. */
export const DELAYS_MS = [0, 1, 2, 5, 10, 20, 50, 100] as const;

/** The bound of `bounded-staleness` unless told otherwise. */
export const DEFAULT_BOUND_MS = 100;

/** How long a stale read's follow-up polls look for the write before giving up. */
export const VISIBILITY_TIMEOUT_MS = 2000;

/** The levels that must see the write: a stale read at one of them counts in `ryw_violations`. */
export const MUST_SEE_WRITE: readonly Level[] = ['strong', 'read-your-writes', 'monotonic'];

/** Metric names, the same in k6 and in Node. */
export const METRICS = {
  /** Rate, tags `level` and `t`: the read did not see the write it followed. */
  staleReads: 'stale_reads',
  /** Trend (ms), tag `level`: at t = 0, from the write's response to the answer of the first read that saw it. */
  visibility: 'visibility_ms',
  /** Counter, tag `level`: a read at a level that promises to see the write, which did not. */
  rywViolations: 'ryw_violations',
  /** Rate, tag `level`: the read was answered by a replica (`X-Served-By` other than `primary`). */
  replicaReads: 'replica_reads',
  /** Counter: a write never became visible within {@link VISIBILITY_TIMEOUT_MS}. */
  visibilityTimeouts: 'visibility_timeouts',
  /** Rate, tag `outcome`: the order was confirmed (201 `confirmed`). */
  ordersConfirmed: 'orders_confirmed',
  /** Rate: the order was rejected (201 `rejected`, a business failure). */
  ordersRejected: 'orders_rejected',
  /** Rate: the saga had not finished within the service's wait (202). */
  ordersPending: 'orders_pending',
  /** Rate: anything else (a 4xx/5xx, a network error). */
  ordersFailed: 'orders_failed',
  /** Trend (ms), tag `outcome`: time to the answer of `POST /orders`. */
  orderLatency: 'order_latency_ms',
  /** Counter: an order meant to fail that was confirmed, or a plain one that was rejected. */
  ordersUnexpected: 'orders_unexpected',
} as const;

/** `X-Consistency` for a level. */
export function consistencyHeader(level: Level, boundMs = DEFAULT_BOUND_MS): string {
  return level === 'bounded-staleness' ? `bounded-staleness=${boundMs}` : level;
}

/** Whether a read at `level` sends the session's token. */
export function sendsToken(level: Level): boolean {
  return level === 'read-your-writes' || level === 'monotonic';
}

/** The (level, t) cell of the `iteration`-th iteration: every cell in turn, so all fill evenly. */
export function cellOf(
  iteration: number,
  delays: readonly number[] = DELAYS_MS,
): { level: Level; t: number } {
  const cells = LEVELS.length * delays.length;
  const index = ((iteration % cells) + cells) % cells;
  return {
    level: LEVELS[index % LEVELS.length]!,
    t: delays[Math.floor(index / LEVELS.length)]!,
  };
}

/**
 * Whether a read missed the write: the user was not found (a create not yet replayed) or its
 * version is older than the one the write answered with.
 */
export function isStale(
  writtenVersion: number,
  read: { status: number; version?: number },
): boolean {
  if (read.status === 404) return true;
  return read.version === undefined || read.version < writtenVersion;
}

/** A threshold that always passes: it only makes k6 keep the submetric for the summary. */
export const COLLECT = {
  rate: 'rate>=0',
  trend: 'max>=0',
  counter: 'count>=0',
} as const;

const COLLECTORS: ReadonlySet<string> = new Set(Object.values(COLLECT));

/** A submetric's name as k6 spells it: `name{tag:value,...}`. */
export function submetric(name: string, tags: Readonly<Record<string, string | number>>): string {
  const pairs = Object.entries(tags).map(([key, value]) => `${key}:${value}`);
  return pairs.length === 0 ? name : `${name}{${pairs.join(',')}}`;
}

/** Thresholds of the staleness scenario: the real one, and collectors for every cell. */
export function stalenessThresholds(
  delays: readonly number[] = DELAYS_MS,
): Record<string, string[]> {
  const thresholds: Record<string, string[]> = {
    // Read-your-writes (and the levels stronger than it) must never miss the write.
    [METRICS.rywViolations]: ['count==0'],
  };
  for (const level of LEVELS) {
    for (const t of delays) {
      thresholds[submetric(METRICS.staleReads, { level, t })] = [COLLECT.rate];
    }
    thresholds[submetric(METRICS.visibility, { level })] = [COLLECT.trend];
    thresholds[submetric(METRICS.replicaReads, { level })] = [COLLECT.rate];
  }
  return thresholds;
}

// ---------------------------------------------------------------------------------------------
// The sagas scenario

/** Parameters of the sagas scenario unless told otherwise. */
export const SAGA_DEFAULTS = {
  /** Orders per second. */
  rate: 10,
  /** Share of orders built to be refused (half too much stock, half too dear). */
  failureShare: 0.2,
  /** Most orders in flight at once (k6's `maxVUs`). */
  maxInFlight: 50,
} as const;

/** What the service answered to `POST /orders`, as the `outcome` tag spells it. */
export type OrderOutcome = 'confirmed' | 'rejected' | 'pending' | 'failed';
export const OUTCOMES: readonly OrderOutcome[] = ['confirmed', 'rejected', 'pending', 'failed'];

/** What an order is built to do. */
export type OrderIntent = 'succeed' | 'insufficient_stock' | 'payment_declined';

/** The body of the `n`-th order; `draw` in [0, 1) decides whether it is built to fail. */
export function orderFor(
  n: number,
  draw: number,
  failureShare: number = SAGA_DEFAULTS.failureShare,
): {
  intent: OrderIntent;
  body: { customerId: string; items: { sku: string; qty: number }[]; amount: number };
} {
  const customerId = `c${1 + (n % 20)}`;
  const sku = `sku-${1 + (n % 10)}`;
  if (draw < failureShare / 2) {
    // 2000 units of one product: the stock holds 1000.
    return {
      intent: 'insufficient_stock',
      body: {
        customerId,
        items: [
          { sku, qty: 1000 },
          { sku, qty: 1000 },
        ],
        amount: 10,
      },
    };
  }
  if (draw < failureShare) {
    // A wallet holds 10,000.
    return {
      intent: 'payment_declined',
      body: { customerId, items: [{ sku, qty: 1 }], amount: 20_000 },
    };
  }
  return { intent: 'succeed', body: { customerId, items: [{ sku, qty: 1 }], amount: 10 } };
}

/** The outcome of a `POST /orders` answer. */
export function outcomeOf(status: number, orderStatus: unknown): OrderOutcome {
  if (status === 202) return 'pending';
  if (status === 201 && orderStatus === 'confirmed') return 'confirmed';
  if (status === 201 && orderStatus === 'rejected') return 'rejected';
  return 'failed';
}

/** Whether an outcome contradicts what the order was built to do (pending and failed never do). */
export function isUnexpected(intent: OrderIntent, outcome: OrderOutcome): boolean {
  return (
    (intent === 'succeed' && outcome === 'rejected') ||
    (intent !== 'succeed' && outcome === 'confirmed')
  );
}

/** Thresholds of the sagas scenario, and collectors for the latency of each outcome. */
export function sagaThresholds(): Record<string, string[]> {
  const thresholds: Record<string, string[]> = {
    [METRICS.ordersFailed]: ['rate<0.01'],
    [METRICS.ordersUnexpected]: ['count==0'],
  };
  for (const outcome of OUTCOMES) {
    thresholds[submetric(METRICS.orderLatency, { outcome })] = [COLLECT.trend];
  }
  return thresholds;
}

// ---------------------------------------------------------------------------------------------
// The summary

/** Statistics of trends in the summary (k6's `summaryTrendStats`). */
export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];

/** One metric as k6 hands it to `handleSummary` (the part used here). */
export interface SummaryMetric {
  readonly type: 'counter' | 'gauge' | 'rate' | 'trend';
  readonly contains?: string;
  readonly values: Readonly<Record<string, number>>;
  readonly thresholds?: Readonly<Record<string, { readonly ok: boolean }>>;
}

/** What k6 hands to `handleSummary` (the part used here); the Node runner builds the same. */
export interface SummaryData {
  readonly metrics: Readonly<Record<string, SummaryMetric>>;
  readonly state?: { readonly testRunDurationMs?: number };
}

export interface StalenessCell {
  readonly level: Level;
  readonly t: number;
  readonly reads: number;
  readonly stale: number;
  /** `stale / reads`; null with no reads. */
  readonly rate: number | null;
}

export interface LevelSummary {
  readonly level: Level;
  readonly reads: number;
  readonly stale: number;
  /** Share of the level's reads answered by a replica; null with no reads. */
  readonly replicaShare: number | null;
  /** `visibility_ms` of the level: med, p(95), p(99), max; null with no samples. */
  readonly visibilityMs: Readonly<Record<string, number>> | null;
}

export interface OutcomeSummary {
  readonly outcome: OrderOutcome;
  readonly count: number;
  /** Share of all orders; null with no orders. */
  readonly rate: number | null;
  /** `order_latency_ms` of the outcome; null with no samples. */
  readonly latencyMs: Readonly<Record<string, number>> | null;
}

/** The JSON summary of a run, the same from k6's `handleSummary` and from the Node runner. */
export interface LoadSummary {
  readonly format: 'replikit-load/1';
  readonly scenario: 'staleness' | 'sagas';
  readonly runner: 'k6' | 'node';
  readonly target: string;
  readonly durationMs: number | null;
  /** Every real threshold passed (collectors left out). */
  readonly ok: boolean;
  readonly thresholds: readonly { metric: string; expression: string; ok: boolean }[];
  /** The scenario's own metrics and a few built-ins, without submetrics. */
  readonly metrics: Readonly<Record<string, { type: string; values: Record<string, number> }>>;
  readonly staleness?: {
    readonly delaysMs: readonly number[];
    readonly cells: readonly StalenessCell[];
    readonly levels: readonly LevelSummary[];
    readonly rywViolations: number;
  };
  readonly orders?: {
    readonly total: number;
    readonly outcomes: readonly OutcomeSummary[];
    readonly unexpected: number;
    readonly latencyMs: Readonly<Record<string, number>> | null;
  };
}

const BUILT_INS = ['iterations', 'dropped_iterations', 'http_reqs', 'http_req_failed'];

function rateCounts(metric: SummaryMetric | undefined): { passes: number; total: number } {
  const passes = metric?.values['passes'] ?? 0;
  const fails = metric?.values['fails'] ?? 0;
  return { passes, total: passes + fails };
}

function pick(
  metric: SummaryMetric | undefined,
  stats: readonly string[],
): Record<string, number> | null {
  if (metric === undefined || (metric.values['count'] ?? 1) === 0) return null;
  const picked: Record<string, number> = {};
  for (const stat of stats) {
    const value = metric.values[stat];
    if (value !== undefined) picked[stat] = value;
  }
  return picked;
}

/** Builds the {@link LoadSummary} from k6's (or the Node runner's) summary data. */
export function buildSummary(
  data: SummaryData,
  meta: {
    scenario: LoadSummary['scenario'];
    runner: LoadSummary['runner'];
    target: string;
    delaysMs?: readonly number[];
  },
): LoadSummary {
  const thresholds: { metric: string; expression: string; ok: boolean }[] = [];
  const metrics: Record<string, { type: string; values: Record<string, number> }> = {};
  const own: ReadonlySet<string> = new Set([...Object.values(METRICS), ...BUILT_INS]);
  for (const [name, metric] of Object.entries(data.metrics)) {
    for (const [expression, result] of Object.entries(metric.thresholds ?? {})) {
      if (!COLLECTORS.has(expression)) thresholds.push({ metric: name, expression, ok: result.ok });
    }
    if (own.has(name)) metrics[name] = { type: metric.type, values: { ...metric.values } };
  }
  thresholds.sort((a, b) => a.metric.localeCompare(b.metric));
  const summary = {
    format: 'replikit-load/1' as const,
    scenario: meta.scenario,
    runner: meta.runner,
    target: meta.target,
    durationMs: data.state?.testRunDurationMs ?? null,
    ok: thresholds.every((threshold) => threshold.ok),
    thresholds,
    metrics,
  };
  const get = (name: string, tags: Record<string, string | number>) =>
    data.metrics[submetric(name, tags)];

  if (meta.scenario === 'staleness') {
    const delaysMs = meta.delaysMs ?? DELAYS_MS;
    const cells: StalenessCell[] = [];
    for (const level of LEVELS) {
      for (const t of delaysMs) {
        const { passes, total } = rateCounts(get(METRICS.staleReads, { level, t }));
        cells.push({
          level,
          t,
          reads: total,
          stale: passes,
          rate: total === 0 ? null : passes / total,
        });
      }
    }
    const levels = LEVELS.map((level): LevelSummary => {
      const mine = cells.filter((cell) => cell.level === level);
      const replica = rateCounts(get(METRICS.replicaReads, { level }));
      return {
        level,
        reads: mine.reduce((sum, cell) => sum + cell.reads, 0),
        stale: mine.reduce((sum, cell) => sum + cell.stale, 0),
        replicaShare: replica.total === 0 ? null : replica.passes / replica.total,
        visibilityMs: pick(get(METRICS.visibility, { level }), ['med', 'p(95)', 'p(99)', 'max']),
      };
    });
    return {
      ...summary,
      staleness: {
        delaysMs,
        cells,
        levels,
        rywViolations: data.metrics[METRICS.rywViolations]?.values['count'] ?? 0,
      },
    };
  }

  const counts = OUTCOMES.map((outcome) => {
    const name = {
      confirmed: METRICS.ordersConfirmed,
      rejected: METRICS.ordersRejected,
      pending: METRICS.ordersPending,
      failed: METRICS.ordersFailed,
    }[outcome];
    return { outcome, ...rateCounts(data.metrics[name]) };
  });
  const total = Math.max(0, ...counts.map((count) => count.total));
  return {
    ...summary,
    orders: {
      total,
      outcomes: counts.map(({ outcome, passes }) => ({
        outcome,
        count: passes,
        rate: total === 0 ? null : passes / total,
        latencyMs: pick(get(METRICS.orderLatency, { outcome }), ['med', 'p(95)', 'p(99)', 'max']),
      })),
      unexpected: data.metrics[METRICS.ordersUnexpected]?.values['count'] ?? 0,
      latencyMs: pick(data.metrics[METRICS.orderLatency], ['med', 'p(95)', 'p(99)', 'max']),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Text

function percent(rate: number | null): string {
  return rate === null ? '–' : `${(100 * rate).toFixed(1)} %`;
}

function millis(value: number | undefined): string {
  if (value === undefined || Number.isNaN(value)) return '–';
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Stale-read probability per level (rows) and t (columns), as a markdown table. */
export function stalenessTable(summary: LoadSummary): string {
  const staleness = summary.staleness;
  if (staleness === undefined) return '';
  const header = ['level', ...staleness.delaysMs.map((t) => `t = ${t} ms`), 'reads'];
  const rows = LEVELS.map((level) => {
    const cells = staleness.cells.filter((cell) => cell.level === level);
    const reads = cells.reduce((sum, cell) => sum + cell.reads, 0);
    return [`\`${level}\``, ...cells.map((cell) => percent(cell.rate)), String(reads)];
  });
  return markdownTable(header, rows);
}

/** Per level: reads, stale, replica share and visibility percentiles, as a markdown table. */
export function levelTable(summary: LoadSummary): string {
  const staleness = summary.staleness;
  if (staleness === undefined) return '';
  return markdownTable(
    ['level', 'reads', 'stale', 'served by a replica', 'visible after (ms) p50 / p95 / p99 / max'],
    staleness.levels.map((level) => [
      `\`${level.level}\``,
      String(level.reads),
      String(level.stale),
      percent(level.replicaShare),
      level.visibilityMs === null
        ? '–'
        : ['med', 'p(95)', 'p(99)', 'max']
            .map((stat) => millis(level.visibilityMs?.[stat]))
            .join(' / '),
    ]),
  );
}

/** Outcomes of the sagas scenario, as a markdown table. */
export function outcomeTable(summary: LoadSummary): string {
  const orders = summary.orders;
  if (orders === undefined) return '';
  return markdownTable(
    ['outcome', 'orders', 'share', 'latency (ms) p50 / p95 / p99 / max'],
    orders.outcomes.map((outcome) => [
      outcome.outcome,
      String(outcome.count),
      percent(outcome.rate),
      outcome.latencyMs === null
        ? '–'
        : ['med', 'p(95)', 'p(99)', 'max']
            .map((stat) => millis(outcome.latencyMs?.[stat]))
            .join(' / '),
    ]),
  );
}

/** The human-readable end of a run: its tables and thresholds. */
export function summaryText(summary: LoadSummary): string {
  const tables =
    summary.scenario === 'staleness'
      ? [stalenessTable(summary), levelTable(summary)]
      : [outcomeTable(summary)];
  const thresholds = summary.thresholds.map(
    (threshold) => `${threshold.ok ? 'ok  ' : 'FAIL'} ${threshold.metric}: ${threshold.expression}`,
  );
  return [
    `${summary.scenario} (${summary.runner}) against ${summary.target}` +
      (summary.durationMs === null ? '' : `, ${(summary.durationMs / 1000).toFixed(1)} s`),
    ...tables,
    [...thresholds, summary.ok ? 'all thresholds passed' : 'some thresholds failed'].join('\n'),
  ].join('\n\n');
}
