import { formatLsn, isLsn, maxLsn, type Lsn } from './lsn.js';
import { RoutingError } from './routing-error.js';

/**
 * What a client carries between requests to read its own writes (docs/routing.md): the cluster and
 * timeline it came from, the WAL position after its last write, the highest position any of its
 * reads has seen, and when it last wrote.
 *
 * Encoded as `rk1.<system id>.<timeline>.<written>.<seen>.<written at>`, every number in base 36:
 * short, URL-safe, and parsed strictly.
 */
export interface ConsistencyToken {
  /** `pg_control_system().system_identifier` of the primary, as a decimal string (64-bit). */
  readonly systemId: string;
  readonly timeline: number;
  /** Position after this session's latest write committed. `0n` when it has not written. */
  readonly written: Lsn;
  /** Highest position any read of this session, at any level, may have seen (for monotonic reads). */
  readonly seen: Lsn;
  /** Milliseconds since the epoch of this session's latest write, `0` when none (for sticky-window). */
  readonly writtenAt: number;
}

const PREFIX = 'rk1';
const MAX_TOKEN_LENGTH = 128;
/** Base 36 as `toString(36)` writes it: no leading zeros, so every token has one spelling. */
const FIELD = /^(?:0|[1-9a-z][0-9a-z]{0,12})$/;
const MAX_U64 = (1n << 64n) - 1n;

function parseBase36(text: string | undefined, what: string): bigint {
  if (text === undefined || !FIELD.test(text)) throw malformed(`${what} is missing or not base 36`);
  let value = 0n;
  for (const char of text) value = value * 36n + BigInt(parseInt(char, 36));
  if (value > MAX_U64) throw malformed(`${what} is out of range`);
  return value;
}

function malformed(reason: string): RoutingError {
  return new RoutingError('TOKEN_MALFORMED', `the consistency token is malformed: ${reason}`);
}

/** Encodes a token into its compact, URL-safe text form. */
export function encodeToken(token: ConsistencyToken): string {
  return [
    PREFIX,
    BigInt(token.systemId).toString(36),
    token.timeline.toString(36),
    token.written.toString(36),
    token.seen.toString(36),
    token.writtenAt.toString(36),
  ].join('.');
}

/**
 * Parses a token strictly: exactly the fields {@link encodeToken} writes, each in range.
 *
 * @throws RoutingError `TOKEN_MALFORMED` saying what is wrong.
 */
export function decodeToken(text: string): ConsistencyToken {
  if (text.length > MAX_TOKEN_LENGTH) throw malformed(`longer than ${MAX_TOKEN_LENGTH} characters`);
  const parts = text.split('.');
  if (parts[0] !== PREFIX) throw malformed(`it does not start with "${PREFIX}."`);
  if (parts.length !== 6) throw malformed(`expected 6 dot-separated fields, got ${parts.length}`);
  const systemId = parseBase36(parts[1], 'system id');
  const timeline = parseBase36(parts[2], 'timeline');
  const written = parseBase36(parts[3], 'write position');
  const seen = parseBase36(parts[4], 'read position');
  const writtenAt = parseBase36(parts[5], 'write time');
  if (systemId === 0n) throw malformed('system id is zero');
  if (timeline < 1n || timeline > 0xffffffffn) throw malformed('timeline is out of range');
  if (!isLsn(written) || !isLsn(seen)) throw malformed('position is out of range');
  if (writtenAt > BigInt(Number.MAX_SAFE_INTEGER)) throw malformed('write time is out of range');
  return {
    systemId: systemId.toString(),
    timeline: Number(timeline),
    written,
    seen,
    writtenAt: Number(writtenAt),
  };
}

/**
 * Combines two tokens of one session, e.g. a header and a cookie, or the request's token and a new
 * write's. Positions of the same cluster and timeline merge by taking the maximum; a later
 * timeline of the same cluster supersedes an earlier one (positions from before a failover mean
 * nothing after it); between different clusters the right-hand (newer) token wins.
 */
export function mergeTokens(
  a: ConsistencyToken | undefined,
  b: ConsistencyToken | undefined,
): ConsistencyToken | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  if (a.systemId !== b.systemId) return b;
  if (a.timeline !== b.timeline) return a.timeline > b.timeline ? a : b;
  return {
    systemId: a.systemId,
    timeline: a.timeline,
    written: maxLsn(a.written, b.written),
    seen: maxLsn(a.seen, b.seen),
    writtenAt: Math.max(a.writtenAt, b.writtenAt),
  };
}

/** The position a read must reach: the latest write, and for monotonic reads the latest read too. */
export function requiredPosition(token: ConsistencyToken, monotonic: boolean): Lsn {
  return monotonic ? maxLsn(token.written, token.seen) : token.written;
}

/** A short human description, for logs and span attributes. */
export function describeToken(token: ConsistencyToken): string {
  return `written ${formatLsn(token.written)}, seen ${formatLsn(token.seen)} on timeline ${token.timeline}`;
}
