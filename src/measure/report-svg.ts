/**
 * Hand-written SVG for the staleness report: no plotting dependency, labelled axes, a legend, and
 * nothing fetched from elsewhere, so the file can be mailed or committed as it is.
 */
import {
  ALL_REPLICAS,
  formatSummary,
  type MeasureReport,
  type VisibilityCurve,
} from './statistics.js';

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2'];
const POOLED_COLOR = '#333333';

/** Escapes text for XML character data and attribute values. */
export function escapeXml(text: string): string {
  return text
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&apos;');
}

/** One line of a chart. */
export interface ChartSeries {
  readonly name: string;
  readonly points: readonly (readonly [x: number, y: number])[];
  readonly color?: string;
  readonly dashed?: boolean;
  /** Draw markers only, no line between them. */
  readonly markersOnly?: boolean;
}

/** What {@link renderChart} draws. */
export interface ChartOptions {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly ChartSeries[];
  /** Tick positions on the x axis with their labels; evenly spaced numbers when omitted. */
  readonly xTicks?: readonly { readonly at: number; readonly label: string }[];
  /** Maps a data x to a 0–1 position; linear over the data's range when omitted. */
  readonly xScale?: (x: number) => number;
  readonly yMax?: number;
  readonly yFormat?: (y: number) => string;
  readonly width?: number;
  readonly height?: number;
}

const fmt = (n: number): string => (Math.round(n * 10) / 10).toString();

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `value`. */
export function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** A line chart as a standalone `<svg>` element. */
export function renderChart(options: ChartOptions): string {
  const width = options.width ?? 780;
  const height = options.height ?? 360;
  const margin = { top: 36, right: 240, bottom: 50, left: 70 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const xs = options.series.flatMap((s) => s.points.map(([x]) => x));
  const ys = options.series.flatMap((s) => s.points.map(([, y]) => y));
  const xMin = xs.length === 0 ? 0 : Math.min(...xs);
  const xMax = xs.length === 0 ? 1 : Math.max(...xs);
  const xScale =
    options.xScale ?? ((x: number) => (xMax === xMin ? 0.5 : (x - xMin) / (xMax - xMin)));
  const yMax = options.yMax ?? niceMax(ys.length === 0 ? 1 : Math.max(...ys));
  const yFormat = options.yFormat ?? ((y: number) => fmt(y));
  const px = (x: number): number => margin.left + xScale(x) * plotW;
  const py = (y: number): number => margin.top + plotH - (Math.min(y, yMax) / yMax) * plotH;

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${width / 2 - margin.right / 2 + margin.left / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(options.title)}</text>`,
  );

  // Grid and y ticks, at round values: fifths of a 1 or 5 bound, quarters of a 2 one.
  const lead = Math.round(yMax / 10 ** Math.floor(Math.log10(yMax)));
  const divisions = lead === 2 ? 4 : 5;
  for (let i = 0; i <= divisions; i += 1) {
    const y = (yMax * i) / divisions;
    const at = fmt(py(y));
    parts.push(
      `<line x1="${margin.left}" y1="${at}" x2="${margin.left + plotW}" y2="${at}" stroke="#e0e0e0"/>`,
      `<text x="${margin.left - 6}" y="${at}" text-anchor="end" dominant-baseline="middle">${escapeXml(yFormat(y))}</text>`,
    );
  }
  // X ticks.
  const xTicks =
    options.xTicks ??
    [0, 1, 2, 3, 4].map((i) => {
      const at = xMin + ((xMax - xMin) * i) / 4;
      return { at, label: fmt(at) };
    });
  for (const tick of xTicks) {
    const at = fmt(px(tick.at));
    parts.push(
      `<line x1="${at}" y1="${margin.top + plotH}" x2="${at}" y2="${margin.top + plotH + 5}" stroke="#000000"/>`,
      `<text x="${at}" y="${margin.top + plotH + 18}" text-anchor="middle">${escapeXml(tick.label)}</text>`,
    );
  }
  // Axes and their labels.
  parts.push(
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${margin.top + plotH}" stroke="#000000"/>`,
    `<line x1="${margin.left}" y1="${margin.top + plotH}" x2="${margin.left + plotW}" y2="${margin.top + plotH}" stroke="#000000"/>`,
    `<text x="${margin.left + plotW / 2}" y="${height - 10}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
    `<text x="16" y="${margin.top + plotH / 2}" text-anchor="middle" transform="rotate(-90 16 ${margin.top + plotH / 2})">${escapeXml(options.yLabel)}</text>`,
  );

  // Series, then the legend.
  options.series.forEach((series, index) => {
    const color = series.color ?? PALETTE[index % PALETTE.length] ?? '#000000';
    const dash = series.dashed === true ? ' stroke-dasharray="6 4"' : '';
    const coords = series.points.map(([x, y]) => `${fmt(px(x))},${fmt(py(y))}`);
    parts.push(`<g class="series" data-series="${escapeXml(series.name)}">`);
    if (series.markersOnly !== true && coords.length > 1)
      parts.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${coords.join(' ')}"/>`,
      );
    for (const [x, y] of series.points)
      parts.push(
        `<circle cx="${fmt(px(x))}" cy="${fmt(py(y))}" r="${series.markersOnly === true ? 2 : 3}" fill="${color}"/>`,
      );
    parts.push('</g>');
    const ly = margin.top + 8 + index * 20;
    const lx = margin.left + plotW + 16;
    parts.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 22}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${lx + 28}" y="${ly}" dominant-baseline="middle">${escapeXml(series.name)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function seriesStyle(replica: string, index: number): Pick<ChartSeries, 'color' | 'dashed'> {
  return replica === ALL_REPLICAS
    ? { color: POOLED_COLOR, dashed: true }
    : { color: PALETTE[index % PALETTE.length] ?? '#000000' };
}

