/**
 * The dashboards and alert rules, checked without Grafana or Prometheus: the committed JSON is what
 * the code generates, every query and rule expression parses as PromQL, and every alert carries
 * what a person on call needs. `promtool check rules` also runs when promtool is installed.
 * (That the metrics they name exist is test/dashboards.int.test.ts.)
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { describe, expect, it } from 'vitest';

import { renderDashboards } from '../dashboards/src/index.js';
import {
  ALERTS_FILE,
  alertQueries,
  alertRules,
  analysePromql,
  dashboardQueries,
  missingMetrics,
  ROOT,
  substituteGrafanaVariables,
} from './support/dashboards.js';

const run = promisify(execFile);

/** Where promtool is, or undefined when it is not installed. */
async function findPromtool(): Promise<string | undefined> {
  try {
    const { stdout } = await run('sh', ['-c', 'command -v promtool']);
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

describe('generated dashboards', () => {
  it('the committed JSON is what the code generates', () => {
    for (const [file, json] of renderDashboards()) {
      let committed: string | undefined;
      try {
        committed = readFileSync(join(ROOT, 'dashboards', file), 'utf8');
      } catch {
        committed = undefined;
      }
      expect(
        committed,
        `dashboards/${file} is missing or differs from dashboards/src: run npm run dashboards and commit the result`,
      ).toBe(json);
    }
  });

  it('has the three dashboards, with unique uids and panel ids', () => {
    const dashboards = [...renderDashboards().values()].map(
      (json) => JSON.parse(json) as { uid: string; title: string; panels: { id: number }[] },
    );
    expect(dashboards.map((d) => d.title)).toEqual([
      'replikit / Replication & routing',
      'replikit / Sagas',
      'replikit / Projections & 2PC',
    ]);
    expect(new Set(dashboards.map((d) => d.uid)).size).toBe(dashboards.length);
    for (const dashboard of dashboards) {
      const ids = dashboard.panels.map((panel) => panel.id);
      expect(new Set(ids).size, dashboard.title).toBe(ids.length);
    }
  });

  it('every panel query parses as PromQL', () => {
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(30);
    const problems = queries.flatMap(({ where, expr }) =>
      analysePromql(expr).errors.map((error) => `${where}: ${error}\n  ${expr}`),
    );
    expect(problems).toEqual([]);
  });

  it('rates use $__rate_interval, and no query groups by an unbounded label', () => {
    const unbounded = /\b(by|without)\s*\([^)]*\b(id|saga_id|trace_id|lsn|user|key|gid)\b/;
    for (const { where, expr } of dashboardQueries()) {
      for (const range of expr.matchAll(/\b(?:rate|irate)\([^[]*\[([^\]]+)\]/g)) {
        expect(range[1], `${where}: ${expr}`).toBe('$__rate_interval');
      }
      expect(expr, where).not.toMatch(unbounded);
    }
  });

  it('the wait-time heatmap asks for exemplars (they link to traces)', () => {
    const routing = JSON.parse(renderDashboards().get('replication-routing.json')!) as {
      panels: { type: string; targets?: { expr: string; exemplar?: boolean; format?: string }[] }[];
    };
    const heatmaps = routing.panels.filter((panel) => panel.type === 'heatmap');
    expect(heatmaps).toHaveLength(1);
    expect(heatmaps[0]!.targets).toEqual([
      expect.objectContaining({
        exemplar: true,
        format: 'heatmap',
        expr: expect.stringContaining('replikit_read_wait_seconds_bucket') as unknown,
      }),
    ]);
  });
});

describe('alert rules', () => {
  const rules = alertRules();

  it('has the alerts the issue asks for', () => {
    const metrics = rules.map((rule) => analysePromql(rule.expr).metrics.join(' '));
    for (const metric of [
      'replikit_replica_lag_seconds',
      'replikit_replica_up',
      'replikit_reads_total',
      'replikit_sagas_needing_attention',
      'replikit_outbox_oldest_pending_age_seconds',
      'replikit_projection_lag_seconds',
      'replikit_prepared_xact_oldest_age_seconds',
    ]) {
      expect(
        metrics.some((names) => names.includes(metric)),
        metric,
      ).toBe(true);
    }
  });

  it('every expression parses as PromQL', () => {
    const problems = alertQueries().flatMap(({ where, expr }) =>
      analysePromql(expr).errors.map((error) => `${where}: ${error}`),
    );
    expect(problems).toEqual([]);
  });

  it('each alert has a unique name, a for, a severity, a summary and a description', () => {
    expect(new Set(rules.map((rule) => rule.alert)).size).toBe(rules.length);
    for (const rule of rules) {
      expect(rule.for, rule.alert).toMatch(/^\d+[smh]$/);
      expect(['critical', 'warning', 'info'], rule.alert).toContain(rule.labels.severity);
      expect(rule.annotations.summary, rule.alert).toBeTruthy();
      expect(rule.annotations.description, rule.alert).toBeTruthy();
    }
  });

  it('annotations name only labels the expression keeps', () => {
    for (const rule of rules) {
      // The labels an outer `max by (x)`/`sum by (x)` keeps; none after a plain `max(…)`.
      const kept = /^\s*\w+\s+by\s*\(([^)]*)\)/.exec(rule.expr)?.[1]?.split(/\s*,\s*/) ?? [];
      const text = Object.values(rule.annotations).join(' ');
      for (const used of text.matchAll(/\$labels\.(\w+)/g)) {
        expect(kept, `${rule.alert} uses $labels.${used[1]}`).toContain(used[1]);
      }
    }
  });

  it('promtool check rules accepts the file (when promtool is installed)', async (context) => {
    const promtool = await findPromtool();
    if (promtool === undefined) {
      context.skip(
        'promtool is not on PATH (Debian: apt-get install prometheus); the PromQL checks above still ran',
      );
      return;
    }
    const { stdout } = await run(promtool, ['check', 'rules', join(ROOT, ALERTS_FILE)]);
    expect(stdout).toMatch(new RegExp(`SUCCESS: ${rules.length} rules found`));
  });
});

describe('the checks catch what they are for', () => {
  it('a query that does not parse is reported', () => {
    expect(analysePromql('sum(rate(replikit_reads_total[$__rate_interval])').errors).not.toEqual(
      [],
    );
    expect(analysePromql('max by (replica) replikit_replica_up)').errors).not.toEqual([]);
  });

  it('rate of an instant vector and a quantile without le are reported', () => {
    expect(analysePromql('sum(rate(replikit_reads_total))').errors).toEqual([
      expect.stringMatching(/Rate needs a range vector/),
    ]);
    expect(
      analysePromql(
        'histogram_quantile(0.99, sum by (target) (rate(replikit_read_duration_seconds_bucket[5m])))',
      ).errors,
    ).toEqual([expect.stringMatching(/drops le/)]);
  });

  it('Grafana variables are substituted before parsing', () => {
    expect(substituteGrafanaVariables('rate(x[$__rate_interval]) + rate(y[${__interval}])')).toBe(
      'rate(x[5m]) + rate(y[5m])',
    );
    expect(analysePromql('rate(x{a="$replica"}[$__rate_interval])')).toEqual({
      errors: [],
      metrics: ['x'],
    });
  });

  it('metric names are found in selectors, including __name__ matchers', () => {
    expect(
      analysePromql(
        'sum(rate(a_total[5m])) / on() group_left max({__name__="b_seconds"}) and histogram_quantile(0.5, sum by (le) (rate(c_bucket[5m])))',
      ).metrics,
    ).toEqual(['a_total', 'b_seconds', 'c_bucket']);
  });

  it('the metric checker maps histogram series to their family and reports unknown names', () => {
    const exposition = [
      '# HELP a_total A.',
      '# TYPE a_total counter',
      'a_total 1',
      '# TYPE h_seconds histogram',
      'h_seconds_bucket{le="+Inf"} 1',
      'h_seconds_sum 1',
      'h_seconds_count 1',
      '# TYPE g gauge',
    ].join('\n');
    const sources = [
      { where: 'ok', expr: 'rate(a_total[5m]) + rate(h_seconds_count[5m]) + g' },
      { where: 'ok', expr: 'histogram_quantile(0.9, sum by (le) (rate(h_seconds_bucket[5m])))' },
      { where: 'typo', expr: 'rate(a_totl[5m])' },
      { where: 'not a histogram', expr: 'g_bucket' },
    ];
    expect(missingMetrics(sources, exposition)).toEqual([
      { metric: 'a_totl', where: 'typo' },
      { metric: 'g_bucket', where: 'not a histogram' },
    ]);
    // OpenMetrics declares a counter without its _total suffix.
    expect(missingMetrics([sources[0]!], exposition.replace('TYPE a_total', 'TYPE a'))).toEqual([]);
  });

  it('an alert without for or severity is caught by the same rule reader', () => {
    const [rule] = alertRules(
      'groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n',
    );
    expect(rule).toMatchObject({ alert: 'A', labels: {}, annotations: {} });
    expect(rule!.for).toBeUndefined();
  });
});
