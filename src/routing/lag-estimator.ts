import type { Lsn } from './lsn.js';

/** When the primary was first seen past a position: `at` is the midpoint between two samples. */
interface Mark {
  readonly lsn: Lsn;
  readonly at: number;
}

/**
 * Estimates how far behind a replica is, in time, from the primary's WAL positions over time.
 *
 * The lag of a replica that has replayed up to `R` is the age of the oldest WAL it has not
 * replayed: now minus the moment the primary first went past `R`. This is the definition
 * DESIGN.md §3 asks for: it is 0 whenever the replica has replayed everything (an idle primary
 * does not make it grow, unlike `now() - pg_last_xact_replay_timestamp()`), it grows while a
 * replica is cut off and the primary keeps writing, and under steady writes it equals an injected
 * `recovery_min_apply_delay`.
 */
export class LagEstimator {
  readonly #marks: Mark[] = [];
  readonly #horizonMs: number;
  #last: { lsn: Lsn; at: number } | undefined;
  /**
   * By when the primary had passed every position below the oldest mark: the first sample (it
   * was already there), then the newest mark dropped for age. A replica behind all the history
   * is at least this far behind; taking the oldest mark's time instead would under-report it,
   * to nothing when the primary was idle in between.
   */
  #floorAt: number | undefined;

  constructor(options: { horizonMs?: number } = {}) {
    this.#horizonMs = options.horizonMs ?? 15 * 60_000;
  }

  /** The primary's latest known position. */
  get primaryPosition(): Lsn | undefined {
    return this.#last?.lsn;
  }

  /** Records a sample of the primary's position taken at `at` (ms). */
  record(lsn: Lsn, at: number): void {
    const last = this.#last;
    this.#floorAt ??= at;
    if (last !== undefined && lsn > last.lsn) {
      // The WAL past last.lsn appeared somewhere between the two samples: halve the error.
      this.#marks.push({ lsn: last.lsn, at: (last.at + at) / 2 });
    }
    if (last === undefined || lsn >= last.lsn) this.#last = { lsn, at };
    const oldest = at - this.#horizonMs;
    let drop = 0;
    while (drop < this.#marks.length - 1 && this.#marks[drop]!.at < oldest) drop++;
    if (drop > 0) this.#floorAt = this.#marks.splice(0, drop)[drop - 1]!.at;
  }

  /**
   * Lag in milliseconds of a replica that has replayed up to `replayed`, at time `now`; 0 when
   * it has replayed everything the primary is known to have written.
   */
  lagMs(replayed: Lsn, now: number): number {
    const last = this.#last;
    if (last === undefined || replayed >= last.lsn) return 0;
    // The primary passed `replayed` at the last mark at or below it (the mark of the step that
    // took the primary from there to beyond it); older than the history: by the floor.
    let low = 0;
    let high = this.#marks.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.#marks[mid]!.lsn < replayed) low = mid + 1;
      else high = mid;
    }
    const exact = this.#marks[low]?.lsn === replayed ? this.#marks[low] : undefined;
    const mark = exact ?? this.#marks[low - 1];
    const since = mark?.at ?? this.#floorAt ?? last.at;
    return Math.max(0, now - since);
  }

  /** Bytes of WAL the primary has written beyond `replayed`. */
  lagBytes(replayed: Lsn): bigint {
    const last = this.#last;
    return last === undefined || replayed >= last.lsn ? 0n : last.lsn - replayed;
  }
}
