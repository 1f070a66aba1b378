/**
 * `npm run load -- <staleness|sagas> [options]`: the k6 scenarios of `load/k6/`, run from Node
 * for machines without k6, with the same metric names, thresholds and JSON summary.
 *
 *   npm run load -- staleness                     # against the service on http://127.0.0.1:3000
 *   npm run load -- staleness --local --iterations 2000
 *   npm run load -- sagas --local --rate 10 --duration 30s
 *
 * The JSON summary goes to stdout (and to `--out`), a progress line and the tables to stderr.
 * Every run is bounded: a number of iterations and a longest duration (staleness), or a duration
 * (sagas), after which orders still in flight get 30 s. Ctrl-C stops early and still reports.
 */
import { writeFile } from 'node:fs/promises';

import { summaryText, type LoadSummary } from '../shared/scenarios.js';
import { startLocalService, type LocalService } from './local.js';
import { parseOptions, USAGE, UsageError, type LoadOptions } from './options.js';
import { runSagas } from './sagas.js';
import { runStaleness } from './staleness.js';

const say = (line: string): void => {
  process.stderr.write(`[load] ${line}\n`);
};

async function main(): Promise<number> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let options: LoadOptions;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      say(err.message);
      process.stderr.write(`${USAGE}\n`);
      return 2;
    }
    throw err;
  }

  const stop = new AbortController();
  process.once('SIGINT', () => {
    say('interrupted: finishing what is in flight, then reporting');
    stop.abort();
  });

  let local: LocalService | undefined;
  let url = options.url;
  if (url === undefined) {
    say(`starting the service on the stack in ${options.stackDir}`);
    local = await startLocalService({
      dir: options.stackDir,
      orders: options.scenario === 'sagas',
      log: (line) => say(line),
    });
    url = local.url;
    say(`service on ${url} (${local.postgres})`);
  } else {
    say(`against ${url} (give --local to start the service here instead)`);
  }

  let summary: LoadSummary;
  try {
    summary =
      options.scenario === 'staleness'
        ? await runStaleness(options, url, stop.signal)
        : await runSagas(options, url, stop.signal);
  } finally {
    await local?.close();
  }

  const json = `${JSON.stringify(summary, null, 2)}\n`;
  process.stdout.write(json);
  if (options.out !== undefined) await writeFile(options.out, json);
  process.stderr.write(`\n${summaryText(summary)}\n`);
  return summary.ok ? 0 : 99;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    say(`failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
