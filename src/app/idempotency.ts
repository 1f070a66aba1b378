import { createHash } from 'node:crypto';

import { z } from 'zod';

import { ReplikitError } from '../errors.js';

/** The HTTP contract of idempotent requests. */
export const IDEMPOTENCY_HEADERS = {
  /** Request: the client's name for this request; a retry with the same key gets the first one's outcome. */
  key: 'Idempotency-Key',
  /** Response: `true` when the answer is the first request's, and this one changed nothing. */
  replayed: 'Idempotent-Replayed',
} as const;

/**
 * The `Idempotency-Key` header: 1 to 200 characters, or absent. Blanks around it are not part of
 * the key (HTTP does not count them as part of a header value, and most hops drop them already):
 * every route that takes a key parses it with this, so `k` with spaces around it is `k` everywhere.
 */
export const idempotencyKeyHeader = z
  .string()
  .trim()
  .min(1)
  .max(200, 'must be at most 200 characters')
  .optional();

/**
 * A stable fingerprint of what a request asks for (its fields in any order): a key sent again
 * with another fingerprint names a different request, which is refused rather than answered
 * with the first one's outcome.
 */
export function requestFingerprint(fields: Readonly<Record<string, string | number>>): string {
  const canonical = JSON.stringify(Object.entries(fields).sort(([x], [y]) => (x < y ? -1 : 1)));
  return createHash('sha256').update(canonical).digest('hex');
}

/** The 422 for a key that already names a different request. */
export function idempotencyKeyReused(key: string): ReplikitError {
  return new ReplikitError(
    'IDEMPOTENCY_KEY_REUSED',
    'this Idempotency-Key was already used for a different request; nothing changed: send a new key for a new request',
    { details: { key } },
  );
}
