/**
 * The long, fault-injecting history test:
 *
 *     npm run torture -- --minutes N [--sessions S] [--seed X] [--no-control]
 *       [--monotonic-after any-level|monotonic-level] [--history history.full.json]
 *       [--elle history.json] [--elle-levels strong,…]
 *
 * Starts a primary and two replicas of its own (in a temporary folder), two service processes and
 * S client sessions that write and read through either service at every consistency level, while
 * a nemesis cycles faults: replay paused, apply delay, a replica killed and restarted, a replica's
 * connections stalled through a TCP proxy, a replica promoted and the old primary rebuilt as a
 * replica, a service process killed and restarted. Then it heals everything, makes a final strong
 * read, checks the history and prints a summary. Exit code 1 when the checker found an anomaly
 * (0 expected) or the control did not find its anomalies.
 *
 * Monotonic reads are held to every earlier read of the session, the README's promise;
 * `--monotonic-after monotonic-level` holds them only to the session's earlier monotonic reads.
 *
 * `--elle` writes the history in elle-cli's rw-register form, `--elle-levels` keeping only reads at
 * those levels (see docs/verification.md); `--history` writes it whole, as recorded.
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { ANOMALY_KINDS, formatElleJson, toElleRwRegister } from '../src/verify/index.js';
import {
  anomalyExcerpt,
  operationCounts,
  runTorture,
  type CheckedHistory,
} from '../test/support/torture/run.js';
import { positiveOption, progressFor, table } from './support/report.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '1' },
    sessions: { type: 'string', default: '4' },
    seed: { type: 'string', default: '1' },
    elle: { type: 'string' },
    'elle-levels': { type: 'string' },
    history: { type: 'string' },
    'no-control': { type: 'boolean', default: false },
    'monotonic-after': { type: 'string', default: 'any-level' },
  },
});
const minutes = positiveOption('minutes', values.minutes, false);
const sessions = positiveOption('sessions', values.sessions);
const seed = positiveOption('seed', values.seed);
const monotonicAfter = values['monotonic-after'];
if (monotonicAfter !== 'any-level' && monotonicAfter !== 'monotonic-level') {
  process.stderr.write('--monotonic-after is any-level (the default) or monotonic-level\n');
  process.exit(2);
}
const progress = progressFor('torture');

function anomalyTable(checked: CheckedHistory): string {
  return table(
    ['checker', 'assertions', 'anomalies'],
    ANOMALY_KINDS.map((kind) => [
      kind,
      String(checked.result.checks[kind]),
      String(checked.result.anomalyCounts[kind]),
    ]),
  );
}

const result = await runTorture({
  durationMs: minutes * 60_000,
  sessions,
  seed,
  control: !values['no-control'],
  check: { monotonicAfter },
  log: progress,
});

const counts = operationCounts(result.main.history);
const total = Object.values(counts).reduce((sum, c) => sum + c.ok + c.fail + c.info, 0);
const lines = [
  `# Torture run: ${minutes} min, ${sessions} sessions, seed ${seed}, monotonic reads checked against ${monotonicAfter === 'any-level' ? 'every earlier read' : 'earlier monotonic reads'}`,
  '',
  `${total} operations in ${(result.elapsedMs / 1000).toFixed(0)} s (run, heal and final read included).`,
  '',
  table(
    ['operation', 'ok', 'fail', 'info'],
    Object.entries(counts)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([what, c]) => [what, String(c.ok), String(c.fail), String(c.info)]),
  ),
  '',
  `Faults injected: ${Object.values(result.faults).reduce((a, b) => a + b, 0)}`,
  '',
  table(
    ['fault', 'injected'],
    Object.entries(result.faults).map(([kind, n]) => [kind, String(n)]),
  ),
  '',
  `Anomalies: ${ANOMALY_KINDS.reduce((sum, kind) => sum + result.main.result.anomalyCounts[kind], 0)} (0 expected)`,
  '',
  anomalyTable(result.main),
];
for (const anomaly of result.main.result.anomalies.slice(0, 10)) {
  lines.push(
    '',
    `- ${anomaly.kind} at #${anomaly.index} (session ${anomaly.process}): ${anomaly.message}`,
    ...anomalyExcerpt(result.main.history, anomaly),
  );
}

let controlOk = true;
if (result.control !== undefined) {
  const found = result.control.result.anomalyCounts;
  const expected = [
    'read-your-writes',
    'monotonic-reads',
    'bounded-staleness',
    'lost-write',
  ] as const;
  controlOk = expected.every((kind) => found[kind] > 0);
  lines.push(
    '',
    `Control (reads sent as eventual, recorded as stronger, every replica paused): ${controlOk ? 'every checker found its anomaly' : 'A CHECKER MISSED ITS ANOMALY'}`,
    '',
    anomalyTable(result.control),
  );
}
process.stdout.write(`${lines.join('\n')}\n`);

if (values.elle !== undefined) {
  const levels = values['elle-levels']?.split(',').map((level) => level.trim());
  await writeFile(
    values.elle,
    formatElleJson(toElleRwRegister(result.main.history, levels === undefined ? {} : { levels })),
  );
  progress(`wrote the history for elle-cli (rw-register) to ${values.elle}`);
}
if (values.history !== undefined) {
  await writeFile(
    values.history,
    `[${result.main.history.map((op) => JSON.stringify(op)).join(',\n')}]\n`,
  );
  progress(`wrote the full history to ${values.history}`);
}
process.exitCode = result.main.result.valid && controlOk ? 0 : 1;
