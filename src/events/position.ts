/**
 * A place in the event log's global order: the writing transaction's id (`xid8`) and the event's
 * sequence number. Events are read and checkpointed in `(transactionId, position)` order, never
 * by `position` alone: a sequence number is taken at insert and becomes visible at commit, so a
 * reader going by `position` can pass one whose transaction commits later and miss it for good
 * (docs/events.md). Comparing pairs is lexicographic.
 */
export interface GlobalPosition {
  /** `pg_current_xact_id()` of the transaction that appended the event. */
  readonly transactionId: bigint;
  /** The event's sequence number: unique, increasing in insert order, not in commit order. */
  readonly position: bigint;
}

/** Before the first event. */
export const START: GlobalPosition = Object.freeze({ transactionId: 0n, position: 0n });

/** Negative when `a` comes before `b`, zero when equal, positive after. */
export function comparePositions(a: GlobalPosition, b: GlobalPosition): number {
  if (a.transactionId !== b.transactionId) return a.transactionId < b.transactionId ? -1 : 1;
  if (a.position !== b.position) return a.position < b.position ? -1 : 1;
  return 0;
}

/** The later of two positions; `undefined` counts as before everything. */
export function maxPosition(
  a: GlobalPosition | undefined,
  b: GlobalPosition | undefined,
): GlobalPosition | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return comparePositions(a, b) >= 0 ? a : b;
}

const TEXT_FORM = /^(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,18})$/;
const MAX_U64 = (1n << 64n) - 1n;
const MAX_I64 = (1n << 63n) - 1n;

/**
 * The text form of a position, `<transaction id>.<position>` in decimal: short, URL- and
 * header-safe, and what {@link parsePosition} reads.
 *
 * ```ts
 * formatPosition({ transactionId: 1234n, position: 56n }); // '1234.56'
 * ```
 */
export function formatPosition(position: GlobalPosition): string {
  return `${position.transactionId}.${position.position}`;
}

/** Parses {@link formatPosition}'s form strictly; `undefined` when `text` is not one. */
export function parsePosition(text: string): GlobalPosition | undefined {
  const match = TEXT_FORM.exec(text.trim());
  if (match === null) return undefined;
  const transactionId = BigInt(match[1]!);
  const position = BigInt(match[2]!);
  if (transactionId > MAX_U64 || position > MAX_I64) return undefined;
  return { transactionId, position };
}
