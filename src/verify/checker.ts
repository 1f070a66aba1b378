import {
  clientOps,
  type HistoryOp,
  type Observation,
  type ReadOp,
  type WriteOp,
} from './history.js';

/**
 * What the checker looks for. Each is derived from the history alone, from what the consistency
 * levels promise, never from how reads are routed:
 *
 * - `read-your-writes`: a read at `strong`, `read-your-writes` or `monotonic` sees every write its
 *   own session had acknowledged before the read started.
 * - `monotonic-reads`: a read at `monotonic` sees nothing older than any earlier read of its
 *   session saw (see {@link CheckOptions.monotonicAfter}).
 * - `monotonic-writes`: a read that sees a session's write sees every write that session had
 *   acknowledged before starting it.
 * - `writes-follow-reads`: a read that sees a session's write sees everything that session had read
 *   before starting it.
 * - `bounded-staleness`: a read at `bounded-staleness=B` that started at time t sees every write
 *   acknowledged before t − B; a `strong` read, every write acknowledged before it started.
 * - `lost-write`: the final read misses an acknowledged write, or one version of a register was
 *   seen with two different values (one of them was lost).
 * - `aborted-read`: a read saw a value no write could have written (a failed write's, or one
 *   never written).
 */
export type AnomalyKind =
  | 'read-your-writes'
  | 'monotonic-reads'
  | 'monotonic-writes'
  | 'writes-follow-reads'
  | 'bounded-staleness'
  | 'lost-write'
  | 'aborted-read';

export const ANOMALY_KINDS: readonly AnomalyKind[] = [
  'read-your-writes',
  'monotonic-reads',
  'monotonic-writes',
  'writes-follow-reads',
  'bounded-staleness',
  'lost-write',
  'aborted-read',
];

/** One violation, pointing at the read (history index) that showed it. */
export interface Anomaly {
  readonly kind: AnomalyKind;
  /** The session of the read. */
  readonly process: number;
  /** History index of the read's completion. */
  readonly index: number;
  readonly key?: number;
  readonly message: string;
}

/** Options of {@link checkHistory}. */
export interface CheckOptions {
  /**
   * Which earlier reads a `monotonic` read must not go behind: every read of its session
   * (`any-level`, the default: a session never goes back in time once it asks for monotonic reads)
   * or only earlier `monotonic` reads.
   */
  readonly monotonicAfter?: 'any-level' | 'monotonic-level';
  /** Stop collecting after this many anomalies (the counts go on). Default 1000. */
  readonly maxAnomalies?: number;
}

/** What {@link checkHistory} found. */
export interface CheckResult {
  readonly valid: boolean;
  /** The first anomalies found, up to `maxAnomalies`. */
  readonly anomalies: readonly Anomaly[];
  readonly anomalyCounts: Readonly<Record<AnomalyKind, number>>;
  /** How many individual assertions each checker made: 0 means it had nothing to judge. */
  readonly checks: Readonly<Record<AnomalyKind, number>>;
}

/** A client operation with its invocation and completion joined. */
interface Done<T extends WriteOp | ReadOp> {
  readonly invoke: T;
  /** Its completion; `undefined` when the history ended first (as good as `info`). */
  readonly end: T | undefined;
}

const RYW_LEVELS = new Set(['strong', 'read-your-writes', 'monotonic']);

function zeroCounts(): Record<AnomalyKind, number> {
  return Object.fromEntries(ANOMALY_KINDS.map((kind) => [kind, 0])) as Record<AnomalyKind, number>;
}

/** The staleness bound a read's level promises, in ms: 0 for strong, undefined for none. */
function boundOf(level: string): number | undefined {
  if (level === 'strong') return 0;
  const match = /^bounded-staleness=(\d+)$/.exec(level);
  return match === null ? undefined : Number(match[1]);
}

/** The version a read saw of `key`: 0 when the register was not there at all. */
function seen(read: ReadOp, key: number): number {
  return read.value?.[key]?.version ?? 0;
}

