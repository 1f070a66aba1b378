import { writeFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { parseArgs } from 'node:util';

import { redactUrl } from '../db/database-url.js';
import {
  DEFAULT_DELAYS_MS,
  MeasureError,
  buildReport,
  formatSummary,
  measureStaleness,
  renderReportHtml,
  renderReportSvg,
  targetName,
  type MeasureProgress,
  type MeasureTarget,
} from '../measure/index.js';

const HELP = `usage: replikit measure --primary URL --replica URL [--replica URL ...] [options]

Measures how stale reads on the replicas are: writes rows to a table of its own on the primary
(replikit_measure_<random>, dropped at the end), reads them on every replica t ms after COMMIT
(t = ${DEFAULT_DELAYS_MS.join(', ')}), and samples replication lag.

options:
  --primary URL        the primary (must not be in recovery)
  --replica URL        a replica of that primary; repeat for several
  --duration D         how long to measure, e.g. 30s, 2m, 500ms (default 30s, at most 10m)
  --wait-budget D      read-your-writes wait before falling back to the primary (default 1s)
  --out FILE           also write a report: FILE.svg (the plots) or FILE.html (summary and plots)
  --json               print the report as JSON instead of the summary table`;

const MAX_DURATION_MS = 10 * 60_000;

/** Parses `500ms`, `30s`, `2m` or a bare number of seconds into ms; `undefined` when it is none. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (match === null) return undefined;
  const value = Number(match[1]);
  const unit = match[2] ?? 's';
  return Math.round(unit === 'ms' ? value : unit === 'm' ? value * 60_000 : value * 1000);
}

/** Names replicas `host:port`, with `#2`, `#3`… when two share one. */
function replicaTargets(urls: readonly string[]): MeasureTarget[] {
  const seen = new Map<string, number>();
  return urls.map((url) => {
    const base = targetName(url);
    const count = (seen.get(base) ?? 0) + 1;
    seen.set(base, count);
    return { name: count === 1 ? base : `${base}#${count}`, url };
  });
}

function progressReporter(): { update(progress: MeasureProgress): void; done(): void } {
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const line = (p: MeasureProgress): string =>
    `replikit: measuring ${Math.floor(p.elapsedMs / 1000)}/${Math.round(p.durationMs / 1000)} s, ` +
    `${p.writes} writes, ${p.reads} reads`;
  return {
    update(progress) {
      if (tty) process.stderr.write(`\r${line(progress)}\x1b[K`);
      else if (progress.elapsedMs - lastLine >= 5000) {
        lastLine = progress.elapsedMs;
        process.stderr.write(`${line(progress)}\n`);
      }
    },
    done() {
      if (tty) process.stderr.write('\r\x1b[K');
    },
  };
}

/** `replikit measure …`; returns the exit code (2 for a bad command line or servers that are not a pair). */
export async function measureCommand(argv: readonly string[]): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      primary: { type: 'string' },
      replica: { type: 'string', multiple: true },
      duration: { type: 'string', default: '30s' },
      'wait-budget': { type: 'string', default: '1s' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const usage = (message: string): number => {
    console.error(`replikit: ${message}`);
    return 2;
  };
  if (values.primary === undefined) return usage('measure needs --primary URL');
  const replicaUrls = values.replica ?? [];
  if (replicaUrls.length === 0) return usage('measure needs at least one --replica URL');
  for (const url of [values.primary, ...replicaUrls]) {
    if (!/^postgres(ql)?:\/\//.test(url) || !URL.canParse(url))
      return usage(`not a postgres:// URL: "${redactUrl(url)}"`);
  }
  const durationMs = parseDuration(values.duration);
  if (durationMs === undefined || durationMs < 1000 || durationMs > MAX_DURATION_MS)
    return usage(`--duration must be from 1s to 10m, e.g. 30s, got "${values.duration}"`);
  const waitBudgetMs = parseDuration(values['wait-budget']);
  if (waitBudgetMs === undefined || waitBudgetMs > 60_000)
    return usage(`--wait-budget must be at most 60s, e.g. 1s, got "${values['wait-budget']}"`);
  const out = values.out;
  const format = out === undefined ? undefined : extname(out).toLowerCase();
  if (format !== undefined && format !== '.svg' && format !== '.html')
    return usage(`--out must end in .svg or .html, got "${out}"`);

  // Ctrl-C ends the run early; the sampler still drops its table before we return.
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  const progress = progressReporter();
  const primaryName = targetName(values.primary);
  let samples;
  try {
    samples = await measureStaleness({
      primary: { name: primaryName, url: values.primary },
      replicas: replicaTargets(replicaUrls),
      durationMs,
      visibilityCapMs: Math.max(5000, 2 * waitBudgetMs),
      signal: controller.signal,
      onProgress: (p) => progress.update(p),
      onTable: (table) =>
        console.error(`replikit: measuring for ${durationMs / 1000} s in table ${table}`),
    });
  } catch (err) {
    progress.done();
    if (err instanceof MeasureError && err.code === 'MEASURE_NOT_A_PAIR') return usage(err.message);
    throw err;
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
  progress.done();
  if (controller.signal.aborted) {
    console.error('replikit: interrupted; the measurement table was dropped');
    return 130;
  }
  const report = buildReport(samples, { primary: primaryName, waitBudgetMs });
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else console.log(formatSummary(report));
  if (out !== undefined) {
    await writeFile(out, format === '.svg' ? renderReportSvg(report) : renderReportHtml(report));
    console.error(`replikit: wrote ${out}`);
  }
  return 0;
}
