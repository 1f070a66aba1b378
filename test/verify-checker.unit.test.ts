import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  ANOMALY_KINDS,
  checkHistory,
  formatElleJson,
  HistoryRecorder,
  toElleRwRegister,
  type AnomalyKind,
  type Observation,
} from '../src/verify/index.js';

/** A hand-made history: `at(t)` sets the clock, `write`/`read` record a whole operation. */
function builder() {
  let now = 0;
  const history = new HistoryRecorder(() => now);
  return {
    history,
    at(time: number) {
      now = time;
      return this;
    },
    /** A write by `process` of `value` to `key`, acknowledged at `version` (or ending as given). */
    write(
      process: number,
      key: number,
      value: number,
      end: number | 'fail' | 'info',
      duration = 1,
    ) {
      const done = history.invoke(process, { f: 'write', key, value });
      now += duration;
      done(
        typeof end === 'number' ? { type: 'ok', version: end } : { type: end, error: 'timeout' },
      );
      return this;
    },
    /** A read by `process` at `level` that saw `seen` (register → [value, version]). */
    read(
      process: number,
      level: string,
      seen: Record<number, [number | null, number]>,
      options: { final?: boolean; duration?: number } = {},
    ) {
      const done = history.invoke(process, {
        f: 'read',
        level,
        ...(options.final === true ? { final: true } : {}),
      });
      now += options.duration ?? 1;
      const value: Record<number, Observation> = {};
      for (const [key, [v, version]] of Object.entries(seen))
        value[Number(key)] = { value: v, version };
      done({ type: 'ok', value });
      return this;
    },
    check(options?: Parameters<typeof checkHistory>[1]) {
      return checkHistory(history.ops, options);
    },
  };
}

function only(result: ReturnType<typeof checkHistory>): Partial<Record<AnomalyKind, number>> {
  return Object.fromEntries(
    ANOMALY_KINDS.filter((kind) => result.anomalyCounts[kind] > 0).map((kind) => [
      kind,
      result.anomalyCounts[kind],
    ]),
  );
}

/** Two registers, both at their initial value (version 1) unless said otherwise. */
const initial = { 0: [null, 1], 1: [null, 1] } as Record<number, [number | null, number]>;

describe('checkHistory: clean histories pass', () => {
  it('accepts sessions that write, read their writes, and read monotonically', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .read(0, 'read-your-writes', { 0: [10, 2], 1: [null, 1] })
      .write(1, 1, 11, 2)
      .read(1, 'monotonic', { 0: [10, 2], 1: [11, 2] })
      .read(1, 'monotonic', { 0: [10, 2], 1: [11, 2] })
      .read(0, 'eventual', initial) // eventual may be stale
      .at(100)
      .read(2, 'bounded-staleness=50', { 0: [10, 2], 1: [11, 2] })
      .read(2, 'strong', { 0: [10, 2], 1: [11, 2] })
      .read(3, 'strong', { 0: [10, 2], 1: [11, 2] }, { final: true });
    const result = h.check();
    expect(only(result)).toEqual({});
    expect(result.valid).toBe(true);
    for (const kind of ANOMALY_KINDS) expect(result.checks[kind]).toBeGreaterThan(0);
  });

  it('accepts reads that see a prefix of a session writes and what its writers had read', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .write(0, 1, 11, 2)
      .read(1, 'eventual', { 0: [10, 2], 1: [null, 1] }) // the first write without the second
      .read(1, 'eventual', { 0: [10, 2], 1: [11, 2] })
      .write(1, 0, 12, 3) // after reading 10 and 11
      .read(2, 'eventual', { 0: [12, 3], 1: [11, 2] })
      .read(2, 'eventual', { 0: [10, 2], 1: [11, 2] }); // eventual: back in time is allowed
    const result = h.check();
    expect(only(result)).toEqual({});
    expect(result.checks['monotonic-writes']).toBeGreaterThan(0);
    expect(result.checks['writes-follow-reads']).toBeGreaterThan(0);
  });

  it('lets a bounded read miss a write acknowledged within the bound', () => {
    const h = builder()
      .at(0)
      .write(0, 0, 10, 2) // acknowledged at 1
      .at(40)
      .read(1, 'bounded-staleness=50', initial);
    expect(only(h.check())).toEqual({});
  });

  it('never requires an info write to be seen, but takes it as happened once seen', () => {
    const h = builder()
      .write(0, 0, 10, 'info')
      .read(0, 'read-your-writes', initial)
      .read(1, 'strong', initial)
      .read(1, 'monotonic', { 0: [10, 2], 1: [null, 1] })
      .read(2, 'strong', { 0: [10, 2], 1: [null, 1] }, { final: true });
    expect(only(h.check())).toEqual({});
  });

  it('does not hold read-your-writes reads to other sessions writes', () => {
    const h = builder().write(0, 0, 10, 2).read(1, 'read-your-writes', initial);
    expect(only(h.check())).toEqual({});
  });
});

