import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  forkPoint,
  hasReplayed,
  historyFileName,
  parseTimelineHistory,
  relateTimelines,
  type TimelineHistory,
} from '../src/routing/timeline.js';

describe('parseTimelineHistory', () => {
  it('reads the file PostgreSQL writes at promotion, skipping comments and blank lines', () => {
    const text = [
      '1\t0/177A8A8\tno recovery target specified',
      '',
      '# a comment',
      '2\t0/30002D8\tno recovery target specified',
      '',
    ].join('\n');
    expect(parseTimelineHistory(text)).toEqual([
      { timeline: 1, switchLsn: 0x177a8a8n },
      { timeline: 2, switchLsn: 0x30002d8n },
    ]);
    expect(parseTimelineHistory('')).toEqual([]);
  });

  it('refuses a line that is not a history entry', () => {
    expect(() => parseTimelineHistory('one\t0/1\tx')).toThrow(/not a timeline history line/);
    expect(() => parseTimelineHistory('1\tnowhere\tx')).toThrow(/not a timeline history line/);
  });

  it('names history files as PostgreSQL does', () => {
    expect(historyFileName(2)).toBe('00000002.history');
    expect(historyFileName(26)).toBe('0000001A.history');
  });
});

describe('relateTimelines', () => {
  const history: TimelineHistory = [
    { timeline: 1, switchLsn: 100n },
    { timeline: 2, switchLsn: 200n },
  ];
  const primary = { timeline: 3, history };

  it('tells a replica on the same timeline, before the fork, and past it', () => {
    expect(relateTimelines({ timeline: 3, replayLsn: 999n }, primary)).toEqual({ kind: 'same' });
    expect(relateTimelines({ timeline: 2, replayLsn: 200n }, primary)).toEqual({
      kind: 'before_fork',
      forkLsn: 200n,
    });
    expect(relateTimelines({ timeline: 2, replayLsn: 201n }, primary)).toEqual({
      kind: 'diverged',
      forkLsn: 200n,
    });
    expect(relateTimelines({ timeline: 1, replayLsn: 150n }, primary)).toEqual({
      kind: 'diverged',
      forkLsn: 100n,
    });
  });

  it('trusts nothing it cannot prove: unknown timelines, unknown history, later timelines', () => {
    const unproven = { kind: 'diverged', forkLsn: undefined };
    expect(relateTimelines({ timeline: undefined, replayLsn: 1n }, primary)).toEqual(unproven);
    expect(
      relateTimelines({ timeline: 2, replayLsn: 1n }, { timeline: 3, history: undefined }),
    ).toEqual(unproven);
    expect(relateTimelines({ timeline: 4, replayLsn: 1n }, primary)).toEqual(unproven);
    // Timeline 5 is not an ancestor of 3 (a sibling branch).
    expect(relateTimelines({ timeline: 5, replayLsn: 1n }, { timeline: 6, history })).toEqual(
      unproven,
    );
  });
});

/**
 * A model of a cluster's timelines: timeline t > 1 forked off `parent[t]` at `fork[t]`. The WAL
 * at position x on timeline t was written by the timeline that owned x in t's lineage.
 */
interface World {
  readonly parent: readonly number[];
  readonly fork: readonly bigint[];
}

function owner(world: World, timeline: number, x: bigint): number {
  let t = timeline;
  while (t > 1 && x < world.fork[t]!) t = world.parent[t]!;
  return t;
}

/** The history file PostgreSQL keeps for `timeline`: each ancestor and where its successor began. */
function historyOf(world: World, timeline: number): TimelineHistory {
  const lineage: number[] = [];
  for (let t = timeline; t > 1; t = world.parent[t]!) lineage.unshift(t);
  return lineage.map((t) => ({ timeline: world.parent[t]!, switchLsn: world.fork[t]! }));
}

const world: fc.Arbitrary<World> = fc
  .array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 60 })), { minLength: 0, maxLength: 6 })
  .map((steps) => {
    const parent = [0, 0];
    const fork = [0n, 0n];
    for (const [pick, advance] of steps) {
      const t = parent.length;
      const p = 1 + (pick % (t - 1));
      parent.push(p);
      fork.push(fork[p]! + BigInt(advance));
    }
    return { parent, fork };
  });

describe('hasReplayed', () => {
  it('says yes only when everything the replica replayed is the primary’s WAL, up to the target', () => {
    fc.assert(
      fc.property(
        world,
        fc.nat(),
        fc.nat(),
        fc.bigInt({ min: 0n, max: 500n }),
        fc.bigInt({ min: 0n, max: 500n }),
        fc.boolean(),
        (w, primaryPick, replicaPick, replayLsn, required, historyKnown) => {
          const count = w.parent.length - 1;
          const primaryTl = 1 + (primaryPick % count);
          const replicaTl = 1 + (replicaPick % count);
          const primary = {
            timeline: primaryTl,
            history: historyKnown ? historyOf(w, primaryTl) : undefined,
          };
          const replica = { timeline: replicaTl, replayLsn };
          const answer = hasReplayed(replica, primary, required);
          let sameWal = true;
          for (let x = 0n; x < replayLsn; x++)
            if (owner(w, replicaTl, x) !== owner(w, primaryTl, x)) sameWal = false;
          if (answer) {
            expect(replayLsn).toBeGreaterThanOrEqual(required);
            expect(sameWal).toBe(true);
          }
          // Complete where it matters: on the primary's own timeline, position decides.
          if (replicaTl === primaryTl) expect(answer).toBe(replayLsn >= required);
          // A follower still on an ancestor, before the fork, is usable once the history is known.
          const fork = forkPoint(historyOf(w, primaryTl), replicaTl);
          if (historyKnown && fork !== undefined && replayLsn <= fork && replicaTl !== primaryTl)
            expect(answer).toBe(replayLsn >= required);
        },
      ),
    );
  });

  it('catches the failover case: old timeline, past the fork, numerically ahead of the token', () => {
    const primary = { timeline: 2, history: [{ timeline: 1, switchLsn: 0x3000000n }] };
    const stale = { timeline: 1, replayLsn: 0x4000000n };
    expect(hasReplayed(stale, primary, 0x3000100n)).toBe(false);
    // The control: the same positions with the timeline ignored would have said caught up.
    expect(hasReplayed({ ...stale, timeline: 2 }, primary, 0x3000100n)).toBe(true);
  });
});
