import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  comparePositions,
  createUpcasterChain,
  EventStoreError,
  formatPosition,
  maxPosition,
  parsePosition,
  type Upcaster,
} from '../src/events/index.js';

const splitName: Upcaster = {
  type: 'UserProfileUpdated',
  fromSchemaVersion: 1,
  upcast: ({ data }) => {
    const { name, ...rest } = data as { name: string; email?: string };
    const [first = '', ...others] = name.split(' ');
    return { data: { ...rest, firstName: first, lastName: others.join(' ') } };
  },
};
const addLocale: Upcaster = {
  type: 'UserProfileUpdated',
  fromSchemaVersion: 2,
  upcast: ({ data }) => ({ data: { ...(data as object), locale: 'en' } }),
};

describe('upcaster chains', () => {
  it('brings v1 up through every registered step, whatever the registration order', () => {
    const chain = createUpcasterChain([addLocale, splitName]);
    expect(
      chain({
        type: 'UserProfileUpdated',
        schemaVersion: 1,
        data: { name: 'Ada King Lovelace', email: 'ada@example.com' },
        metadata: {},
      }),
    ).toEqual({
      type: 'UserProfileUpdated',
      schemaVersion: 3,
      data: { email: 'ada@example.com', firstName: 'Ada', lastName: 'King Lovelace', locale: 'en' },
      metadata: {},
    });
  });

  it('leaves current versions and other types alone', () => {
    const chain = createUpcasterChain([splitName]);
    const current = {
      type: 'UserProfileUpdated',
      schemaVersion: 2,
      data: { firstName: 'A' },
      metadata: {},
    };
    expect(chain(current)).toBe(current);
    const other = { type: 'UserFollowed', schemaVersion: 1, data: {}, metadata: {} };
    expect(chain(other)).toBe(other);
  });

  it('follows renames', () => {
    const chain = createUpcasterChain([
      {
        type: 'Followed',
        fromSchemaVersion: 1,
        upcast: ({ data }) => ({ type: 'UserFollowed', data }),
      },
      {
        type: 'UserFollowed',
        fromSchemaVersion: 2,
        upcast: ({ data }) => ({ data: { ...(data as object), v3: true } }),
      },
    ]);
    expect(
      chain({ type: 'Followed', schemaVersion: 1, data: { a: 1 }, metadata: {} }),
    ).toMatchObject({
      type: 'UserFollowed',
      schemaVersion: 3,
      data: { a: 1, v3: true },
    });
  });

  it('refuses two upcasters for one type and version, and versions below 1', () => {
    expect(() => createUpcasterChain([splitName, { ...splitName }])).toThrow(EventStoreError);
    expect(() => createUpcasterChain([{ ...splitName, fromSchemaVersion: 0 }])).toThrow(
      /schema version 0/,
    );
  });
});

describe('global positions', () => {
  const position = fc.record({
    transactionId: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    position: fc.bigInt({ min: 0n, max: (1n << 63n) - 1n }),
  });

  it('round-trip through their text form', () => {
    fc.assert(
      fc.property(position, (p) => {
        expect(parsePosition(formatPosition(p))).toEqual(p);
      }),
    );
    for (const bad of [
      '',
      '1',
      '1.',
      '.1',
      '01.1',
      '1.01',
      '-1.2',
      '1.2.3',
      'a.b',
      `${1n << 64n}.1`,
    ]) {
      expect(parsePosition(bad)).toBeUndefined();
    }
  });

  it('order by transaction first, then position: a later transaction with a lower position comes after', () => {
    expect(
      comparePositions({ transactionId: 5n, position: 100n }, { transactionId: 6n, position: 1n }),
    ).toBeLessThan(0);
    fc.assert(
      fc.property(position, position, (a, b) => {
        expect(Math.sign(comparePositions(a, b))).toBe(-Math.sign(comparePositions(b, a)));
        const max = maxPosition(a, b)!;
        expect(comparePositions(max, a)).toBeGreaterThanOrEqual(0);
        expect(comparePositions(max, b)).toBeGreaterThanOrEqual(0);
      }),
    );
  });
});
