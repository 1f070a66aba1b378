import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  decodeToken,
  encodeToken,
  mergeTokens,
  requiredPosition,
  type ConsistencyToken,
} from '../src/routing/consistency-token.js';
import { RoutingError } from '../src/routing/routing-error.js';

const MAX_U64 = 2n ** 64n - 1n;

const systemIds = fc.oneof(
  fc.bigInt({ min: 1n, max: MAX_U64 }),
  fc.constantFrom(1n, 7_345_012_345_678_901_234n, MAX_U64),
);
const timelines = fc.oneof(
  fc.integer({ min: 1, max: 0xffffffff }),
  fc.constantFrom(1, 2, 0xffffffff),
);
const positions = fc.oneof(fc.bigInt({ min: 0n, max: MAX_U64 }), fc.constantFrom(0n, MAX_U64));
const times = fc.oneof(fc.maxSafeNat(), fc.constantFrom(0, Number.MAX_SAFE_INTEGER));

const tokens: fc.Arbitrary<ConsistencyToken> = fc.record({
  systemId: systemIds.map(String),
  timeline: timelines,
  written: positions,
  seen: positions,
  writtenAt: times,
});

/** Tokens of one cluster, timelines and positions from small sets so that ties are common. */
function sameCluster(systemId: string): fc.Arbitrary<ConsistencyToken> {
  const small = fc.bigInt({ min: 0n, max: 20n });
  return fc.record({
    systemId: fc.constant(systemId),
    timeline: fc.integer({ min: 1, max: 3 }),
    written: fc.oneof(small, positions),
    seen: fc.oneof(small, positions),
    writtenAt: fc.oneof(fc.integer({ min: 0, max: 20 }), times),
  });
}

const realistic: ConsistencyToken = {
  systemId: '7345012345678901234',
  timeline: 3,
  written: (0x2a3n << 32n) | 0xb374d848n,
  seen: (0x2a3n << 32n) | 0xb3750000n,
  writtenAt: Date.UTC(2031, 0, 1),
};

function decodeError(text: string): RoutingError {
  let caught: unknown;
  try {
    decodeToken(text);
  } catch (err) {
    caught = err;
  }
  expect(caught, `decodeToken(${JSON.stringify(text)}) should throw`).toBeInstanceOf(RoutingError);
  return caught as RoutingError;
}

function expectMalformed(text: string): void {
  expect(decodeError(text).code).toBe('TOKEN_MALFORMED');
}

describe('encodeToken and decodeToken', () => {
  it('write the documented form', () => {
    const token: ConsistencyToken = {
      systemId: '36',
      timeline: 1,
      written: 35n,
      seen: 36n * 36n,
      writtenAt: 0,
    };
    expect(encodeToken(token)).toBe('rk1.10.1.z.100.0');
    expect(decodeToken('rk1.10.1.z.100.0')).toEqual(token);
  });

  it('round-trip every token in range', () => {
    fc.assert(
      fc.property(tokens, (token) => {
        expect(decodeToken(encodeToken(token))).toEqual(token);
      }),
      { numRuns: 200 },
    );
  });

  it('write URL-safe text (digits, lower-case letters and dots) of at most 65 characters', () => {
    fc.assert(
      fc.property(tokens, (token) => {
        const text = encodeToken(token);
        expect(text).toMatch(/^[0-9a-z.]+$/);
        expect(text.length).toBeLessThanOrEqual(65);
        expect(encodeURIComponent(text)).toBe(text);
      }),
      { numRuns: 200 },
    );
    const largest = encodeToken({
      systemId: MAX_U64.toString(),
      timeline: 0xffffffff,
      written: MAX_U64,
      seen: MAX_U64,
      writtenAt: Number.MAX_SAFE_INTEGER,
    });
    expect(largest).toHaveLength(65);
  });

  it('keep realistic tokens short', () => {
    expect(encodeToken(realistic).length).toBeLessThan(70);
    expect(encodeToken(realistic).length).toBeLessThanOrEqual(55);
  });
});

