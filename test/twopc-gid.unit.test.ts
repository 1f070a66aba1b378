import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { formatGid, newStoreId, newTransactionId, parseGid } from '../src/twopc/gid.js';

const name = fc.stringMatching(/^[a-z0-9_-]{1,40}$/);
const hex = (length: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${length}}$`));
const globalId = fc.record({
  coordinator: name,
  store: hex(16),
  transaction: hex(32),
  participant: name,
});

describe('global transaction ids', () => {
  it('parse back to the coordinator, decision database, transaction and participant', () => {
    fc.assert(
      fc.property(globalId, (id) => {
        const gid = formatGid(id);
        expect(parseGid(gid)).toEqual(id);
        // PostgreSQL refuses a global id of 200 bytes or more.
        expect(Buffer.byteLength(gid)).toBeLessThan(200);
      }),
    );
  });

  it('fresh ids have the shape the pattern expects', () => {
    const id = {
      coordinator: 'c',
      store: newStoreId(),
      transaction: newTransactionId(),
      participant: 'p',
    };
    expect(parseGid(formatGid(id))).toEqual(id);
  });

  it('are not read from other prepared transactions, nor from ids without a decision database', () => {
    for (const gid of [
      'some-other-tool-1',
      `rk2pc:app:${'a'.repeat(32)}:ledger`,
      `rk2pc:App:${'a'.repeat(16)}:${'a'.repeat(32)}:ledger`,
      `rk2pc:app:${'a'.repeat(16)}:${'a'.repeat(32)}:ledger:extra`,
    ])
      expect(parseGid(gid)).toBeUndefined();
  });
});
