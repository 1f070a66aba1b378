/**
 * A history of operations against a set of registers, in the style of Jepsen: every operation is
 * an `invoke` followed by its completion, `ok` (it happened), `fail` (it certainly did not) or
 * `info` (unknown: it may have happened, at any time after it was invoked).
 *
 * The registers are numbered `0…n-1`. A write stores a value no other write stores (so a read
 * names the write it saw) and, when acknowledged, reports the register's version after it: the
 * database's own order of the writes to that register. A read returns every register it saw, each
 * as value and version, from one snapshot.
 */

/** How an operation ended, or `invoke` when it starts. */
export type OpType = 'invoke' | 'ok' | 'fail' | 'info';

/** One register as a read saw it. `value` is `null` for the register's initial value. */
export interface Observation {
  readonly value: number | null;
  readonly version: number;
}

interface ClientOpBase {
  /** Position in the history, from 0. */
  readonly index: number;
  readonly type: OpType;
  /** The client session (a Jepsen process): its operations never overlap. */
  readonly process: number;
  /** Milliseconds since the run started, on one monotonic clock for the whole history. */
  readonly time: number;
  /** The consistency token the session held after the operation (completions only). */
  readonly token?: string;
  /** Where a read was served (`primary` or a replica's name), from the response. */
  readonly servedBy?: string;
  /** Which service process the request went to. */
  readonly service?: number;
  /** Why a `fail` or `info` ended so. */
  readonly error?: string;
}

/** A write of `value` to register `key`; `version` once the database acknowledged it. */
export interface WriteOp extends ClientOpBase {
  readonly f: 'write';
  readonly key: number;
  readonly value: number;
  readonly version?: number;
}

/**
 * A read of every register. `level` is the guarantee the checker holds it to: the
 * `X-Consistency` form (`strong`, `read-your-writes`, `monotonic`, `bounded-staleness=<ms>`,
 * `eventual`, `sticky-window=<ms>`). `final` marks the read made after every fault was healed,
 * against which lost writes are judged.
 */
export interface ReadOp extends ClientOpBase {
  readonly f: 'read';
  readonly level: string;
  readonly final?: boolean;
  /** What the read saw, by register (`ok` only). A register it did not find is absent. */
  readonly value?: Readonly<Record<number, Observation>>;
}

/** A fault the nemesis injected or healed; not a client operation. */
export interface NemesisOp {
  readonly index: number;
  readonly type: 'info';
  readonly process: 'nemesis';
  readonly time: number;
  /** `<fault kind>:inject` or `<fault kind>:heal`. */
  readonly f: string;
  /** What exactly, e.g. the replica's name. */
  readonly value: string;
}

export type ClientOp = WriteOp | ReadOp;
export type HistoryOp = ClientOp | NemesisOp;

/** A client operation as the session starts it. */
export type Invocation =
  | { readonly f: 'write'; readonly key: number; readonly value: number; readonly service?: number }
  | {
      readonly f: 'read';
      readonly level: string;
      readonly final?: boolean;
      readonly service?: number;
    };

/** How an invoked operation ended. */
export type Completion =
  | { readonly type: 'ok'; readonly version?: number; readonly value?: Record<number, Observation> }
  | { readonly type: 'fail' | 'info'; readonly error: string };

/** Extra facts a completion carries. */
export interface CompletionFacts {
  readonly token?: string;
  readonly servedBy?: string;
}

/**
 * Records a history as a run goes. Each session must wait for an operation's completion before
 * invoking its next one.
 *
 * ```ts
 * const history = new HistoryRecorder(() => performance.now() - started);
 * const done = history.invoke(0, { f: 'write', key: 3, value: 17 });
 * done({ type: 'ok', version: 5 }, { token });
 * ```
 */
export class HistoryRecorder {
  readonly #ops: HistoryOp[] = [];
  readonly #clock: () => number;
  readonly #open = new Set<number>();

  constructor(clock: () => number) {
    this.#clock = clock;
  }

  /** Everything recorded so far, in order. */
  get ops(): readonly HistoryOp[] {
    return this.#ops;
  }

  /** Records the start of an operation and returns the function that records its end. */
  invoke(
    process: number,
    invocation: Invocation,
  ): (completion: Completion, facts?: CompletionFacts) => ClientOp {
    if (this.#open.has(process))
      throw new Error(`process ${process} invoked an operation before its last one completed`);
    this.#open.add(process);
    const started = this.#push<ClientOp>({ ...invocation, type: 'invoke', process });
    let completed = false;
    return (completion, facts = {}) => {
      if (completed) throw new Error(`operation ${started.index} completed twice`);
      completed = true;
      this.#open.delete(process);
      const base = { ...started, ...facts, type: completion.type };
      const op =
        completion.type === 'ok'
          ? started.f === 'write'
            ? {
                ...base,
                ...(completion.version === undefined ? {} : { version: completion.version }),
              }
            : { ...base, value: completion.value ?? {} }
          : { ...base, error: completion.error };
      return this.#push<ClientOp>(op);
    };
  }

  /** Records a fault the nemesis injected or healed. */
  nemesis(kind: string, phase: 'inject' | 'heal', detail: string): void {
    this.#push({ type: 'info', process: 'nemesis', f: `${kind}:${phase}`, value: detail });
  }

  #push<T extends HistoryOp>(op: Omit<T, 'index' | 'time'> | T): T {
    const recorded = { ...op, index: this.#ops.length, time: this.#clock() } as T;
    this.#ops.push(recorded);
    return recorded;
  }
}

/** The client operations of a history (the nemesis's entries left out). */
export function clientOps(history: readonly HistoryOp[]): ClientOp[] {
  return history.filter((op): op is ClientOp => op.process !== 'nemesis');
}
