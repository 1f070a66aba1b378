import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import type { Lsn } from '../src/routing/lsn.js';
import { LsnWaiter } from '../src/routing/lsn-waiter.js';

/** Lets every settled promise run its callbacks (no timers, no I/O). */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A wait whose outcome can be read synchronously after {@link settle}. */
function track(promise: Promise<string | undefined>): {
  readonly settled: () => boolean;
  readonly value: () => string | undefined;
} {
  let done = false;
  let result: string | undefined;
  void promise.then((value) => {
    done = true;
    result = value;
  });
  return { settled: () => done, value: () => result };
}

const never = new AbortController().signal;

describe('LsnWaiter', () => {
  it('wakes a waiter with the replica that reached its position, not before', async () => {
    const waiter = new LsnWaiter();
    const wait = track(waiter.wait(100n, never));
    expect(waiter.size).toBe(1);

    expect(waiter.advance('replica-1', 99n)).toBe(0);
    await settle();
    expect(wait.settled()).toBe(false);

    expect(waiter.advance('replica-2', 100n)).toBe(1);
    await settle();
    expect(wait.settled()).toBe(true);
    expect(wait.value()).toBe('replica-2');
    expect(waiter.size).toBe(0);

    expect(waiter.advance('replica-1', 1000n)).toBe(0);
    await settle();
    expect(wait.value()).toBe('replica-2');
  });

  it('wakes every waiter at or below a position at once and returns how many woke', async () => {
    const waiter = new LsnWaiter();
    const waits = [30n, 10n, 20n, 10n, 40n].map((lsn) => track(waiter.wait(lsn, never)));
    expect(waiter.lowest).toBe(10n);

    expect(waiter.advance('a', 20n)).toBe(3);
    expect(waiter.size).toBe(2);
    expect(waiter.lowest).toBe(30n);
    await settle();
    expect(waits.map((w) => w.value())).toEqual([undefined, 'a', 'a', 'a', undefined]);
    expect(waits.map((w) => w.settled())).toEqual([false, true, true, true, false]);

    expect(waiter.advance('b', 2n ** 64n - 1n)).toBe(2);
    await settle();
    expect(waits.map((w) => w.value())).toEqual(['b', 'a', 'a', 'a', 'b']);
    expect(waiter.size).toBe(0);
    expect(waiter.lowest).toBeUndefined();
  });

  it('resolves undefined on abort and forgets the waiter', async () => {
    const waiter = new LsnWaiter();
    const controller = new AbortController();
    const aborted = track(waiter.wait(10n, controller.signal));
    const kept = track(waiter.wait(20n, never));
    expect(waiter.size).toBe(2);
    expect(waiter.lowest).toBe(10n);

    controller.abort();
    expect(waiter.size).toBe(1);
    expect(waiter.lowest).toBe(20n);
    await settle();
    expect(aborted.settled()).toBe(true);
    expect(aborted.value()).toBeUndefined();

    // The aborted waiter is not counted, nor woken, by a later advance.
    expect(waiter.advance('a', 100n)).toBe(1);
    await settle();
    expect(aborted.value()).toBeUndefined();
    expect(kept.value()).toBe('a');
  });

  it('resolves undefined at once, without waiting, when the signal has already aborted', async () => {
    const waiter = new LsnWaiter();
    const wait = track(waiter.wait(10n, AbortSignal.abort()));
    expect(waiter.size).toBe(0);
    expect(waiter.lowest).toBeUndefined();
    await settle();
    expect(wait.settled()).toBe(true);
    expect(wait.value()).toBeUndefined();
    expect(waiter.advance('a', 10n)).toBe(0);
  });

  it('keeps the replica that woke a waiter when its signal aborts afterwards', async () => {
    const waiter = new LsnWaiter();
    const controller = new AbortController();
    const first = track(waiter.wait(10n, controller.signal));
    const other = track(waiter.wait(50n, never));
    waiter.advance('a', 10n);
    controller.abort();
    expect(waiter.size).toBe(1);
    await settle();
    expect(first.value()).toBe('a');
    expect(other.settled()).toBe(false);
  });

  type Step =
    | { readonly kind: 'wait'; readonly lsn: Lsn }
    | { readonly kind: 'advance'; readonly replica: string; readonly position: Lsn }
    | { readonly kind: 'abort'; readonly which: number };

  // Positions from a small range, so that waiters share positions and advances hit them exactly.
  const position = fc.oneof(
    fc.bigInt({ min: 0n, max: 40n }),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  );
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 4, arbitrary: position.map((lsn) => ({ kind: 'wait' as const, lsn })) },
    {
      weight: 3,
      arbitrary: fc
        .tuple(fc.constantFrom('r1', 'r2', 'r3'), position)
        .map(([replica, p]) => ({ kind: 'advance' as const, replica, position: p })),
    },
    { weight: 1, arbitrary: fc.nat().map((which) => ({ kind: 'abort' as const, which })) },
  );

  it('wakes each waiter exactly once, by the first later advance that reaches it (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
        const waiter = new LsnWaiter();
        interface Model {
          readonly lsn: Lsn;
          readonly controller: AbortController;
          readonly wait: ReturnType<typeof track>;
          woken: string | undefined;
          aborted: boolean;
        }
        const models: Model[] = [];
        const pending = (): Model[] => models.filter((m) => m.woken === undefined && !m.aborted);

        for (const s of steps) {
          if (s.kind === 'wait') {
            const controller = new AbortController();
            const wait = track(waiter.wait(s.lsn, controller.signal));
            models.push({ lsn: s.lsn, controller, wait, woken: undefined, aborted: false });
          } else if (s.kind === 'advance') {
            const due = pending().filter((m) => m.lsn <= s.position);
            expect(waiter.advance(s.replica, s.position)).toBe(due.length);
            for (const m of due) m.woken = s.replica;
          } else {
            const open = pending();
            const target = open[s.which % Math.max(1, open.length)];
            if (target !== undefined) {
              target.controller.abort();
              target.aborted = true;
            }
          }
          const open = pending();
          expect(waiter.size).toBe(open.length);
          expect(waiter.lowest).toBe(
            open.length === 0
              ? undefined
              : open.reduce((min, m) => (m.lsn < min ? m.lsn : min), open[0]!.lsn),
          );
          await settle();
          for (const m of models) {
            // Settled exactly when woken or aborted, with the replica that woke it.
            expect(m.wait.settled()).toBe(m.woken !== undefined || m.aborted);
            expect(m.wait.value()).toBe(m.woken);
          }
        }
      }),
      { numRuns: 150 },
    );
  });
});