/**
 * The PBS t-visibility plot: probability that a read t ms after a COMMIT is stale, per replica and
 * pooled. The delays are spaced evenly (they span 0 to 100 ms unevenly), each labelled.
 */
export function renderVisibilityPlot(curves: readonly VisibilityCurve[]): string {
  const delays = curves[0]?.points.map((point) => point.delayMs) ?? [];
  const slot = (t: number): number =>
    delays.length <= 1 ? 0.5 : Math.max(delays.indexOf(t), 0) / (delays.length - 1);
  return renderChart({
    title: 'PBS t-visibility: P(stale read) t ms after COMMIT',
    xLabel: 'read delay after COMMIT, t (ms)',
    yLabel: 'P(stale read)',
    yMax: 1,
    yFormat: (y) => y.toFixed(2),
    xScale: slot,
    xTicks: delays.map((t) => ({ at: t, label: String(t) })),
    series: curves.map((curve, index) => ({
      name: `${curve.replica} (n=${curve.points.reduce((sum, p) => sum + p.reads, 0)})`,
      points: curve.points.flatMap((point) =>
        point.staleShare === undefined ? [] : [[point.delayMs, point.staleShare] as const],
      ),
      ...seriesStyle(curve.replica, index),
    })),
  });
}

/** Commit-to-visible time of each write, per replica, over the run. */
export function renderTimeBehindPlot(report: MeasureReport): string {
  return renderChart({
    title: 'Time behind: COMMIT to visible on the replica',
    xLabel: 'time since start (s)',
    yLabel: 'commit-to-visible (ms)',
    series: report.replicas.map((replica, index) => ({
      name: replica,
      markersOnly: true,
      points: report.visibilityOverTime.flatMap((row) =>
        row.replica !== replica || row.visibleAfterMs === undefined
          ? []
          : [[row.atMs / 1000, row.visibleAfterMs] as const],
      ),
      ...seriesStyle(replica, index),
    })),
  });
}

/** WAL bytes each replica had still to replay, over the run. */
export function renderByteLagPlot(report: MeasureReport): string {
  return renderChart({
    title: 'Bytes behind: primary WAL position minus replica replay position',
    xLabel: 'time since start (s)',
    yLabel: 'bytes behind',
    yFormat: (y) => (y >= 10_000 ? `${fmt(y / 1024)} KiB` : String(Math.round(y))),
    series: report.replicas.map((replica, index) => ({
      name: replica,
      points: report.byteLagOverTime.flatMap((row) =>
        row.replica === replica ? [[row.atMs / 1000, row.bytes] as const] : [],
      ),
      ...seriesStyle(replica, index),
    })),
  });
}

/** The plots of a report, in the order they are shown. */
export function reportCharts(report: MeasureReport): string[] {
  return [
    renderVisibilityPlot(report.curves),
    renderTimeBehindPlot(report),
    renderByteLagPlot(report),
  ];
}

/** One SVG document with every plot stacked, for `--out report.svg`. */
export function renderReportSvg(report: MeasureReport): string {
  const charts = reportCharts(report);
  const height = 360;
  const width = 780;
  const body = charts
    .map((chart, index) => `<g transform="translate(0 ${index * height})">\n${chart}\n</g>`)
    .join('\n');
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height * charts.length}" viewBox="0 0 ${width} ${height * charts.length}">`,
    `<title>${escapeXml(`replikit staleness report: ${report.replicas.join(', ')}`)}</title>`,
    body,
    '</svg>',
    '',
  ].join('\n');
}

/** A self-contained HTML page with the summary and the plots inline, for `--out report.html`. */
export function renderReportHtml(report: MeasureReport): string {
  return [
    '<!DOCTYPE html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<title>replikit staleness report</title>',
    '<style>body{font-family:sans-serif;margin:2em;max-width:1100px}pre{background:#f6f6f6;padding:1em;overflow-x:auto}figure{margin:1.5em 0}</style>',
    '</head>',
    '<body>',
    '<h1>replikit staleness report</h1>',
    `<pre>${escapeXml(formatSummary(report))}</pre>`,
    ...reportCharts(report).map((chart) => `<figure>\n${chart}\n</figure>`),
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
