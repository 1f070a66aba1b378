import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { SagaRecord } from '../src/saga/index.js';
import { SettledSagas } from '../src/saga/settled-sagas.js';

const record = (id: string): SagaRecord => ({ id }) as unknown as SagaRecord;

describe('SettledSagas', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('wakes a waiter when its saga settles, and keeps the final state', async () => {
    const settled = new SettledSagas();
    const wakeup = settled.wakeup('a', 10_000);
    let woke = false;
    void wakeup.promise.then(() => (woke = true));
    settled.settle('b', record('b'));
    await vi.advanceTimersByTimeAsync(1);
    expect(woke).toBe(false);
    settled.settle('a', record('a'));
    await vi.advanceTimersByTimeAsync(0);
    expect(woke).toBe(true);
    expect(settled.get('a')?.id).toBe('a');
  });

  it('wakes on the timeout or the signal, and forgets what runs again', async () => {
    const settled = new SettledSagas();
    let timedOut = false;
    void settled.wakeup('a', 500).promise.then(() => (timedOut = true));
    await vi.advanceTimersByTimeAsync(499);
    expect(timedOut).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(timedOut).toBe(true);

    const controller = new AbortController();
    let aborted = false;
    void settled.wakeup('a', 10_000, controller.signal).promise.then(() => (aborted = true));
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(aborted).toBe(true);

    settled.settle('a', record('a'));
    settled.forget('a');
    expect(settled.get('a')).toBeUndefined();
  });

  it('drops final states past their time or beyond the cap, oldest first', async () => {
    const settled = new SettledSagas({ keepMs: 1000, max: 2 });
    settled.settle('a', record('a'));
    await vi.advanceTimersByTimeAsync(600);
    settled.settle('b', record('b'));
    settled.settle('c', record('c'));
    expect(settled.get('a')).toBeUndefined(); // over the cap
    expect(settled.get('b')?.id).toBe('b');
    await vi.advanceTimersByTimeAsync(1001);
    settled.settle('d', record('d'));
    expect(settled.get('b')).toBeUndefined(); // expired
    expect(settled.get('d')?.id).toBe('d');
  });
});
