import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { LagEstimator } from '../src/routing/lag-estimator.js';
import type { Lsn } from '../src/routing/lsn.js';

/** A plausible wall-clock start, a multiple of every interval used below. */
const T0 = 1_700_000_000_000;
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;

/**
 * A primary that commits every `everyMs` from T0 on, `bytes` of WAL each time, starting at `base`.
 * `at(t)` is its position at time t (a write at t included); `passed(r)` is when it first went
 * past position r, i.e. the commit time of the oldest WAL a replica at r has not replayed.
 */
function steadyPrimary(options: { everyMs: number; bytes: bigint; base: Lsn }): {
  readonly at: (t: number) => Lsn;
  readonly passed: (replayed: Lsn) => number;
} {
  const { everyMs, bytes, base } = options;
  return {
    at: (t) => base + bytes * BigInt(Math.max(0, Math.floor((t - T0) / everyMs))),
    passed: (replayed) =>
      replayed < base ? T0 : T0 + everyMs * (Number((replayed - base) / bytes) + 1),
  };
}

/** Feeds the estimator a sample every `everyMs` in [from, to]; returns the last sample's time. */
function sample(
  estimator: LagEstimator,
  position: (t: number) => Lsn,
  from: number,
  to: number,
  everyMs: number,
): number {
  let t = from;
  for (; t <= to; t += everyMs) estimator.record(position(t), t);
  return t - everyMs;
}

