/** `replikit measure`: a staleness report for any PostgreSQL primary and its replicas. */
export { MeasureError, type MeasureErrorCode } from './measure-error.js';
export {
  measureStaleness,
  targetName,
  type MeasureOptions,
  type MeasureProgress,
  type MeasureTarget,
} from './measure-staleness.js';
export {
  escapeXml,
  niceMax,
  renderByteLagPlot,
  renderChart,
  renderReportHtml,
  renderReportSvg,
  renderTimeBehindPlot,
  renderVisibilityPlot,
  reportCharts,
  type ChartOptions,
  type ChartSeries,
} from './report-svg.js';
export {
  ALL_REPLICAS,
  DEFAULT_DELAYS_MS,
  buildReport,
  byteLagSummary,
  formatSummary,
  levelCosts,
  percentile,
  timeBehind,
  visibilityCurves,
  type ByteLagSample,
  type ByteLagSummary,
  type CurvePoint,
  type LevelCosts,
  type MeasureReport,
  type MeasureSamples,
  type ReadTrial,
  type TimeBehind,
  type VisibilityCurve,
  type VisibilityTime,
} from './statistics.js';