describe('decodeToken is strict', () => {
  const valid = encodeToken(realistic);
  const [, sys, tl, written, seen, at] = valid.split('.') as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const tooBig = (MAX_U64 + 1n).toString(36); // 13 characters, one past 2^64 - 1

  it.each([
    ['empty', ''],
    ['only the prefix', 'rk1'],
    ['only the prefix and a dot', 'rk1.'],
    ['another version', `rk2.${sys}.${tl}.${written}.${seen}.${at}`],
    ['upper-case prefix', `RK1.${sys}.${tl}.${written}.${seen}.${at}`],
    ['no prefix', `${sys}.${tl}.${written}.${seen}.${at}`],
    ['prefix glued to a field', `rk1${sys}.${tl}.${written}.${seen}.${at}.0`],
    ['five fields', `rk1.${sys}.${tl}.${written}.${seen}`],
    ['seven fields', `${valid}.0`],
    ['a trailing dot', `${valid}.`],
    ['a leading dot', `.${valid}`],
    ['an empty system id', `rk1..${tl}.${written}.${seen}.${at}`],
    ['an empty timeline', `rk1.${sys}..${written}.${seen}.${at}`],
    ['an empty write position', `rk1.${sys}.${tl}..${seen}.${at}`],
    ['an empty read position', `rk1.${sys}.${tl}.${written}..${at}`],
    ['an empty write time', `rk1.${sys}.${tl}.${written}.${seen}.`],
    ['upper-case digits', `rk1.${sys.toUpperCase()}.${tl}.${written}.${seen}.${at}`],
    ['a minus sign', `rk1.${sys}.${tl}.-1.${seen}.${at}`],
    ['a plus sign', `rk1.${sys}.${tl}.+1.${seen}.${at}`],
    ['an underscore', `rk1.${sys}.${tl}.1_0.${seen}.${at}`],
    ['a space inside', `rk1.${sys}.${tl}.${written}. ${seen}.${at}`],
    ['surrounding space', ` ${valid}`],
    ['a trailing newline', `${valid}\n`],
    ['a percent-encoded dot', `rk1%2E${sys}.${tl}.${written}.${seen}.${at}`],
    ['a non-ASCII digit', `rk1.${sys}.${tl}.${written}.${seen}.١`],
    ['an overlong field', `rk1.${sys}.${tl}.${'1'.repeat(14)}.${seen}.${at}`],
    ['a system id past 2^64 - 1', `rk1.${tooBig}.${tl}.${written}.${seen}.${at}`],
    ['a write position past 2^64 - 1', `rk1.${sys}.${tl}.${tooBig}.${seen}.${at}`],
    ['a read position past 2^64 - 1', `rk1.${sys}.${tl}.${written}.${tooBig}.${at}`],
    ['the largest 13-digit field', `rk1.${sys}.${tl}.${'z'.repeat(13)}.${seen}.${at}`],
    ['a timeline past 2^32 - 1', `rk1.${sys}.${(2 ** 32).toString(36)}.${written}.${seen}.${at}`],
    [
      'a write time past Number.MAX_SAFE_INTEGER',
      `rk1.${sys}.${tl}.${written}.${seen}.${(Number.MAX_SAFE_INTEGER + 1).toString(36)}`,
    ],
    ['a zero system id', `rk1.0.${tl}.${written}.${seen}.${at}`],
    ['timeline 0', `rk1.${sys}.0.${written}.${seen}.${at}`],
    ['a leading zero', `rk1.${sys}.0${tl}.${written}.${seen}.${at}`],
    ['a padded zero', `rk1.${sys}.${tl}.00.${seen}.${at}`],
    ['129 characters', `${valid}${'0'.repeat(129 - valid.length)}`],
    ['a megabyte', `rk1.${'1'.repeat(1 << 20)}`],
  ])('rejects %s', (_what, text) => {
    expectMalformed(text);
  });

  it('accepts the edges of every range', () => {
    expect(decodeToken('rk1.1.1.0.0.0')).toEqual({
      systemId: '1',
      timeline: 1,
      written: 0n,
      seen: 0n,
      writtenAt: 0,
    });
    const m = MAX_U64.toString(36);
    expect(decodeToken(`rk1.${m}.${(2 ** 32 - 1).toString(36)}.${m}.${m}.2gosa7pa2gv`)).toEqual({
      systemId: MAX_U64.toString(),
      timeline: 2 ** 32 - 1,
      written: MAX_U64,
      seen: MAX_U64,
      writtenAt: Number.MAX_SAFE_INTEGER,
    });
  });

  it('accepts exactly what encodeToken writes: anything else throws TOKEN_MALFORMED', () => {
    // Mutations of valid tokens (a character changed, inserted or deleted) and arbitrary text:
    // decoding either throws TOKEN_MALFORMED or returns a token that encodes back to the input.
    const alphabet = fc.constantFrom(...'0123456789abcdefxyzAZ.-_ rk'.split(''));
    const mutated = fc
      .tuple(tokens, fc.nat(), fc.constantFrom('replace', 'insert', 'delete'), alphabet)
      .map(([token, where, how, char]) => {
        const text = encodeToken(token);
        const i = where % text.length;
        if (how === 'delete') return text.slice(0, i) + text.slice(i + 1);
        if (how === 'insert') return text.slice(0, i) + char + text.slice(i);
        return text.slice(0, i) + char + text.slice(i + 1);
      });
    fc.assert(
      fc.property(fc.oneof(mutated, fc.string(), fc.string({ unit: alphabet })), (text) => {
        let decoded: ConsistencyToken;
        try {
          decoded = decodeToken(text);
        } catch (err) {
          expect(err).toBeInstanceOf(RoutingError);
          expect((err as RoutingError).code).toBe('TOKEN_MALFORMED');
          return;
        }
        expect(encodeToken(decoded)).toBe(text);
      }),
      { numRuns: 200 },
    );
  });

  it('says what is wrong without echoing the token', () => {
    const message = decodeError(`rk1.${'q'.repeat(13)}.1.0.0.0`).message;
    expect(message).toMatch(/system id/);
    expect(message).not.toContain('qqq');
  });
});

