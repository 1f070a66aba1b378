import { afterAll, describe, expect, it } from 'vitest';

import { ANOMALY_KINDS, type CheckResult, type HistoryOp } from '../src/verify/index.js';
import { killSpawned } from './support/process.js';
import { FAULT_KINDS } from './support/torture/nemesis.js';
import { anomalyExcerpt, runTorture, type TortureResult } from './support/torture/run.js';

/** Every anomaly found, with the history around it, for the failure message. */
function explain(history: readonly HistoryOp[], result: CheckResult): string {
  return result.anomalies
    .slice(0, 5)
    .map((anomaly) =>
      [`${anomaly.kind}: ${anomaly.message}`, ...anomalyExcerpt(history, anomaly)].join('\n'),
    )
    .join('\n\n');
}

/**
 * The short torture run (`npm run torture` is the long one): four sessions through two service
 * processes, on a stack of its own, while the nemesis goes once through every fault, the failover
 * included; then the control, where the checkers must find what they look for.
 */
describe('torture: sessions at every level under faults', () => {
  let run: TortureResult;

  afterAll(async () => {
    await killSpawned();
  });

  it('finds no anomaly in a history with every fault kind in it', async () => {
    run = await runTorture({
      durationMs: 15_000,
      faultHoldMs: 2000,
      faultGapMs: 500,
      control: true,
      seed: 7,
    });
    const { history, result } = run.main;
    expect(result.anomalyCounts, explain(history, result)).toEqual(
      Object.fromEntries(ANOMALY_KINDS.map((kind) => [kind, 0])),
    );
    // A checker that judged nothing proves nothing.
    for (const kind of ANOMALY_KINDS) expect(result.checks[kind], kind).toBeGreaterThan(0);
    for (const kind of FAULT_KINDS) expect(run.faults[kind], kind).toBeGreaterThan(0);
    const final = history.filter((op) => op.process !== 'nemesis' && op.f === 'read' && op.final);
    expect(final.at(-1)?.type).toBe('ok');
    // Faults showed: some operations failed or ended unknown, some reads were served by replicas.
    const ends = history.filter((op) => op.process !== 'nemesis' && op.type !== 'invoke');
    expect(ends.some((op) => op.type !== 'ok')).toBe(true);
    expect(
      ends.some((op) => op.type === 'ok' && op.f === 'read' && op.servedBy !== 'primary'),
    ).toBe(true);
  }, 300_000);

  it('control: the same checkers find the anomalies of reads sent as eventual to paused replicas', () => {
    const control = run.control;
    expect(control).toBeDefined();
    const counts = control!.result.anomalyCounts;
    expect(counts['read-your-writes']).toBeGreaterThan(0);
    expect(counts['monotonic-reads']).toBeGreaterThan(0);
    expect(counts['bounded-staleness']).toBeGreaterThan(0);
    expect(counts['lost-write']).toBeGreaterThan(0);
  });
});