describe('checkHistory: each anomaly is found (the checker controls)', () => {
  it('read-your-writes: a session misses its own acknowledged write', () => {
    const result = builder().write(0, 0, 10, 2).read(0, 'read-your-writes', initial).check();
    expect(only(result)).toEqual({ 'read-your-writes': 1 });
    expect(result.anomalies[0]).toMatchObject({ kind: 'read-your-writes', process: 0, key: 0 });
  });

  it('read-your-writes: a strong or monotonic read is held to it too, eventual is not', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .read(0, 'monotonic', initial)
      .read(0, 'strong', initial)
      .read(0, 'eventual', initial)
      .read(0, 'bounded-staleness=100000', initial);
    expect(h.check().anomalyCounts['read-your-writes']).toBe(2);
  });

  it('monotonic-reads: a monotonic read goes back in time', () => {
    const h = builder()
      .write(1, 0, 10, 2)
      .read(0, 'monotonic', { 0: [10, 2], 1: [null, 1] })
      .read(0, 'monotonic', initial);
    expect(only(h.check())).toEqual({ 'monotonic-reads': 1 });
  });

  it('monotonic-reads: by default a read at another level counts as seen', () => {
    const h = builder()
      .write(1, 0, 10, 2)
      .read(0, 'eventual', { 0: [10, 2], 1: [null, 1] })
      .read(0, 'monotonic', initial);
    expect(only(h.check())).toEqual({ 'monotonic-reads': 1 });
    expect(only(h.check({ monotonicAfter: 'monotonic-level' }))).toEqual({});
  });

  it('monotonic-writes: a read sees a session write but not the one it acknowledged before', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .write(0, 1, 11, 2)
      .read(1, 'eventual', { 0: [null, 1], 1: [11, 2] });
    expect(only(h.check())).toEqual({ 'monotonic-writes': 1 });
  });

  it('monotonic-writes: two writes of one register applied out of order', () => {
    const h = builder()
      .write(0, 0, 10, 3)
      .write(0, 0, 11, 2)
      .read(1, 'eventual', { 0: [11, 2], 1: [null, 1] });
    expect(only(h.check())).toEqual({ 'monotonic-writes': 1 });
  });

  it('monotonic-writes: an info write is not a predecessor', () => {
    const h = builder()
      .write(0, 0, 10, 'info')
      .write(0, 1, 11, 2)
      .read(1, 'eventual', { 0: [null, 1], 1: [11, 2] });
    expect(only(h.check())).toEqual({});
  });

  it('writes-follow-reads: a read sees a write but not what its writer had read first', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .read(1, 'eventual', { 0: [10, 2], 1: [null, 1] })
      .write(1, 1, 11, 2)
      .read(2, 'eventual', { 0: [null, 1], 1: [11, 2] });
    expect(only(h.check())).toEqual({ 'writes-follow-reads': 1 });
  });

  it('writes-follow-reads: only reads completed before the write count', () => {
    const h = builder()
      .write(1, 1, 11, 2)
      .read(1, 'eventual', { 0: [10, 2], 1: [11, 2] })
      .write(0, 0, 10, 2)
      .read(2, 'eventual', { 0: [null, 1], 1: [11, 2] });
    // Session 1 read register 0 only after writing 11: its write does not depend on that read.
    expect(h.check().anomalyCounts['writes-follow-reads']).toBe(0);
  });

  it('bounded-staleness: a read misses a write acknowledged longer ago than the bound', () => {
    const h = builder().at(0).write(0, 0, 10, 2).at(100).read(1, 'bounded-staleness=50', initial);
    const result = h.check();
    expect(only(result)).toEqual({ 'bounded-staleness': 1 });
    expect(result.anomalies[0]?.message).toMatch(/bounded-staleness=50/);
  });

  it('bounded-staleness: a strong read misses a write acknowledged before it started', () => {
    const h = builder().write(0, 0, 10, 2).read(1, 'strong', initial);
    expect(only(h.check())).toEqual({ 'bounded-staleness': 1 });
  });

  it('lost-write: the final read misses an acknowledged write', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .write(0, 0, 12, 3)
      .read(1, 'strong', { 0: [10, 2], 1: [null, 1] }, { final: true });
    expect(only(h.check())).toEqual({ 'lost-write': 1 });
  });

  it('lost-write: one version of a register held two values', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .read(1, 'eventual', { 0: [13, 2], 1: [null, 1] })
      .write(2, 0, 13, 'info');
    expect(only(h.check())).toEqual({ 'lost-write': 1 });
  });

  it('aborted-read: a read sees a failed write or a value nobody wrote', () => {
    const h = builder()
      .write(0, 0, 10, 'fail')
      .read(1, 'eventual', { 0: [10, 2], 1: [99, 2] });
    expect(only(h.check())).toEqual({ 'aborted-read': 2 });
  });

  it('a history that ends with an operation in flight treats it as info', () => {
    const h = builder();
    h.history.invoke(0, { f: 'write', key: 0, value: 10 });
    h.read(1, 'strong', { 0: [10, 2], 1: [null, 1] });
    expect(only(h.check())).toEqual({});
  });
});