describe('mergeTokens', () => {
  const cluster = systemIds.map(String);

  it('treats undefined as the identity', () => {
    fc.assert(
      fc.property(tokens, (token) => {
        expect(mergeTokens(undefined, token)).toEqual(token);
        expect(mergeTokens(token, undefined)).toEqual(token);
      }),
      { numRuns: 100 },
    );
    expect(mergeTokens(undefined, undefined)).toBeUndefined();
  });

  it('is idempotent', () => {
    fc.assert(
      fc.property(tokens, (token) => {
        expect(mergeTokens(token, token)).toEqual(token);
      }),
      { numRuns: 100 },
    );
  });

  it('takes the maximum of every position and time within one cluster and timeline', () => {
    fc.assert(
      fc.property(
        cluster.chain((id) => fc.tuple(sameCluster(id), sameCluster(id))),
        ([a, b0]) => {
          const b = { ...b0, timeline: a.timeline };
          const merged = mergeTokens(a, b);
          expect(merged).toEqual({
            systemId: a.systemId,
            timeline: a.timeline,
            written: a.written > b.written ? a.written : b.written,
            seen: a.seen > b.seen ? a.seen : b.seen,
            writtenAt: Math.max(a.writtenAt, b.writtenAt),
          });
        },
      ),
      { numRuns: 200 },
    );
  });

  it('is commutative within one cluster, whatever the timelines', () => {
    fc.assert(
      fc.property(
        cluster.chain((id) => fc.tuple(sameCluster(id), sameCluster(id))),
        ([a, b]) => {
          expect(mergeTokens(a, b)).toEqual(mergeTokens(b, a));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('is associative within one cluster, whatever the timelines', () => {
    fc.assert(
      fc.property(
        cluster.chain((id) => fc.tuple(sameCluster(id), sameCluster(id), sameCluster(id))),
        ([a, b, c]) => {
          expect(mergeTokens(mergeTokens(a, b), c)).toEqual(mergeTokens(a, mergeTokens(b, c)));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('lets a later timeline of the same cluster supersede an earlier one entirely', () => {
    fc.assert(
      fc.property(
        cluster.chain((id) => fc.tuple(sameCluster(id), sameCluster(id))),
        ([a, b0]) => {
          const b = { ...b0, timeline: a.timeline + 1 };
          expect(mergeTokens(a, b)).toEqual(b);
          expect(mergeTokens(b, a)).toEqual(b);
        },
      ),
      { numRuns: 200 },
    );
    const beforeFailover = { ...realistic, timeline: 3, written: 10n ** 12n, seen: 10n ** 12n };
    const afterFailover = { ...realistic, timeline: 4, written: 5n, seen: 5n };
    expect(mergeTokens(beforeFailover, afterFailover)).toEqual(afterFailover);
  });

  it('keeps the right-hand token when the clusters differ', () => {
    fc.assert(
      fc.property(tokens, tokens, (a, b0) => {
        const b =
          b0.systemId === a.systemId ? { ...b0, systemId: `${BigInt(a.systemId) ^ 1n || 2n}` } : b0;
        expect(mergeTokens(a, b)).toEqual(b);
      }),
      { numRuns: 200 },
    );
  });

  it('folds a session’s tokens into the latest cluster’s run of tokens', () => {
    // Across clusters the order matters (right-hand wins), so merging is not associative there;
    // a left fold equals the merge of the trailing tokens that share the last token's cluster.
    const twoClusters = fc.tuple(cluster, cluster).chain(([x, y]) =>
      fc.array(fc.oneof(sameCluster(x), sameCluster(y === x ? `${x}0` : y)), {
        minLength: 1,
        maxLength: 8,
      }),
    );
    fc.assert(
      fc.property(twoClusters, (session) => {
        const folded = session.reduce<ConsistencyToken | undefined>(mergeTokens, undefined);
        const last = session[session.length - 1]!;
        let start = session.length - 1;
        while (start > 0 && session[start - 1]!.systemId === last.systemId) start--;
        const tail = session.slice(start);
        const maxTimeline = Math.max(...tail.map((t) => t.timeline));
        const current = tail.filter((t) => t.timeline === maxTimeline);
        expect(folded).toEqual({
          systemId: last.systemId,
          timeline: maxTimeline,
          written: current.reduce((m, t) => (t.written > m ? t.written : m), 0n),
          seen: current.reduce((m, t) => (t.seen > m ? t.seen : m), 0n),
          writtenAt: Math.max(...current.map((t) => t.writtenAt)),
        });
      }),
      { numRuns: 200 },
    );
  });
});

describe('requiredPosition', () => {
  it('is max(written, seen) for monotonic reads and written otherwise', () => {
    fc.assert(
      fc.property(tokens, (token) => {
        const max = token.written > token.seen ? token.written : token.seen;
        expect(requiredPosition(token, true)).toBe(max);
        expect(requiredPosition(token, false)).toBe(token.written);
      }),
      { numRuns: 200 },
    );
    const readAhead = { ...realistic, written: 10n, seen: 20n };
    expect(requiredPosition(readAhead, true)).toBe(20n);
    expect(requiredPosition(readAhead, false)).toBe(10n);
  });
});
