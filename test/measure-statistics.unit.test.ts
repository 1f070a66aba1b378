import { describe, expect, it } from 'vitest';

import {
  ALL_REPLICAS,
  buildReport,
  formatSummary,
  levelCosts,
  percentile,
  timeBehind,
  visibilityCurves,
  type ReadTrial,
  type VisibilityTime,
} from '../src/measure/index.js';
import { parseDuration } from '../src/cli/measure-command.js';

const trial = (replica: string, delayMs: number, visible: boolean): ReadTrial => ({
  replica,
  delayMs,
  atMs: 0,
  visible,
});

const seen = (
  replica: string,
  staleAtFirstRead: boolean,
  visibleAfterMs?: number,
): VisibilityTime => ({
  replica,
  atMs: 0,
  staleAtFirstRead,
  visibleAfterMs,
});

describe('visibilityCurves', () => {
  it('gives the stale share per replica and delay, with counts, and pools all replicas last', () => {
    const trials = [
      trial('r1', 0, false),
      trial('r1', 0, false),
      trial('r1', 0, true),
      trial('r1', 0, true),
      trial('r1', 5, true),
      trial('r2', 0, false),
      trial('r2', 5, false),
      trial('r2', 5, true),
    ];
    const curves = visibilityCurves(trials, ['r1', 'r2'], [0, 5, 10]);
    expect(curves.map((curve) => curve.replica)).toEqual(['r1', 'r2', ALL_REPLICAS]);
    expect(curves[0]?.points).toEqual([
      { delayMs: 0, reads: 4, stale: 2, staleShare: 0.5 },
      { delayMs: 5, reads: 1, stale: 0, staleShare: 0 },
      { delayMs: 10, reads: 0, stale: 0, staleShare: undefined },
    ]);
    expect(curves[1]?.points[1]).toEqual({ delayMs: 5, reads: 2, stale: 1, staleShare: 0.5 });
    expect(curves[2]?.points[0]).toEqual({ delayMs: 0, reads: 5, stale: 3, staleShare: 0.6 });
  });
});

describe('percentile', () => {
  it('uses the nearest rank and is undefined for nothing', () => {
    expect(percentile([4, 1, 3, 2], 50)).toBe(2);
    expect(percentile([4, 1, 3, 2], 99)).toBe(4);
    expect(percentile([4, 1, 3, 2], 0)).toBe(1);
    expect(percentile([], 50)).toBeUndefined();
  });
});

describe('levelCosts', () => {
  it('prices read-your-writes waits and fallbacks, eventual staleness and strong primary reads', () => {
    const rows = [
      seen('r1', false, 0.3),
      seen('r1', false, 0.4),
      seen('r1', true, 2),
      seen('r1', true, 8),
      seen('r1', true, 1500), // past the 1 s budget: falls back
      seen('r2', true, undefined), // never showed within the cap: falls back
      seen('r2', false, 0.2),
      seen('r2', false, 0.2),
    ];
    const costs = levelCosts(rows, 1000);
    expect(costs.reads).toBe(8);
    expect(costs.readYourWrites.waited).toBe(4);
    expect(costs.readYourWrites.waitedShare).toBe(0.5);
    expect(costs.readYourWrites.fallbacks).toBe(2);
    expect(costs.readYourWrites.fallbackShare).toBe(0.25);
    // Waits: 2, 8, 1000 (budget), 1000 (budget).
    expect(costs.readYourWrites.waitP50Ms).toBe(8);
    expect(costs.readYourWrites.waitP99Ms).toBe(1000);
    expect(costs.eventual).toEqual({ stale: 4, staleShare: 0.5 });
    expect(costs.strong).toEqual({ primaryReads: 8, primaryShare: 1 });
  });

  it('has no shares without reads', () => {
    const costs = levelCosts([], 1000);
    expect(costs.readYourWrites.waitedShare).toBeUndefined();
    expect(costs.eventual.staleShare).toBeUndefined();
  });
});

describe('timeBehind', () => {
  it('summarizes commit-to-visible per replica and counts writes that never showed', () => {
    const rows = [seen('r1', false, 1), seen('r1', true, 3), seen('r1', true, undefined)];
    const [r1, all] = timeBehind(rows, ['r1']);
    expect(r1).toEqual({
      replica: 'r1',
      writes: 3,
      p50Ms: 1,
      p99Ms: 3,
      maxMs: 3,
      neverVisible: 1,
    });
    expect(all?.replica).toBe(ALL_REPLICAS);
  });
});

describe('formatSummary', () => {
  it('prints the curve with counts and the cost of each level', () => {
    const report = buildReport(
      {
        replicas: ['r1'],
        delaysMs: [0, 10],
        durationMs: 2000,
        writes: 4,
        trials: [trial('r1', 0, false), trial('r1', 0, true), trial('r1', 10, true)],
        visibility: [seen('r1', true, 2), seen('r1', false, 0.5)],
        byteLag: [{ replica: 'r1', atMs: 10, bytes: 120 }],
      },
      { primary: 'db:5432', waitBudgetMs: 1000 },
    );
    const text = formatSummary(report);
    expect(text).toContain('4 writes in 2.0 s');
    expect(text).toMatch(/r1\s+50\.0% 1\/2\s+0\.0% 0\/1/);
    expect(text).toContain('read-your-writes (wait up to 1000 ms): 50.0% wait');
    expect(text).toContain('eventual: 50.0% stale (1 reads)');
    expect(text).toContain('strong: 100% on the primary (2 reads)');
    expect(text).toContain('bytes p50 120 max 120');
  });
});

describe('parseDuration', () => {
  it('reads ms, s, m and bare seconds', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('2m')).toBe(120_000);
    expect(parseDuration('3')).toBe(3000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('soon')).toBeUndefined();
    expect(parseDuration('-1s')).toBeUndefined();
  });
});
