import type { Lsn } from './lsn.js';

/**
 * When the primary was first seen past a position: `at` is the midpoint between two samples;
 * `sentAt` is when the last sample still at `lsn` was asked for.
 */
interface Mark {
  readonly lsn: Lsn;
  readonly at: number;
  readonly sentAt: number;
}

/**
 * Estimates how far behind a replica is, in time, from the primary's WAL positions over time.
 *
 * The lag of a replica that has replayed up to `R` is the age of the oldest WAL it has not
 * replayed: now minus the moment the primary first went past `R`. This definition
 * is the useful one: it is 0 whenever the replica has replayed everything (an idle primary
 * does not make it grow, unlike `now() - pg_last_xact_replay_timestamp()`), it grows while a
 * replica is cut off and the primary keeps writing, and under steady writes it equals an injected
 * `recovery_min_apply_delay`.
 */
export class LagEstimator {
  readonly #marks: Mark[] = [];
  readonly #horizonMs: number;
  #last: Mark | undefined;
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

  /**
   * Records a sample of the primary's position that arrived at `at` (ms) and was asked for at
   * `sentAt` (every transaction committed by then ends at or below `lsn`; default `at`).
   */
  record(lsn: Lsn, at: number, sentAt = at): void {
    const last = this.#last;
    this.#floorAt ??= at;
    if (last !== undefined && lsn > last.lsn) {
      // The WAL past last.lsn appeared somewhere between the two samples: halve the error.
      this.#marks.push({ lsn: last.lsn, at: (last.at + at) / 2, sentAt: last.sentAt });
    }
    if (last === undefined || lsn > last.lsn) this.#last = { lsn, at, sentAt };
    else if (lsn === last.lsn) this.#last = { lsn, at, sentAt: Math.max(sentAt, last.sentAt) };
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
    const mark = this.#lastMarkAtOrBelow(replayed);
    const since = mark?.at ?? this.#floorAt ?? last.at;
    return Math.max(0, now - since);
  }

  /**
   * The latest time by which a replica that has replayed up to `replayed` provably shows every
   * committed transaction: when the newest sample at or below `replayed` was asked for. Unlike
   * {@link lagMs}, an upper bound that holds for every client's writes, however recent; `undefined`
   * when no sample in the history is that low.
   */
  provenAsOf(replayed: Lsn): number | undefined {
    const last = this.#last;
    if (last === undefined) return undefined;
    if (replayed >= last.lsn) return last.sentAt;
    // Every distinct sampled position below the last one is a mark: the newest sample at or
    // below `replayed` is the last one at the greatest mark not above it.
    return this.#lastMarkAtOrBelow(replayed)?.sentAt;
  }

  /** Marks are in strictly increasing position order: a binary search. */
  #lastMarkAtOrBelow(lsn: Lsn): Mark | undefined {
    let low = 0;
    let high = this.#marks.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.#marks[mid]!.lsn <= lsn) low = mid + 1;
      else high = mid;
    }
    return this.#marks[low - 1];
  }

  /** Bytes of WAL the primary has written beyond `replayed`. */
  lagBytes(replayed: Lsn): bigint {
    const last = this.#last;
    return last === undefined || replayed >= last.lsn ? 0n : last.lsn - replayed;
  }
}