describe('LagEstimator', () => {
  it('knows nothing before the first sample', () => {
    const estimator = new LagEstimator();
    expect(estimator.primaryPosition).toBeUndefined();
    expect(estimator.lagMs(0n, T0)).toBe(0);
    expect(estimator.lagBytes(0n)).toBe(0n);
  });

  it('reports 0 for a caught-up replica of an idle primary, however long it stays idle', () => {
    const estimator = new LagEstimator();
    const primary = steadyPrimary({ everyMs: 20, bytes: 120n, base: 0x3000000n });
    // Some writes, then an hour of silence sampled every second.
    const writesEnd = T0 + 2 * SECOND;
    sample(estimator, primary.at, T0, writesEnd, 100);
    const idle = primary.at(writesEnd);
    const last = sample(estimator, () => idle, writesEnd + SECOND, writesEnd + HOUR, SECOND);
    for (const now of [last, last + MINUTE, last + HOUR, last + 24 * HOUR]) {
      expect(estimator.lagMs(idle, now)).toBe(0);
      expect(estimator.lagMs(idle + 1000n, now)).toBe(0);
      expect(estimator.lagBytes(idle)).toBe(0n);
    }
    // Control: the same history does show lag for a replica one write behind, since that write.
    const oneBehind = idle - 120n;
    expect(estimator.lagMs(oneBehind, last)).toBeGreaterThanOrEqual(last - writesEnd - 50);
    expect(estimator.lagMs(oneBehind, last)).toBeLessThanOrEqual(last - writesEnd + 50);
    expect(estimator.lagBytes(oneBehind)).toBe(120n);
  });

  it('reports lag growing with time for a replica stuck while the primary writes (property)', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 1n, max: 64_000n }),
        fc.integer({ min: 0, max: 99 }),
        // From after the first sample on: before it, nothing says when the primary passed it.
        fc.integer({ min: 100, max: 30 * SECOND }),
        (bytes, phase, stuckAfter) => {
          const estimator = new LagEstimator();
          const primary = steadyPrimary({ everyMs: 20, bytes, base: 0x16000000n });
          const replayed = primary.at(T0 + stuckAfter);
          const passedAt = primary.passed(replayed);
          let t = T0 + phase;
          let previous = -1;
          for (const until of [2 * SECOND, 10 * SECOND, 40 * SECOND]) {
            const end = passedAt + until;
            t = sample(estimator, primary.at, t, end, 100) + 100;
            const now = t - 100 + ((phase * 7) % 100);
            const lag = estimator.lagMs(replayed, now);
            expect(Math.abs(lag - (now - passedAt))).toBeLessThanOrEqual(50);
            expect(lag).toBeGreaterThan(previous);
            previous = lag;
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it('matches a replica trailing steady writes by D ms, within half a sampling interval (property)', () => {
    const delays = fc.oneof(
      fc.constantFrom(100, 1000, 5000),
      fc.integer({ min: 100, max: 10_000 }),
    );
    fc.assert(
      fc.property(
        delays,
        fc.bigInt({ min: 1n, max: 64_000n }),
        fc.integer({ min: 0, max: 99 }),
        fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 99 })),
        (delay, bytes, phase, sinceSample) => {
          const estimator = new LagEstimator();
          const primary = steadyPrimary({ everyMs: 20, bytes, base: 0x5000000n });
          const last = sample(estimator, primary.at, T0 + phase, T0 + 30 * SECOND, 100);
          const now = last + sinceSample;
          // recovery_min_apply_delay = D: the replica has replayed what was committed D ms ago.
          const replayed = primary.at(now - delay);
          const lag = estimator.lagMs(replayed, now);
          const trueLag = now - primary.passed(replayed);
          expect(lag).toBeGreaterThanOrEqual(0);
          expect(lag).toBeLessThanOrEqual(trueLag + 50);
          // WAL committed since the last sample is unknown: a replica less than an interval behind
          // that sample can look caught up. Right at a sample, or two intervals behind, it cannot.
          if (sinceSample === 0 || delay >= 200)
            expect(Math.abs(lag - trueLag)).toBeLessThanOrEqual(50);
          if (delay >= 1000) expect(Math.abs(lag - delay)).toBeLessThanOrEqual(delay * 0.1);
        },
      ),
      { numRuns: 200 },
    );
    // The spot checks the design names: recovery_min_apply_delay of 1 s and 5 s.
    for (const delay of [1000, 5000]) {
      const estimator = new LagEstimator();
      const primary = steadyPrimary({ everyMs: 20, bytes: 200n, base: 0n });
      const last = sample(estimator, primary.at, T0, T0 + 20 * SECOND, 100);
      const lag = estimator.lagMs(primary.at(last - delay), last);
      expect(lag).toBeGreaterThanOrEqual(delay * 0.9);
      expect(lag).toBeLessThanOrEqual(delay * 1.1);
    }
  });

  it('counts bytes of WAL the replica has not replayed, 0 when it is level or ahead (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { minLength: 1, maxLength: 10 }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        (positions, replayed) => {
          const estimator = new LagEstimator();
          positions.forEach((lsn, i) => estimator.record(lsn, T0 + i * 100));
          // Out-of-order samples (a refresh finishing after a newer one) never move it back.
          const primary = positions.reduce((a, b) => (b > a ? b : a));
          expect(estimator.primaryPosition).toBe(primary);
          expect(estimator.lagBytes(replayed)).toBe(replayed >= primary ? 0n : primary - replayed);
          if (replayed >= primary) expect(estimator.lagMs(replayed, T0 + HOUR)).toBe(0);
          else expect(estimator.lagMs(replayed, T0 + HOUR)).toBeGreaterThan(0);
        },
      ),
      { numRuns: 200 },
    );
  });

  describe('with a horizon', () => {
    it('forgets history older than the horizon but still reports at least the horizon', () => {
      const horizonMs = 15 * MINUTE;
      const estimator = new LagEstimator({ horizonMs });
      const primary = steadyPrimary({ everyMs: 20, bytes: 100n, base: 0x1000000n });
      // A replica cut off at the start while the primary writes for an hour.
      const replayed = primary.at(T0);
      const last = sample(estimator, primary.at, T0, T0 + HOUR, SECOND);
      const lag = estimator.lagMs(replayed, last);
      expect(lag).toBeGreaterThanOrEqual(horizonMs);
      expect(lag).toBeLessThanOrEqual(horizonMs + SECOND);
      // Positions inside the horizon keep their exact lag.
      const recent = primary.at(last - 5 * MINUTE);
      expect(Math.abs(estimator.lagMs(recent, last) - 5 * MINUTE)).toBeLessThanOrEqual(SECOND / 2);
    });

    it('keeps reporting a replica cut off before an idle spell longer than the horizon', () => {
      const horizonMs = 15 * MINUTE;
      const estimator = new LagEstimator({ horizonMs });
      // One write at T0 + 50 that the replica never receives, 20 idle minutes, then more writes.
      estimator.record(1000n, T0);
      estimator.record(2000n, T0 + 100);
      const lastIdle = sample(estimator, () => 2000n, T0 + 200, T0 + 20 * MINUTE, SECOND);
      const resumed = T0 + 20 * MINUTE + 100;
      estimator.record(3000n, resumed);
      estimator.record(4000n, resumed + 100);
      const now = resumed + 100;
      expect(estimator.lagMs(1000n, now)).toBeGreaterThanOrEqual(horizonMs);
      expect(estimator.lagMs(1000n, now)).toBeLessThanOrEqual(now - T0);
      // The replica that did receive the first write is behind only by the new writes.
      expect(estimator.lagMs(2000n, now)).toBeLessThanOrEqual(now - lastIdle);
    });

    it('counts a replica behind the very first sample as behind since then', () => {
      const estimator = new LagEstimator();
      // The primary is idle at 5000 from the first sample on; the replica is at 4000.
      sample(estimator, () => 5000n, T0, T0 + 10 * SECOND, 100);
      expect(estimator.lagMs(4000n, T0 + 10 * SECOND)).toBeGreaterThanOrEqual(10 * SECOND);
      expect(estimator.lagMs(4000n, T0 + 60 * SECOND)).toBeGreaterThanOrEqual(60 * SECOND);
      // It writes again: a replica at 4000 is still behind since the first sample at least.
      estimator.record(6000n, T0 + 10 * SECOND + 100);
      expect(estimator.lagMs(4000n, T0 + 11 * SECOND)).toBeGreaterThanOrEqual(11 * SECOND);
      expect(estimator.lagMs(5000n, T0 + 11 * SECOND)).toBeLessThanOrEqual(SECOND);
    });

    interface Sample {
      readonly lsn: Lsn;
      readonly at: number;
    }
    /** A primary sampled at random intervals (some longer than the horizon), sometimes idle. */
    const histories = fc
      .record({
        horizonMs: fc.integer({ min: 200, max: 5000 }),
        start: fc.bigInt({ min: 0n, max: 1n << 40n }),
        steps: fc.array(
          fc.record({
            gap: fc.oneof(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1, max: 12_000 })),
            grow: fc.oneof(fc.constant(0n), fc.bigInt({ min: 1n, max: 5000n })),
          }),
          { minLength: 1, maxLength: 60 },
        ),
      })
      .map(({ horizonMs, start, steps }) => {
        const samples: Sample[] = [{ lsn: start, at: T0 }];
        for (const { gap, grow } of steps) {
          const previous = samples[samples.length - 1]!;
          samples.push({ lsn: previous.lsn + grow, at: previous.at + gap });
        }
        return { horizonMs, samples };
      });
    /** Replay positions at, between, just off and below the sampled ones. */
    const replayPositions = (samples: readonly Sample[]): fc.Arbitrary<Lsn> => {
      const first = samples[0]!.lsn;
      const last = samples[samples.length - 1]!.lsn;
      return fc.oneof(
        fc.constantFrom(...samples.map((s) => s.lsn)),
        fc.constantFrom(...samples.map((s) => s.lsn)).map((lsn) => lsn + 1n),
        fc.constantFrom(...samples.map((s) => s.lsn)).map((lsn) => (lsn > 0n ? lsn - 1n : 0n)),
        fc.bigInt({ min: first > 1000n ? first - 1000n : 0n, max: last + 10n }),
      );
    };
    const scenarios = histories.chain(({ horizonMs, samples }) =>
      fc.record({
        horizonMs: fc.constant(horizonMs),
        samples: fc.constant(samples),
        replayed: fc.tuple(replayPositions(samples), replayPositions(samples)),
        after: fc.integer({ min: 0, max: 10_000 }),
      }),
    );

    it('never under-reports what the samples prove (up to the horizon) nor over-reports (property)', () => {
      fc.assert(
        fc.property(scenarios, ({ horizonMs, samples, replayed: [a, b], after }) => {
          const estimator = new LagEstimator({ horizonMs });
          for (const s of samples) estimator.record(s.lsn, s.at);
          const now = samples[samples.length - 1]!.at + after;
          for (const replayed of [a, b]) {
            const lag = estimator.lagMs(replayed, now);
            // The primary went past `replayed` after the last sample at or below it and by the
            // first sample above it.
            const above = samples.findIndex((s) => s.lsn > replayed);
            if (above === -1) {
              expect(lag).toBe(0);
              continue;
            }
            const passedBy = samples[above]!.at;
            expect(lag).toBeGreaterThanOrEqual(Math.min(now - passedBy, horizonMs));
            if (above > 0) expect(lag).toBeLessThanOrEqual(now - samples[above - 1]!.at);
          }
        }),
        { numRuns: 200 },
      );
    });

    it('proves a replica fresh as of the newest sample it has replayed, never later (property)', () => {
      fc.assert(
        fc.property(
          scenarios,
          fc.array(fc.integer({ min: 0, max: 50 }), { minLength: 61, maxLength: 61 }),
          fc.boolean(),
          ({ horizonMs, samples, replayed: [a, b] }, latencies, keepAll) => {
            // Each sample was asked for some time before its answer arrived.
            const sent = samples.map((s, i) => ({ ...s, sentAt: s.at - latencies[i]! }));
            const estimator = new LagEstimator({ horizonMs: keepAll ? 1e12 : horizonMs });
            for (const s of sent) estimator.record(s.lsn, s.at, s.sentAt);
            for (const replayed of [a, b]) {
              const proven = estimator.provenAsOf(replayed);
              // What the samples prove: the latest request among those at or below `replayed`.
              const below = sent.filter((s) => s.lsn <= replayed).map((s) => s.sentAt);
              const truth = below.length === 0 ? undefined : Math.max(...below);
              if (truth === undefined) expect(proven).toBeUndefined();
              // Never later than proven (a later time would let a staler replica serve a read).
              if (proven !== undefined) expect(proven).toBeLessThanOrEqual(truth!);
              // With the whole history kept and requests in order, exactly what is proven.
              const inOrder = sent.every((s, i) => i === 0 || s.sentAt >= sent[i - 1]!.sentAt);
              if (keepAll && inOrder) expect(proven).toBe(truth);
            }
          },
        ),
        { numRuns: 300 },
      );
    });

    it('reports more lag for a further-behind replica and for a later time (property)', () => {
      fc.assert(
        fc.property(scenarios, ({ horizonMs, samples, replayed: [a, b], after }) => {
          const estimator = new LagEstimator({ horizonMs });
          for (const s of samples) estimator.record(s.lsn, s.at);
          const now = samples[samples.length - 1]!.at + after;
          const [behind, ahead] = a <= b ? [a, b] : [b, a];
          expect(estimator.lagMs(behind, now)).toBeGreaterThanOrEqual(estimator.lagMs(ahead, now));
          expect(estimator.lagMs(behind, now + 1000)).toBeGreaterThanOrEqual(
            estimator.lagMs(behind, now),
          );
        }),
        { numRuns: 200 },
      );
    });
  });
});
