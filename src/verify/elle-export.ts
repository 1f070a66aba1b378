import { clientOps, type ClientOp, type HistoryOp } from './history.js';

/** One operation as elle-cli's `rw-register` model reads it. */
export interface ElleOp {
  readonly type: 'invoke' | 'ok' | 'fail' | 'info';
  readonly f: 'txn';
  /** Micro-operations: `["w", key, value]` or `["r", key, value-or-null]`. */
  readonly value: readonly (readonly ['r' | 'w', number, number | null])[];
  readonly process: number;
  /** Nanoseconds since the run started. */
  readonly time: number;
  readonly index: number;
}

/** Options of {@link toElleRwRegister}. */
export interface ElleExportOptions {
  /**
   * Keep only reads at these levels (the `X-Consistency` form, e.g. `['strong']`); every write is
   * kept. A history of writes and `strong` reads only is one Elle can hold to
   * `strict-serializable`; replica reads are stale by design and need a weaker model.
   */
  readonly levels?: readonly string[];
}

/**
 * The history as elle-cli's `rw-register` model reads it: every write a one-element transaction
 * `[["w", key, value]]`, every read a transaction reading every register (the initial value as
 * `null`). The nemesis's entries are left out.
 *
 * Elle assumes a process has one operation in flight at a time; an operation that ended `info`
 * may still be in flight, so the session's later operations get a new process number, as Jepsen
 * does when a client crashes.
 *
 * ```ts
 * await writeFile('history.json', formatElleJson(toElleRwRegister(history.ops)));
 * // java -jar elle-cli.jar --model rw-register --consistency-models serializable history.json
 * ```
 */
export function toElleRwRegister(
  history: readonly HistoryOp[],
  options: ElleExportOptions = {},
): ElleOp[] {
  const levels = options.levels === undefined ? undefined : new Set(options.levels);
  const ops = clientOps(history).filter(
    (op) => op.f === 'write' || levels === undefined || levels.has(op.level),
  );
  const registers = new Set<number>();
  for (const op of ops) {
    if (op.f === 'write') registers.add(op.key);
    else for (const key of Object.keys(op.value ?? {})) registers.add(Number(key));
  }
  const allReads = [...registers].sort((a, b) => a - b).map((key) => ['r', key, null] as const);
  // A loop, not Math.max(...): a long run's history is more arguments than the stack holds.
  let nextProcess = ops.reduce((max, op) => Math.max(max, op.process), -1) + 1;
  const processOf = new Map<number, number>();
  const out: ElleOp[] = [];
  const micro = (op: ClientOp): ElleOp['value'] => {
    if (op.f === 'write') return [['w', op.key, op.value]];
    if (op.type !== 'ok') return allReads;
    // A register the read did not find had not been created there yet: its initial value.
    return allReads.map(([, key]) => ['r', key, op.value?.[key]?.value ?? null] as const);
  };
  for (const op of ops) {
    const process = processOf.get(op.process) ?? op.process;
    out.push({
      type: op.type,
      f: 'txn',
      value: micro(op),
      process,
      time: Math.round(op.time * 1e6),
      index: out.length,
    });
    if (op.type === 'info') processOf.set(op.process, nextProcess++);
  }
  return out;
}

/**
 * The text of a file elle-cli reads: a JSON array with one operation per line. elle-cli parses a
 * `.json` file as one JSON value, so the array brackets are needed.
 */
export function formatElleJson(ops: readonly ElleOp[]): string {
  return `[${ops.map((op) => JSON.stringify(op)).join(',\n')}]\n`;
}
