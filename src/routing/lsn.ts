/**
 * A WAL position (`pg_lsn`) as an unsigned 64-bit integer. PostgreSQL prints it as two
 * hexadecimal halves, `16/B374D848`; a bigint compares and subtracts exactly.
 */
export type Lsn = bigint;

const MAX_LSN = (1n << 64n) - 1n;
const TEXT_FORM = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parses PostgreSQL's text form of a `pg_lsn`; `undefined` when it is not one. */
export function parseLsn(text: string): Lsn | undefined {
  const match = TEXT_FORM.exec(text);
  if (match === null) return undefined;
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

/** PostgreSQL's text form of a WAL position, e.g. `16/B374D848`. */
export function formatLsn(lsn: Lsn): string {
  if (lsn < 0n || lsn > MAX_LSN) throw new RangeError(`not a WAL position: ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Whether `value` fits a WAL position. */
export function isLsn(value: bigint): boolean {
  return value >= 0n && value <= MAX_LSN;
}

/** The larger of two positions. */
export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a >= b ? a : b;
}

/** Largest page header PostgreSQL writes (the long header at the start of a segment). */
const MAX_PAGE_HEADER = 40n;

/**
 * Turns `pg_current_wal_insert_lsn()` into a position that a caught-up replica can reach.
 *
 * At a page boundary the insert position points past the next page's header, where the next
 * record would go, while a replica's replay position stops at the end of the last record, the
 * boundary itself. An idle primary whose last record ended on a boundary would make every wait
 * time out. No record ends inside a header, so rounding such a position down to the page start
 * waits for exactly the same records.
 */
export function normalizeInsertLsn(lsn: Lsn, walBlockSize: number): Lsn {
  const offset = lsn % BigInt(walBlockSize);
  return offset > 0n && offset <= MAX_PAGE_HEADER ? lsn - offset : lsn;
}