/** Largest index i with `items[i] <= x` in an ascending array, or -1. */
function lastAtMost(items: readonly number[], x: number): number {
  let lo = 0;
  let hi = items.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (items[mid]! <= x) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/** Per-register maxima, a vector the checker compares reads against. */
type Frontier = Map<number, number>;

function raise(frontier: Frontier, key: number, version: number): void {
  if (version > (frontier.get(key) ?? 0)) frontier.set(key, version);
}

/** A session's write, with what the session had acknowledged and read before starting it. */
interface SessionWrite {
  readonly op: Done<WriteOp>;
  readonly key: number;
  readonly version: number;
  /** Position in the session's writes. */
  readonly order: number;
  readonly afterWrites: Frontier;
  readonly afterReads: Frontier;
}

/**
 * Checks a history against what each consistency level promises and returns every anomaly found.
 * Pure: history in, anomalies out.
 *
 * Versions are the database's order of the writes to one register, reported by acknowledged
 * writes and by reads; a read *reflects* a write when it saw that register at the write's version
 * or later. An `info` write may or may not have happened: it is never required to be seen, but
 * when a read saw it, it counts as happened from then on. Nothing here assumes a snapshot across
 * registers beyond what one read returns (one statement on one server).
 */
export function checkHistory(
  history: readonly HistoryOp[],
  options: CheckOptions = {},
): CheckResult {
  const monotonicAfter = options.monotonicAfter ?? 'any-level';
  const maxAnomalies = options.maxAnomalies ?? 1000;
  const anomalies: Anomaly[] = [];
  const anomalyCounts = zeroCounts();
  const checks = zeroCounts();
  const report = (anomaly: Anomaly): void => {
    anomalyCounts[anomaly.kind]++;
    if (anomalies.length < maxAnomalies) anomalies.push(anomaly);
  };

  // Join each invocation with its completion: a session's operations never overlap.
  const open = new Map<number, WriteOp | ReadOp>();
  const writes: Done<WriteOp>[] = [];
  const reads: Done<ReadOp>[] = [];
  const bySession = new Map<number, (Done<WriteOp> | Done<ReadOp>)[]>();
  const join = (invoke: WriteOp | ReadOp, end: WriteOp | ReadOp | undefined): void => {
    const done = { invoke, end } as Done<WriteOp> | Done<ReadOp>;
    if (invoke.f === 'write') writes.push(done as Done<WriteOp>);
    else reads.push(done as Done<ReadOp>);
    const list = bySession.get(invoke.process) ?? [];
    list.push(done);
    bySession.set(invoke.process, list);
  };
  for (const op of clientOps(history)) {
    if (op.type === 'invoke') {
      const pending = open.get(op.process);
      if (pending !== undefined) join(pending, undefined);
      open.set(op.process, op);
    } else {
      const invoke = open.get(op.process);
      if (invoke === undefined || invoke.f !== op.f) continue;
      open.delete(op.process);
      join(invoke, op);
    }
  }
  for (const pending of open.values()) join(pending, undefined);
  const okReads = reads.filter(
    (read): read is Done<ReadOp> & { end: ReadOp } => read.end?.type === 'ok',
  );

  // What each written value's version is, from acknowledgements and from reads.
  const writeOfValue = new Map<number, Done<WriteOp>>();
  for (const write of writes) writeOfValue.set(write.invoke.value, write);
  const versionOfValue = new Map<number, number>();
  const valueAtVersion = new Map<string, number | null>();
  const learn = (key: number, observation: Observation, where: ReadOp | WriteOp): void => {
    const slot = `${key}@${observation.version}`;
    checks['lost-write']++;
    if (valueAtVersion.has(slot) && valueAtVersion.get(slot) !== observation.value) {
      report({
        kind: 'lost-write',
        process: where.process,
        index: where.index,
        key,
        message: `register ${key} version ${observation.version} held ${String(valueAtVersion.get(slot))} and ${String(observation.value)}: one of those writes was lost`,
      });
      return;
    }
    valueAtVersion.set(slot, observation.value);
    if (observation.value === null) return;
    const known = versionOfValue.get(observation.value);
    if (known !== undefined && known !== observation.version) {
      report({
        kind: 'lost-write',
        process: where.process,
        index: where.index,
        key,
        message: `value ${observation.value} of register ${key} was seen at versions ${known} and ${observation.version}`,
      });
    }
    versionOfValue.set(observation.value, observation.version);
  };
  for (const write of writes) {
    if (write.end?.type === 'ok' && write.end.version !== undefined)
      learn(write.invoke.key, { value: write.invoke.value, version: write.end.version }, write.end);
  }
  for (const read of okReads) {
    for (const [keyText, observation] of Object.entries(read.end.value ?? {})) {
      const key = Number(keyText);
      learn(key, observation, read.end);
      if (observation.value === null) continue;
      const writer = writeOfValue.get(observation.value);
      checks['aborted-read']++;
      if (writer === undefined || writer.invoke.key !== key || writer.end?.type === 'fail') {
        report({
          kind: 'aborted-read',
          process: read.end.process,
          index: read.end.index,
          key,
          message:
            writer === undefined || writer.invoke.key !== key
              ? `read ${observation.value} from register ${key}, which no write wrote there`
              : `read ${observation.value} from register ${key}, written by a write that failed`,
        });
      }
    }
  }

  // Per session: read-your-writes and monotonic reads, and what each write came after.
  const sessionWrites = new Map<number, SessionWrite[]>();
  for (const [process, ops] of bySession) {
    const ownAcked: Frontier = new Map();
    const readAny: Frontier = new Map();
    const readMonotonic: Frontier = new Map();
    const mine: SessionWrite[] = [];
    for (const done of ops) {
      if (done.invoke.f === 'write') {
        const write = done as Done<WriteOp>;
        const version =
          write.end?.type === 'ok' ? write.end.version : versionOfValue.get(write.invoke.value);
        if (version !== undefined && write.end?.type !== 'fail') {
          mine.push({
            op: write,
            key: write.invoke.key,
            version,
            order: mine.length,
            afterWrites: new Map(ownAcked),
            afterReads: new Map(readAny),
          });
        }
        if (write.end?.type === 'ok' && version !== undefined)
          raise(ownAcked, write.invoke.key, version);
        continue;
      }
      const read = done as Done<ReadOp>;
      if (read.end?.type !== 'ok') continue;
      const level = read.invoke.level;
      if (RYW_LEVELS.has(level)) {
        for (const [key, version] of ownAcked) {
          checks['read-your-writes']++;
          if (seen(read.end, key) < version) {
            report({
              kind: 'read-your-writes',
              process,
              index: read.end.index,
              key,
              message: `a ${level} read saw register ${key} at version ${seen(read.end, key)}, but the session's own write made it ${version}`,
            });
          }
        }
      }
      if (level === 'monotonic') {
        const before = monotonicAfter === 'any-level' ? readAny : readMonotonic;
        for (const [key, version] of before) {
          checks['monotonic-reads']++;
          if (seen(read.end, key) < version) {
            report({
              kind: 'monotonic-reads',
              process,
              index: read.end.index,
              key,
              message: `a monotonic read saw register ${key} at version ${seen(read.end, key)} after the session had seen version ${version}`,
            });
          }
        }
      }
      for (const [keyText, observation] of Object.entries(read.end.value ?? {})) {
        raise(readAny, Number(keyText), observation.version);
        if (level === 'monotonic') raise(readMonotonic, Number(keyText), observation.version);
      }
    }
    sessionWrites.set(process, mine);
  }

  // Monotonic writes and writes-follow-reads: find, per session, the latest of its writes a read
  // reflects; the read must reflect everything that write came after. What a write came after only
  // grows along the session, so the latest reflected write is the one to check.
  const index = [...sessionWrites].map(([process, mine]) => {
    const byKey = new Map<number, { versions: number[]; latestOrder: number[] }>();
    for (const key of new Set(mine.map((write) => write.key))) {
      const sorted = mine
        .filter((write) => write.key === key)
        .sort((a, b) => a.version - b.version);
      let latest = -1;
      byKey.set(key, {
        versions: sorted.map((write) => write.version),
        latestOrder: sorted.map((write) => (latest = Math.max(latest, write.order))),
      });
    }
    return { process, mine, byKey };
  });
  for (const read of okReads) {
    for (const { process, mine, byKey } of index) {
      let latest = -1;
      for (const [key, { versions, latestOrder }] of byKey) {
        const at = lastAtMost(versions, seen(read.end, key));
        if (at >= 0) latest = Math.max(latest, latestOrder[at]!);
      }
      if (latest < 0) continue;
      const write = mine[latest]!;
      const pairs = [
        ['monotonic-writes', write.afterWrites, 'written'],
        ['writes-follow-reads', write.afterReads, 'read'],
      ] as const;
      for (const [kind, after, verb] of pairs) {
        checks[kind]++;
        for (const [key, version] of after) {
          if (seen(read.end, key) < version) {
            report({
              kind,
              process: read.end.process,
              index: read.end.index,
              key,
              message: `a read saw session ${process}'s write of ${write.op.invoke.value} (register ${write.key} version ${write.version}) but register ${key} at version ${seen(read.end, key)}, though that session had ${verb} version ${version} before writing`,
            });
            break;
          }
        }
      }
    }
  }

  // Bounded staleness against real time, and the final read against every acknowledged write.
  const acked = writes
    .filter((write) => write.end?.type === 'ok' && write.end.version !== undefined)
    .map((write) => ({ key: write.invoke.key, at: write.end!.time, version: write.end!.version! }))
    .sort((a, b) => a.at - b.at);
  const ackedByKey = new Map<number, { at: number[]; maxVersion: number[] }>();
  for (const write of acked) {
    const entry = ackedByKey.get(write.key) ?? { at: [], maxVersion: [] };
    entry.at.push(write.at);
    entry.maxVersion.push(Math.max(write.version, entry.maxVersion.at(-1) ?? 0));
    ackedByKey.set(write.key, entry);
  }
  for (const read of okReads) {
    const bound = boundOf(read.invoke.level);
    const final = read.invoke.final === true;
    if (bound === undefined && !final) continue;
    // Conservative: the read's snapshot was taken after it was invoked, so every write
    // acknowledged before (invoke − bound) must show, whichever node answered.
    const cutoff = read.invoke.time - (bound ?? 0);
    for (const [key, { at, maxVersion }] of ackedByKey) {
      const i = lastAtMost(at, final ? read.invoke.time : cutoff);
      if (i < 0) continue;
      const required = maxVersion[i]!;
      const kind = final ? 'lost-write' : 'bounded-staleness';
      checks[kind]++;
      if (seen(read.end, key) < required) {
        report({
          kind,
          process: read.end.process,
          index: read.end.index,
          key,
          message: final
            ? `the final read saw register ${key} at version ${seen(read.end, key)}; an acknowledged write made it ${required}`
            : `a ${read.invoke.level} read started at ${read.invoke.time.toFixed(1)} ms saw register ${key} at version ${seen(read.end, key)}; version ${required} was acknowledged before ${cutoff.toFixed(1)} ms`,
        });
      }
    }
  }

  return {
    valid: ANOMALY_KINDS.every((kind) => anomalyCounts[kind] === 0),
    anomalies,
    anomalyCounts,
    checks,
  };
}
