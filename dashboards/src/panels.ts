/**
 * Small helpers shared by the dashboards: the provisioned datasources, a Prometheus query, and
 * the three panel kinds the dashboards use (time series, stat, heatmap) with the settings every
 * replikit panel shares. The dashboards themselves read as a list of panels and their PromQL.
 *
 * @packageDocumentation
 */
import type { DataSourceRef } from '@grafana/grafana-foundation-sdk/common';
import {
  BigValueColorMode,
  BigValueGraphMode,
  GraphThresholdsStyleConfigBuilder,
  GraphThresholdsStyleMode,
  HeatmapCellLayout,
  LegendDisplayMode,
  LegendPlacement,
  ReduceDataOptionsBuilder,
  StackingConfigBuilder,
  StackingMode,
  VizLegendOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  MappingType,
  ThresholdsConfigBuilder,
  ThresholdsMode,
  type ValueMapping,
} from '@grafana/grafana-foundation-sdk/dashboard';
import {
  HeatmapColorMode,
  HeatmapColorOptionsBuilder,
  PanelBuilder as HeatmapPanelBuilder,
  RowsHeatmapOptionsBuilder,
  YAxisConfigBuilder,
} from '@grafana/grafana-foundation-sdk/heatmap';
import { DataqueryBuilder, PromQueryFormat } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatPanelBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesPanelBuilder } from '@grafana/grafana-foundation-sdk/timeseries';

/**
 * The Prometheus datasource of `dashboards/provisioning/datasources/datasources.yaml`. Its
 * `exemplarTraceIdDestinations` turn an exemplar's `trace_id` label into a link to the trace in
 * the Jaeger datasource (uid `jaeger`), so a query only has to ask for exemplars.
 */
export const PROMETHEUS: DataSourceRef = { type: 'prometheus', uid: 'prometheus' };

/** The read-your-writes wait budget, `REPLIKIT_READ_WAIT_TIMEOUT_MS` by default (1 s), in seconds. */
export const WAIT_BUDGET_SECONDS = 1;

/**
 * Routing reasons that sent a read to the primary although its consistency level would have let a
 * replica serve it: the wait timed out, the replica failed, none was in rotation, none was fresh
 * enough, the token was not trusted, or the read reached another server than the one that proved
 * the route. (`strong` and `sticky_window` reads go to the primary by design and are not
 * fallbacks.) Shared by the fallback panel and the fallback alert.
 */
export const FALLBACK_REASONS = [
  'timeout_fallback',
  'replica_error',
  'no_replica',
  'too_stale',
  'token_untrusted',
  'server_changed',
] as const;

/** A PromQL regular expression matching any of `values`. */
export const anyOf = (values: readonly string[]): string => values.join('|');

/** A query of one panel: its PromQL and legend; exemplars on request. */
export interface Query {
  readonly expr: string;
  readonly legend?: string;
  readonly exemplars?: boolean;
}

/** Prometheus queries with stable refIds (A, B, …), so that regenerating the JSON is a no-op. */
function targets(queries: readonly Query[], format?: PromQueryFormat): DataqueryBuilder[] {
  return queries.map((query, i) => {
    const builder = new DataqueryBuilder()
      .datasource(PROMETHEUS)
      .refId(String.fromCharCode(65 + i))
      .expr(query.expr)
      .range();
    if (query.legend !== undefined) builder.legendFormat(query.legend);
    if (query.exemplars === true) builder.exemplar(true);
    if (format !== undefined) builder.format(format);
    return builder;
  });
}

/** What every panel has: a title, a description for the ⓘ tooltip, a width and height in grid units. */
export interface PanelOptions {
  readonly title: string;
  readonly description: string;
  readonly queries: readonly Query[];
  /** Grafana unit id: `s`, `bytes`, `ops`, `percentunit`, `short`, … */
  readonly unit: string;
  /** Of 24 columns. Default 12. */
  readonly width?: number;
  /** Default 8. */
  readonly height?: number;
}

/** Green, then red from `red` on (and amber from `amber` when given). */
function thresholds(red: number, amber?: number): ThresholdsConfigBuilder {
  return new ThresholdsConfigBuilder()
    .mode(ThresholdsMode.Absolute)
    .steps([
      { value: null, color: 'green' },
      ...(amber === undefined ? [] : [{ value: amber, color: 'orange' }]),
      { value: red, color: 'red' },
    ]);
}

/** Options of {@link timeseries}. */
export interface TimeseriesOptions extends PanelOptions {
  /** Stack the series (for parts of a whole, such as reads by reason). */
  readonly stacked?: boolean;
  /** Draw a red line at this value (an alert's threshold). */
  readonly redLine?: number;
}

