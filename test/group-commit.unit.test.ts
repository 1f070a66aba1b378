import { describe, expect, it } from 'vitest';

import { GroupCommit } from '../src/db/group-commit.js';

class Refused extends Error {}

/**
 * A flush that writes all of a batch or none of it, like one statement: a batch holding a
 * negative number is refused as a whole.
 */
function recordingFlush() {
  const flushed: number[][] = [];
  const flush = (items: readonly number[]): Promise<number[]> => {
    flushed.push([...items]);
    return items.some((item) => item < 0)
      ? Promise.reject(new Refused(`refused ${items.find((item) => item < 0)}`))
      : Promise.resolve(items.map((item) => item * 10));
  };
  return { flushed, flush };
}

/** Submits `items` in one go: the first `maxInFlight` flush alone, the rest share a batch. */
function submitAll(commit: GroupCommit<number, number>, items: readonly number[]) {
  return Promise.allSettled(items.map((item) => commit.submit(item)));
}

describe('GroupCommit', () => {
  it('a batch whose error belongs to one item: that item fails alone, the others get their results', async () => {
    const { flushed, flush } = recordingFlush();
    const commit = new GroupCommit(flush, {
      maxInFlight: 1,
      isolate: (err) => err instanceof Refused,
    });
    const results = await submitAll(commit, [1, 2, -3, 4]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason)))).toEqual([
      10,
      20,
      'Error: refused -3',
      40,
    ]);
    // 1 alone, then [2, -3, 4] refused as a whole, then each of those on its own.
    expect(flushed).toEqual([[1], [2, -3, 4], [2], [-3], [4]]);
  });

  it('control: an error it does not isolate fails the whole batch', async () => {
    const { flushed, flush } = recordingFlush();
    const commit = new GroupCommit(flush, { maxInFlight: 1, isolate: () => false });
    const results = await submitAll(commit, [1, 2, -3, 4]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'rejected', 'rejected']);
    expect(flushed).toEqual([[1], [2, -3, 4]]);
  });

  it('a lone item that fails is not written twice', async () => {
    const { flushed, flush } = recordingFlush();
    const commit = new GroupCommit(flush, { isolate: () => true });
    await expect(commit.submit(-1)).rejects.toThrow('refused -1');
    expect(flushed).toEqual([[-1]]);
  });
});
