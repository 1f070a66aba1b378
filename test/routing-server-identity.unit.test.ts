import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  nextPrimarySample,
  samePrimary,
  sameServer,
  type PrimarySample,
} from '../src/routing/node-monitor.js';

const sample = (overrides: Partial<PrimarySample> = {}): PrimarySample => ({
  at: 1000,
  sentAt: 999,
  inRecovery: false,
  insertLsn: 0x3000000n,
  systemId: '7000000000000000001',
  timeline: 1,
  startedAt: '1765000000.123456',
  walBlockSize: 8192,
  ...overrides,
});

/** Another server, a restart or a failover: each changes one part of the identity. */
const changes = fc.constantFrom<Partial<PrimarySample>>(
  { systemId: '7000000000000000002' },
  { startedAt: '1765000999.000001' },
  { timeline: 2 },
);

describe('server identity', () => {
  it('names a server by system id and start time; nothing unknown names one', () => {
    const a = { systemId: '1', startedAt: '5.5' };
    expect(sameServer(a, { ...a })).toBe(true);
    expect(sameServer(a, { ...a, startedAt: '5.6' })).toBe(false);
    expect(sameServer(a, { ...a, systemId: '2' })).toBe(false);
    expect(sameServer({ systemId: undefined, startedAt: undefined }, a)).toBe(false);
    expect(
      sameServer(
        { systemId: undefined, startedAt: undefined },
        { systemId: undefined, startedAt: undefined },
      ),
    ).toBe(false);
    expect(samePrimary(sample(), sample({ timeline: 2 }))).toBe(false);
  });

  it('keeps the highest position of one primary, never of another (property)', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 1n << 40n }),
        fc.bigInt({ min: 0n, max: 1n << 40n }),
        changes,
        (before, after, change) => {
          const previous = sample({ insertLsn: before });
          const same = nextPrimarySample(previous, sample({ insertLsn: after, at: 2000 }));
          expect(same.insertLsn).toBe(before > after ? before : after);
          expect(same.at).toBe(2000);
          // A failover may land on a primary behind the old one: its own position counts.
          const other = nextPrimarySample(previous, sample({ insertLsn: after, ...change }));
          expect(other).toEqual(sample({ insertLsn: after, ...change }));
        },
      ),
    );
  });
});