/** A time series panel with a table legend showing the mean and the maximum. */
export function timeseries(options: TimeseriesOptions): TimeseriesPanelBuilder {
  const panel = new TimeseriesPanelBuilder()
    .title(options.title)
    .description(options.description)
    .datasource(PROMETHEUS)
    .span(options.width ?? 12)
    .height(options.height ?? 8)
    .unit(options.unit)
    .min(0)
    .fillOpacity(options.stacked === true ? 30 : 10)
    .legend(
      new VizLegendOptionsBuilder()
        .showLegend(true)
        .displayMode(LegendDisplayMode.Table)
        .placement(LegendPlacement.Bottom)
        .calcs(['mean', 'max']),
    );
  if (options.stacked === true)
    panel.stacking(new StackingConfigBuilder().mode(StackingMode.Normal));
  if (options.redLine !== undefined) {
    panel
      .thresholds(thresholds(options.redLine))
      .thresholdsStyle(
        new GraphThresholdsStyleConfigBuilder().mode(GraphThresholdsStyleMode.Dashed),
      );
  }
  for (const target of targets(options.queries)) panel.withTarget(target);
  return panel;
}

/** Options of {@link stat}. */
export interface StatOptions extends PanelOptions {
  /** Turns red from this value on (amber from `amber`). */
  readonly red?: number;
  readonly amber?: number;
  /** The other way round: red below this value, green from it on. */
  readonly green?: number;
  /** Text for exact values (`1` → `up`), with a color each. */
  readonly mappings?: Readonly<Record<string, { text: string; color: string }>>;
}

/** A stat panel: the latest value of each series, colored by thresholds or mappings when given. */
export function stat(options: StatOptions): StatPanelBuilder {
  const panel = new StatPanelBuilder()
    .title(options.title)
    .description(options.description)
    .datasource(PROMETHEUS)
    .span(options.width ?? 6)
    .height(options.height ?? 4)
    .unit(options.unit)
    .graphMode(BigValueGraphMode.Area)
    // Colored only when thresholds or mappings say what a good value is; Grafana's default
    // thresholds (red from 80) would paint a timestamp or a count red.
    .colorMode(
      options.red !== undefined || options.green !== undefined || options.mappings !== undefined
        ? BigValueColorMode.Background
        : BigValueColorMode.None,
    )
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false));
  if (options.red !== undefined) panel.thresholds(thresholds(options.red, options.amber));
  if (options.green !== undefined) {
    panel.thresholds(
      new ThresholdsConfigBuilder().mode(ThresholdsMode.Absolute).steps([
        { value: null, color: 'red' },
        { value: options.green, color: 'green' },
      ]),
    );
  }
  if (options.mappings !== undefined) {
    const mapping: ValueMapping = {
      type: MappingType.ValueToText,
      options: Object.fromEntries(
        Object.entries(options.mappings).map(([value, result], index) => [
          value,
          { ...result, index },
        ]),
      ),
    };
    panel.mappings([mapping]);
  }
  for (const target of targets(options.queries)) panel.withTarget(target);
  return panel;
}

/**
 * A heatmap of a Prometheus histogram: `query` must return `sum by (le) (rate(x_bucket[…]))`.
 * Grafana draws the buckets as they are (no recalculation) and, with `exemplars`, the exemplars
 * on top: a click opens the trace through the datasource's `trace_id` link.
 */
export function heatmap(options: PanelOptions): HeatmapPanelBuilder {
  const panel = new HeatmapPanelBuilder()
    .title(options.title)
    .description(options.description)
    .datasource(PROMETHEUS)
    .span(options.width ?? 12)
    .height(options.height ?? 8)
    .calculate(false)
    .rowsFrame(new RowsHeatmapOptionsBuilder().layout(HeatmapCellLayout.Le))
    .yAxis(new YAxisConfigBuilder().unit(options.unit))
    .color(new HeatmapColorOptionsBuilder().mode(HeatmapColorMode.Scheme).scheme('Oranges'))
    .exemplarsColor('rgba(0, 120, 255, 0.9)')
    .showLegend();
  for (const target of targets(options.queries, PromQueryFormat.Heatmap)) panel.withTarget(target);
  return panel;
}

/** Per-second rate over Grafana's rate interval (at least four scrapes, whatever the zoom). */
export const rate = (selector: string): string => `rate(${selector}[$__rate_interval])`;

/** `histogram_quantile(q, sum by (le, …by) (rate(histogram_bucket{…}[…])))`. */
export function quantile(
  q: number,
  histogram: string,
  by: readonly string[] = [],
  filter = '',
): string {
  return `histogram_quantile(${q}, sum by (${['le', ...by].join(', ')}) (${rate(`${histogram}_bucket${filter}`)}))`;
}
