/**
 * Checks of the dashboards and alert rules that need no Grafana and no Prometheus: every PromQL
 * expression parses, and the metric names it uses are ones a `/metrics` exposition declares.
 * Shared by `test/dashboards.unit.test.ts` and `test/dashboards.int.test.ts`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { parser } from '@prometheus-io/lezer-promql';
import { parse } from 'yaml';

import { buildDashboards } from '../../dashboards/src/index.js';

/** The repository root. */
export const ROOT = join(import.meta.dirname, '..', '..');
/** The Prometheus rule file, relative to {@link ROOT}. */
export const ALERTS_FILE = 'dashboards/alerts.yml';

/** One PromQL expression and where it comes from, for messages. */
export interface PromqlSource {
  readonly where: string;
  readonly expr: string;
}

/**
 * Grafana's variables replaced by something Prometheus would accept in their place: the interval
 * and range variables are durations (they only appear in range selectors here), any other
 * variable a plain word.
 */
export function substituteGrafanaVariables(expr: string): string {
  return expr.replace(/\$\{__\w+\}|\$__\w+/g, '5m').replace(/\$\{\w+(?::\w+)?\}|\$\w+/g, 'var');
}

/** A node of the parse tree (typed through the parser, so `@lezer/common` need not be a dependency). */
type SyntaxNode = ReturnType<typeof parser.parse>['topNode'];

/** Node names of functions whose argument must be a range vector (`x[5m]` or a subquery). */
const RANGE_FUNCTIONS = new Set([
  'Rate',
  'Irate',
  'Increase',
  'Delta',
  'Idelta',
  'Deriv',
  'Changes',
  'Resets',
  'PredictLinear',
]);

/** The children of `node`, in order. */
function children(node: SyntaxNode): SyntaxNode[] {
  const out: SyntaxNode[] = [];
  for (let child = node.firstChild; child !== null; child = child.nextSibling) out.push(child);
  return out;
}

/** What {@link analysePromql} found in one expression. */
export interface PromqlAnalysis {
  /** Parse errors and the semantic slips the parser lets through; empty when fine. */
  readonly errors: string[];
  /** Metric names the expression selects, in order of appearance, without repeats. */
  readonly metrics: string[];
}

/**
 * Parses `expr` (Grafana variables substituted) with Prometheus's own lezer grammar and walks the
 * tree. Beyond syntax, it reports what the grammar accepts but Prometheus or the panel would not:
 * a rate-like function of an instant vector, and a `histogram_quantile` whose aggregation drops
 * the `le` label (an empty panel).
 */
export function analysePromql(expr: string): PromqlAnalysis {
  const text = substituteGrafanaVariables(expr);
  const tree = parser.parse(text);
  const errors: string[] = [];
  const metrics = new Set<string>();
  const at = (node: SyntaxNode) => `at ${node.from}: "${text.slice(node.from, node.to + 10)}"`;

  tree.iterate({
    enter: (ref) => {
      const node = ref.node;
      if (ref.type.isError) {
        errors.push(`syntax error ${at(node)}`);
        return;
      }
      switch (ref.name) {
        case 'VectorSelector': {
          const name = node.getChild('Identifier');
          if (name !== null) metrics.add(text.slice(name.from, name.to));
          // A selector by {__name__="x"}: the metric is x.
          for (const matcher of node
            .getChild('LabelMatchers')
            ?.getChildren('UnquotedLabelMatcher') ?? []) {
            const label = matcher.getChild('LabelName');
            const value = matcher.getChild('StringLiteral');
            const op = matcher.getChild('MatchOp')?.firstChild?.name;
            if (
              label &&
              value &&
              op === 'EqlSingle' &&
              text.slice(label.from, label.to) === '__name__'
            ) {
              metrics.add(text.slice(value.from + 1, value.to - 1));
            }
          }
          break;
        }
        case 'FunctionCall': {
          const fn = node.getChild('FunctionIdentifier')?.firstChild?.name ?? '';
          const args = children(node.getChild('FunctionCallBody') ?? node).filter(
            (child) => !child.type.isError,
          );
          if (RANGE_FUNCTIONS.has(fn) || fn.endsWith('OverTime')) {
            const first = args[0]?.name;
            if (first !== 'MatrixSelector' && first !== 'SubqueryExpr') {
              errors.push(`${fn} needs a range vector (x[5m]) ${at(node)}`);
            }
          }
          if (fn === 'HistogramQuantile') {
            const inner = args[1];
            if (inner !== undefined) errors.push(...leDropped(inner, text));
          }
          break;
        }
      }
    },
  });
  return { errors, metrics: [...metrics] };
}

