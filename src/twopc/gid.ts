import { randomBytes } from 'node:crypto';

/** Every global transaction id replikit prepares starts with this. */
export const GID_PREFIX = 'rk2pc';

const NAME = /^[a-z0-9_-]{1,40}$/;
const GID = /^rk2pc:([a-z0-9_-]{1,40}):([0-9a-f]{16}):([0-9a-f]{32}):([a-z0-9_-]{1,40})$/;

/**
 * The parts of a prepared transaction's global id. A coordinator is its name together with its
 * decision database's store id: only a coordinator with both may settle the transaction, because
 * only its decision database can say whether it was decided (see docs/two-phase-commit.md).
 */
export interface GlobalId {
  /** The name of the coordinator that prepared it. */
  readonly coordinator: string;
  /** The id of the database that holds the coordinator's decisions: 16 hex digits. */
  readonly store: string;
  /** The distributed transaction it belongs to (one per `run`, shared by all participants). */
  readonly transaction: string;
  readonly participant: string;
}

/** Whether `name` may appear in a global id: lower-case letters, digits, `_` and `-`, at most 40. */
export function isGidName(name: string): boolean {
  return NAME.test(name);
}

/** A fresh distributed transaction id: 128 random bits in hex. */
export function newTransactionId(): string {
  return randomBytes(16).toString('hex');
}

/** A fresh decision database id: 64 random bits in hex, chosen once per decision database. */
export function newStoreId(): string {
  return randomBytes(8).toString('hex');
}

/**
 * `rk2pc:<coordinator>:<store>:<transaction>:<participant>`, at most 137 bytes (PostgreSQL allows
 * 200).
 */
export function formatGid(id: GlobalId): string {
  return `${GID_PREFIX}:${id.coordinator}:${id.store}:${id.transaction}:${id.participant}`;
}

/** The parts of a replikit global id, or `undefined` for any other prepared transaction. */
export function parseGid(gid: string): GlobalId | undefined {
  const match = GID.exec(gid);
  if (match === null) return undefined;
  return {
    coordinator: match[1]!,
    store: match[2]!,
    transaction: match[3]!,
    participant: match[4]!,
  };
}
