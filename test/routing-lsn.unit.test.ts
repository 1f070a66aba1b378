import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { formatLsn, normalizeInsertLsn, parseLsn } from '../src/routing/lsn.js';

const MAX_U64 = 2n ** 64n - 1n;
const u32 = fc.integer({ min: 0, max: 0xffffffff });
/** Every 64-bit value, with the edges (0, 2^32 - 1, 2^32, 2^64 - 1) drawn often. */
const anyLsn = fc.oneof(
  fc.bigInt({ min: 0n, max: MAX_U64 }),
  fc.constantFrom(0n, 1n, 0xffffffffn, 0x100000000n, MAX_U64 - 1n, MAX_U64),
);

describe('parseLsn and formatLsn', () => {
  it('read and write PostgreSQL’s text form', () => {
    expect(parseLsn('0/0')).toBe(0n);
    expect(parseLsn('16/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(parseLsn('16/b374d848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(parseLsn('00000001/0000000A')).toBe((1n << 32n) | 10n);
    expect(parseLsn('FFFFFFFF/FFFFFFFF')).toBe(MAX_U64);
    expect(formatLsn((0x16n << 32n) | 0xb374d848n)).toBe('16/B374D848');
    expect(formatLsn(0n)).toBe('0/0');
    expect(formatLsn(MAX_U64)).toBe('FFFFFFFF/FFFFFFFF');
  });

  it('round-trips every 64-bit value, in the canonical form PostgreSQL prints', () => {
    fc.assert(
      fc.property(anyLsn, (lsn) => {
        const text = formatLsn(lsn);
        expect(text).toMatch(/^(0|[1-9A-F][0-9A-F]{0,7})\/(0|[1-9A-F][0-9A-F]{0,7})$/);
        expect(parseLsn(text)).toBe(lsn);
      }),
      { numRuns: 500 },
    );
  });

  it('reads any spelling PostgreSQL accepts (either case, leading zeros) as the same position', () => {
    fc.assert(
      fc.property(u32, u32, fc.boolean(), fc.nat(7), fc.nat(7), (hi, lo, lower, padHi, padLo) => {
        const half = (n: number, pad: number): string => {
          const hex = n.toString(16);
          const padded = hex.padStart(Math.min(8, hex.length + pad), '0');
          return lower ? padded.toLowerCase() : padded.toUpperCase();
        };
        const lsn = parseLsn(`${half(hi, padHi)}/${half(lo, padLo)}`);
        expect(lsn).toBe((BigInt(hi) << 32n) | BigInt(lo));
      }),
      { numRuns: 200 },
    );
  });

  it.each([
    '',
    '1',
    '1/',
    '/1',
    'G/0',
    '0/G',
    '123456789/0',
    '0/123456789',
    ' 1/0',
    '1/0 ',
    '1/0\n',
    '1//0',
    '1/2/3',
    '-1/0',
    '+1/0',
    '0x1/0',
    '1.0',
    '１/0',
  ])('rejects %j', (text) => {
    expect(parseLsn(text)).toBeUndefined();
  });

  it('rejects what is not a 64-bit position when formatting', () => {
    expect(() => formatLsn(-1n)).toThrow(RangeError);
    expect(() => formatLsn(MAX_U64 + 1n)).toThrow(RangeError);
  });

  it('orders positions as pg_lsn does: by the high half, then the low half', () => {
    // High halves from a small set so that ties (and so the low half) decide often.
    const half = fc.oneof(u32, fc.constantFrom(0, 1, 0x7fffffff, 0x80000000, 0xffffffff));
    const hiHalf = fc.oneof(half, fc.integer({ min: 0, max: 3 }));
    fc.assert(
      fc.property(hiHalf, half, hiHalf, half, (hiA, loA, hiB, loB) => {
        const a = parseLsn(`${hiA.toString(16)}/${loA.toString(16)}`);
        const b = parseLsn(`${hiB.toString(16)}/${loB.toString(16)}`);
        expect(a).toBeDefined();
        expect(b).toBeDefined();
        const expected = hiA !== hiB ? Math.sign(hiA - hiB) : Math.sign(loA - loB);
        const actual = a! < b! ? -1 : a! > b! ? 1 : 0;
        expect(actual).toBe(expected);
      }),
      { numRuns: 500 },
    );
  });

  it('subtracts to the byte distance pg_wal_lsn_diff reports, across the 4 GiB low-half boundary', () => {
    expect(parseLsn('1/0')! - parseLsn('0/FFFFFFFF')!).toBe(1n);
    expect(parseLsn('2/10')! - parseLsn('1/FFFFFFF0')!).toBe(0x20n);
  });
});

describe('normalizeInsertLsn', () => {
  const blockSizes = fc.constantFrom(1024, 2048, 4096, 8192, 16384, 32768, 65536);
  /** Positions on a page, with the first bytes of a page (where headers live) drawn often. */
  const onPage = (blockSize: number): fc.Arbitrary<bigint> =>
    fc
      .tuple(
        fc.bigInt({ min: 0n, max: MAX_U64 / BigInt(blockSize) }),
        fc.oneof(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 0, max: blockSize - 1 })),
      )
      .map(([page, offset]) => page * BigInt(blockSize) + BigInt(offset));
  const cases = blockSizes.chain((blockSize) =>
    fc.tuple(fc.constant(blockSize), onPage(blockSize)),
  );

  it('rounds a position just past a page header down to the page start', () => {
    const page = 0x16n * 2n ** 32n + 8192n * 1000n;
    expect(normalizeInsertLsn(page + 24n, 8192)).toBe(page);
    expect(normalizeInsertLsn(page + 40n, 8192)).toBe(page);
    expect(normalizeInsertLsn(page + 1n, 8192)).toBe(page);
    for (let offset = 1n; offset <= 40n; offset++)
      expect(normalizeInsertLsn(page + offset, 8192)).toBe(page);
  });

  it('leaves a page start and positions past the longest header alone', () => {
    const page = 8192n * 77n;
    expect(normalizeInsertLsn(page, 8192)).toBe(page);
    expect(normalizeInsertLsn(page + 41n, 8192)).toBe(page + 41n);
    expect(normalizeInsertLsn(page + 48n, 8192)).toBe(page + 48n);
    expect(normalizeInsertLsn(page + 8191n, 8192)).toBe(page + 8191n);
    expect(normalizeInsertLsn(0n, 8192)).toBe(0n);
  });

  it('maps offsets 1..40 to the page start and every other position to itself', () => {
    fc.assert(
      fc.property(cases, ([blockSize, lsn]) => {
        const offset = lsn % BigInt(blockSize);
        const expected = offset >= 1n && offset <= 40n ? lsn - offset : lsn;
        expect(normalizeInsertLsn(lsn, blockSize)).toBe(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('is idempotent, never increases a position and never lowers it by more than 40 bytes', () => {
    fc.assert(
      fc.property(cases, ([blockSize, lsn]) => {
        const once = normalizeInsertLsn(lsn, blockSize);
        expect(normalizeInsertLsn(once, blockSize)).toBe(once);
        expect(once <= lsn).toBe(true);
        expect(lsn - once <= 40n).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});