/** Aggregations on the way to a histogram's buckets that drop `le`. */
function leDropped(node: SyntaxNode, text: string): string[] {
  const problems: string[] = [];
  const visit = (n: SyntaxNode): void => {
    if (n.name === 'AggregateExpr') {
      const modifier = n.getChild('AggregateModifier');
      const labels = (modifier?.getChild('GroupingLabels')?.getChildren('LabelName') ?? []).map(
        (label) => text.slice(label.from, label.to),
      );
      const without = modifier != null && modifier.getChild('Without') !== null;
      if (without ? labels.includes('le') : !labels.includes('le')) {
        problems.push(
          `histogram_quantile over an aggregation that drops le: "${text.slice(n.from, n.to)}"`,
        );
      }
    }
    for (const child of children(n)) visit(child);
  };
  visit(node);
  return problems;
}

/** Every Prometheus query of every generated dashboard, with the dashboard and panel it is in. */
export function dashboardQueries(): PromqlSource[] {
  const sources: PromqlSource[] = [];
  for (const { file, dashboard } of buildDashboards()) {
    const panels = (dashboard.panels ?? []).flatMap((panel) => [
      panel,
      ...('panels' in panel ? panel.panels : []),
    ]);
    for (const panel of panels) {
      if (!('targets' in panel)) continue;
      for (const target of panel.targets ?? []) {
        const { expr, refId } = target as { expr?: unknown; refId?: unknown };
        if (typeof expr === 'string') {
          sources.push({
            where: `${file} › ${panel.title ?? '(untitled)'} › ${String(refId)}`,
            expr,
          });
        }
      }
    }
  }
  return sources;
}

/** One alerting rule of the rule file, as written. */
export interface AlertRule {
  readonly group: string;
  readonly alert: string;
  readonly expr: string;
  readonly for?: string;
  readonly labels: Record<string, string>;
  readonly annotations: Record<string, string>;
}

/** The alerting rules of `text` (the rule file by default). */
export function alertRules(text = readFileSync(join(ROOT, ALERTS_FILE), 'utf8')): AlertRule[] {
  const doc = parse(text) as {
    groups?: { name: string; rules?: (Omit<AlertRule, 'group' | 'expr'> & { expr: unknown })[] }[];
  };
  return (doc.groups ?? []).flatMap((group) =>
    (group.rules ?? []).map((rule) => ({
      ...rule,
      group: group.name,
      expr: String(rule.expr),
      labels: rule.labels ?? {},
      annotations: rule.annotations ?? {},
    })),
  );
}

/** The expression of every alerting rule, with the rule it belongs to. */
export function alertQueries(): PromqlSource[] {
  return alertRules().map((rule) => ({ where: `${ALERTS_FILE} › ${rule.alert}`, expr: rule.expr }));
}

/**
 * The metric families an exposition (Prometheus text or OpenMetrics) declares, with their types,
 * and the names its samples carry.
 */
export function exposedMetrics(exposition: string): {
  families: Map<string, string>;
  samples: Set<string>;
} {
  const families = new Map<string, string>();
  const samples = new Set<string>();
  for (const line of exposition.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type !== null) families.set(type[1]!, type[2]!);
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (sample !== null) samples.add(sample[1]!);
  }
  // OpenMetrics names a counter family without `_total`; queries use the sample name.
  for (const [name, kind] of [...families]) {
    if (kind === 'counter' && !name.endsWith('_total')) families.set(`${name}_total`, kind);
  }
  return { families, samples };
}

/**
 * The metric names of `sources` that `exposition` does not expose, each with where it is used. A
 * histogram's `_bucket`, `_sum` and `_count` (a summary's `_sum` and `_count`) count as its own.
 */
export function missingMetrics(
  sources: readonly PromqlSource[],
  exposition: string,
): { metric: string; where: string }[] {
  const { families, samples } = exposedMetrics(exposition);
  const exposed = (name: string): boolean => {
    if (families.has(name) || samples.has(name)) return true;
    const series = /^(.*)_(bucket|sum|count)$/.exec(name);
    if (series === null) return false;
    const kind = families.get(series[1]!);
    return kind === 'histogram' || (kind === 'summary' && series[2] !== 'bucket');
  };
  return sources.flatMap(({ where, expr }) =>
    analysePromql(expr)
      .metrics.filter((metric) => !exposed(metric))
      .map((metric) => ({ metric, where })),
  );
}
