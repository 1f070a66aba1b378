/**
 * k6's custom metrics (Rate, Trend, Counter) and thresholds, for the Node runner: samples are
 * added with tags, and {@link MetricSet.summaryData} hands back what k6 gives `handleSummary` —
 * the metrics, and a submetric `name{tag:value,...}` for each threshold that names one — so both
 * runners build their JSON summary with the same `buildSummary`. No I/O.
 */
import { TREND_STATS, type SummaryData, type SummaryMetric } from '../shared/scenarios.js';

type Tags = Readonly<Record<string, string>>;
type Kind = 'rate' | 'trend' | 'counter';

interface Sample {
  readonly value: number;
  readonly tags: Tags;
}

/** A metric that takes samples, as k6's `add(value, tags)`. */
export interface Metric {
  add(value: number | boolean, tags?: Readonly<Record<string, string | number>>): void;
}

/** `name{a:1,b:x}` → `{ name, tags: { a: '1', b: 'x' } }`. */
export function parseMetricKey(key: string): { name: string; tags: Tags } {
  const open = key.indexOf('{');
  if (open < 0 || !key.endsWith('}')) return { name: key, tags: {} };
  const tags: Record<string, string> = {};
  for (const pair of key.slice(open + 1, -1).split(',')) {
    const colon = pair.indexOf(':');
    if (colon <= 0) throw new RangeError(`bad submetric "${key}": "${pair}" is not tag:value`);
    tags[pair.slice(0, colon).trim()] = pair.slice(colon + 1).trim();
  }
  return { name: key.slice(0, open), tags };
}

/** k6's percentile: linear interpolation between the closest ranks; NaN when empty. */
export function percentileOf(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = (p / 100) * (sorted.length - 1);
  const low = Math.floor(index);
  const high = Math.ceil(index);
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (index - low);
}

/** The values k6 reports for a metric of `kind` over `samples`. */
export function valuesOf(
  kind: Kind,
  samples: readonly number[],
  durationMs: number,
): Record<string, number> {
  if (kind === 'rate') {
    const passes = samples.filter((value) => value !== 0).length;
    const fails = samples.length - passes;
    return { rate: samples.length === 0 ? 0 : passes / samples.length, passes, fails };
  }
  if (kind === 'counter') {
    const count = samples.reduce((sum, value) => sum + value, 0);
    return { count, rate: durationMs > 0 ? count / (durationMs / 1000) : 0 };
  }
  const sorted = [...samples].sort((a, b) => a - b);
  const values: Record<string, number> = {};
  for (const stat of TREND_STATS) {
    if (stat === 'count') values[stat] = sorted.length;
    else if (stat === 'avg')
      values[stat] =
        sorted.length === 0 ? 0 : sorted.reduce((sum, value) => sum + value, 0) / sorted.length;
    else if (stat === 'min') values[stat] = sorted[0] ?? 0;
    else if (stat === 'max') values[stat] = sorted.at(-1) ?? 0;
    else if (stat === 'med') values[stat] = sorted.length === 0 ? 0 : percentileOf(sorted, 50);
    else {
      const match = /^p\((\d+(?:\.\d+)?)\)$/.exec(stat);
      if (match?.[1] !== undefined)
        values[stat] = sorted.length === 0 ? 0 : percentileOf(sorted, Number(match[1]));
    }
  }
  return values;
}

const THRESHOLD =
  /^\s*([a-z]+(?:\(\d+(?:\.\d+)?\))?)\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$/;

/**
 * Whether `values` pass a k6 threshold expression such as `count==0`, `rate<0.01` or
 * `p(95)<400`. A percentile the values do not hold is computed from `samples` when given.
 *
 * @throws RangeError for an expression k6 would not accept either.
 */
export function passes(
  expression: string,
  values: Readonly<Record<string, number>>,
  samples?: readonly number[],
): boolean {
  const match = THRESHOLD.exec(expression);
  if (match === null) throw new RangeError(`bad threshold "${expression}"`);
  const [, stat = '', op, limitText] = match;
  let value = values[stat];
  if (value === undefined && samples !== undefined && stat.startsWith('p(')) {
    value = percentileOf(
      [...samples].sort((a, b) => a - b),
      Number(stat.slice(2, -1)),
    );
  }
  if (value === undefined) throw new RangeError(`threshold "${expression}": no ${stat} here`);
  const limit = Number(limitText);
  switch (op) {
    case '<':
      return value < limit;
    case '<=':
      return value <= limit;
    case '>':
      return value > limit;
    case '>=':
      return value >= limit;
    case '!=':
      return value !== limit;
    default:
      return value === limit;
  }
}

/** The custom metrics of one run, with the clock that k6's counter rates divide by. */
export class MetricSet {
  readonly #kinds = new Map<string, Kind>();
  readonly #samples = new Map<string, Sample[]>();

  #metric(name: string, kind: Kind): Metric {
    const known = this.#kinds.get(name);
    if (known !== undefined && known !== kind) {
      throw new RangeError(`metric ${name} is a ${known}, not a ${kind}`);
    }
    this.#kinds.set(name, kind);
    const samples = this.#samples.get(name) ?? [];
    this.#samples.set(name, samples);
    return {
      add: (value, tags = {}) => {
        samples.push({
          value: typeof value === 'boolean' ? Number(value) : value,
          tags: Object.fromEntries(Object.entries(tags).map(([key, v]) => [key, String(v)])),
        });
      },
    };
  }

  rate(name: string): Metric {
    return this.#metric(name, 'rate');
  }

  trend(name: string): Metric {
    return this.#metric(name, 'trend');
  }

  counter(name: string): Metric {
    return this.#metric(name, 'counter');
  }

  /** Samples of `name` whose tags include all of `tags`. */
  values(name: string, tags: Tags = {}): number[] {
    return (this.#samples.get(name) ?? [])
      .filter((sample) => Object.entries(tags).every(([key, value]) => sample.tags[key] === value))
      .map((sample) => sample.value);
  }

  /**
   * What k6 hands `handleSummary`: every metric, plus the submetrics the thresholds name, each
   * with its thresholds evaluated. A threshold on a metric never added to fails, as in k6.
   */
  summaryData(
    thresholds: Readonly<Record<string, readonly string[]>>,
    durationMs: number,
  ): SummaryData {
    const metrics: Record<string, SummaryMetric> = {};
    for (const [name, kind] of this.#kinds) {
      metrics[name] = {
        type: kind,
        contains: kind === 'trend' ? 'time' : 'default',
        values: valuesOf(kind, this.values(name), durationMs),
      };
    }
    for (const [key, expressions] of Object.entries(thresholds)) {
      const { name, tags } = parseMetricKey(key);
      const kind = this.#kinds.get(name);
      if (kind === undefined) {
        metrics[key] = {
          type: 'counter',
          values: {},
          thresholds: Object.fromEntries(
            expressions.map((expression) => [expression, { ok: false }]),
          ),
        };
        continue;
      }
      const samples = this.values(name, tags);
      const values = valuesOf(kind, samples, durationMs);
      metrics[key] = {
        type: kind,
        contains: kind === 'trend' ? 'time' : 'default',
        values,
        thresholds: Object.fromEntries(
          expressions.map((expression) => [
            expression,
            { ok: passes(expression, values, samples) },
          ]),
        ),
      };
    }
    return { metrics, state: { testRunDurationMs: durationMs } };
  }
}
