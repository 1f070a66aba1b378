import type { Lsn } from './lsn.js';

interface Waiter {
  readonly lsn: Lsn;
  readonly resolve: (replica: string) => void;
}

/**
 * Waiters for WAL positions, woken in bulk. Monitors report each replica's new replay position
 * with {@link LsnWaiter.advance}; every waiter at or below it is woken at once, so the cost of a
 * poll does not grow with the number of waiters — a thousand reads waiting on one replica share
 * one poll stream.
 *
 * Waiters are kept sorted by position, so a wake-up touches only the waiters it releases.
 */
export class LsnWaiter {
  readonly #waiters: Waiter[] = [];

  /** How many reads are waiting. */
  get size(): number {
    return this.#waiters.length;
  }

  /** The lowest position anyone waits for, or `undefined` when nobody waits. */
  get lowest(): Lsn | undefined {
    return this.#waiters[0]?.lsn;
  }

  /**
   * Resolves with the replica that first reports a position at or past `lsn`, or with `undefined`
   * when `signal` aborts first (the caller's deadline).
   */
  wait(lsn: Lsn, signal: AbortSignal): Promise<string | undefined> {
    if (signal.aborted) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        lsn,
        resolve: (replica) => {
          signal.removeEventListener('abort', onAbort);
          resolve(replica);
        },
      };
      const onAbort = (): void => {
        const index = this.#waiters.indexOf(waiter);
        if (index !== -1) this.#waiters.splice(index, 1);
        resolve(undefined);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.splice(this.#insertionPoint(lsn), 0, waiter);
    });
  }

  /** Wakes every waiter whose position `replica` has reached; returns how many woke. */
  advance(replica: string, position: Lsn): number {
    let released = 0;
    while (released < this.#waiters.length && this.#waiters[released]!.lsn <= position) released++;
    if (released === 0) return 0;
    for (const waiter of this.#waiters.splice(0, released)) waiter.resolve(replica);
    return released;
  }

  #insertionPoint(lsn: Lsn): number {
    let low = 0;
    let high = this.#waiters.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.#waiters[mid]!.lsn <= lsn) low = mid + 1;
      else high = mid;
    }
    return low;
  }
}