describe('toElleRwRegister', () => {
  it('writes elle-cli rw-register transactions, one per line, and renumbers after info', () => {
    const h = builder()
      .write(0, 0, 10, 'info')
      .read(0, 'eventual', { 0: [10, 2] })
      .write(1, 1, 11, 2);
    h.history.nemesis('pause-replay', 'inject', 'replica1');
    const ops = toElleRwRegister(h.history.ops);
    expect(ops.map((op) => [op.type, op.process, op.value])).toEqual([
      ['invoke', 0, [['w', 0, 10]]],
      ['info', 0, [['w', 0, 10]]],
      [
        'invoke',
        2,
        [
          ['r', 0, null],
          ['r', 1, null],
        ],
      ],
      [
        'ok',
        2,
        [
          ['r', 0, 10],
          ['r', 1, null],
        ],
      ],
      ['invoke', 1, [['w', 1, 11]]],
      ['ok', 1, [['w', 1, 11]]],
    ]);
    expect(ops.map((op) => op.index)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(ops.every((op) => op.f === 'txn' && Number.isInteger(op.time))).toBe(true);
    const text = formatElleJson(ops);
    expect(text.split('\n')).toHaveLength(ops.length + 1);
    expect(JSON.parse(text)).toEqual(ops);
  });

  it('exports a history as long as a 10-minute run (about 270,000 operations)', () => {
    const h = builder();
    for (let i = 0; i < 135_000; i++) h.write(i % 4, i % 3, i, 2);
    const ops = toElleRwRegister(h.history.ops);
    expect(ops).toHaveLength(270_000);
    expect(ops.at(-1)).toMatchObject({ type: 'ok', process: 3 });
  });

  it('keeps only the reads at the levels asked for, and every write', () => {
    const h = builder()
      .write(0, 0, 10, 2)
      .read(0, 'eventual', initial)
      .read(1, 'strong', { 0: [10, 2], 1: [null, 1] });
    const ops = toElleRwRegister(h.history.ops, { levels: ['strong'] });
    expect(ops.map((op) => [op.type, op.process, op.value[0]])).toEqual([
      ['invoke', 0, ['w', 0, 10]],
      ['ok', 0, ['w', 0, 10]],
      ['invoke', 1, ['r', 0, null]],
      ['ok', 1, ['r', 0, 10]],
    ]);
    expect(ops.map((op) => op.index)).toEqual([0, 1, 2, 3]);
  });
});

describe('checkHistory: no false alarms (property)', () => {
  /**
   * A model of what replikit promises: one ordered log of writes (the primary's WAL), every read
   * served from a prefix of it, chosen as freely as its level allows. Whatever the choices, the
   * checker must find nothing.
   */
  const step = fc.record({
    process: fc.integer({ min: 0, max: 2 }),
    write: fc.boolean(),
    key: fc.integer({ min: 0, max: 2 }),
    level: fc.constantFrom(
      'strong',
      'read-your-writes',
      'monotonic',
      'bounded-staleness=3',
      'eventual',
    ),
    lag: fc.double({ min: 0, max: 1, noNaN: true }),
    /** A write's end: acknowledged, refused, or unknown to the client and applied or not. */
    outcome: fc.constantFrom('ok', 'ok', 'ok', 'fail', 'info-applied', 'info-lost'),
  });

  it('accepts every history served from prefixes the levels allow', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
        const h = builder();
        const log: { key: number; value: number; version: number; ackedAt: number }[] = [];
        const lastWrite = new Map<number, number>();
        const maxSeen = new Map<number, number>();
        let now = 0;
        const observe = (prefix: number): Record<number, [number | null, number]> => {
          const seen: Record<number, [number | null, number]> = {};
          for (let key = 0; key <= 2; key++) seen[key] = [null, 1];
          for (const entry of log.slice(0, prefix)) seen[entry.key] = [entry.value, entry.version];
          return seen;
        };
        for (const [i, s] of steps.entries()) {
          h.at(now);
          if (s.write) {
            const version = 1 + log.filter((entry) => entry.key === s.key).length + 1;
            h.write(
              s.process,
              s.key,
              100 + i,
              s.outcome === 'ok' ? version : s.outcome === 'fail' ? 'fail' : 'info',
            );
            if (s.outcome === 'ok' || s.outcome === 'info-applied')
              log.push({ key: s.key, value: 100 + i, version, ackedAt: now + 1 });
            if (s.outcome === 'ok') lastWrite.set(s.process, log.length);
          } else {
            const bound = /=(\d+)$/.exec(s.level);
            const floor =
              s.level === 'strong'
                ? log.length
                : s.level === 'read-your-writes'
                  ? (lastWrite.get(s.process) ?? 0)
                  : s.level === 'monotonic'
                    ? Math.max(lastWrite.get(s.process) ?? 0, maxSeen.get(s.process) ?? 0)
                    : bound !== null
                      ? log.filter((entry) => entry.ackedAt <= now - Number(bound[1])).length
                      : 0;
            const prefix = floor + Math.floor(s.lag * (log.length - floor + 0.999));
            h.read(s.process, s.level, observe(prefix));
            maxSeen.set(s.process, Math.max(maxSeen.get(s.process) ?? 0, prefix));
          }
          now += 1;
        }
        h.at(now).read(3, 'strong', observe(log.length), { final: true });
        const result = h.check();
        expect(result.anomalies).toEqual([]);
      }),
    );
  });
});
