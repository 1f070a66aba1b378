import { randomFillSync } from 'node:crypto';

const bytes = Buffer.alloc(16);

/**
 * A new event id: a UUID of version 7 (RFC 9562), 48 bits of Unix milliseconds followed by 74
 * random bits. The store gives one to every event appended without an id. Ids made one after
 * the other sort close together, so the unique index on `event_id` grows at its right edge
 * instead of touching a random page on every append (a random page written for the first time
 * after a checkpoint also costs a full-page image in the WAL). Uniqueness rests on the 74
 * random bits, as a version 4 UUID's rests on 122: two ids collide only when made in the same
 * millisecond with the same random bits.
 */
export function newEventId(now: number = Date.now()): string {
  randomFillSync(bytes);
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
