interface Queued<T, R> {
  readonly item: T;
  readonly resolve: (result: R) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Batches concurrent writes into shared statements, the way PostgreSQL's group commit shares one
 * WAL flush among concurrent transactions: a write submitted while a flush is in flight waits for
 * the next one and goes with everything else that queued meanwhile. A lone write is flushed at
 * once, so batching adds no latency when there is nothing to batch with.
 */
export class GroupCommit<T, R> {
  readonly #flush: (items: readonly T[]) => Promise<readonly R[]>;
  readonly #maxBatch: number;
  readonly #maxInFlight: number;
  readonly #isolate: ((err: unknown) => boolean) | undefined;
  #queue: Queued<T, R>[] = [];
  #inFlight = 0;

  /**
   * @param flush writes a batch and returns one result per item, in order. It must write all of
   *   the batch or none of it (one statement, or one transaction).
   * @param options `maxBatch` items per flush (default 256); `maxInFlight` flushes at once (default 2);
   *   `isolate` says whether the error of a failed batch may belong to one of its items (a row
   *   the database refused): the batch wrote nothing, so each item is then flushed on its own and
   *   gets its own outcome, and one bad item fails alone instead of failing everyone it was
   *   batched with. Errors it does not pick (the database unreachable) fail the whole batch.
   */
  constructor(
    flush: (items: readonly T[]) => Promise<readonly R[]>,
    options: {
      readonly maxBatch?: number;
      readonly maxInFlight?: number;
      readonly isolate?: (err: unknown) => boolean;
    } = {},
  ) {
    this.#flush = flush;
    this.#maxBatch = options.maxBatch ?? 256;
    this.#maxInFlight = options.maxInFlight ?? 2;
    this.#isolate = options.isolate;
  }

  /** Queues `item` and resolves with its result once the batch that carried it has been written. */
  submit(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject });
      if (this.#inFlight < this.#maxInFlight) this.#next();
    });
  }

  #next(): void {
    if (this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.#maxBatch);
    this.#inFlight++;
    this.#flush(batch.map((entry) => entry.item))
      .then(
        (results) => settle(batch, results),
        async (err: unknown) => {
          if (batch.length === 1 || this.#isolate?.(err) !== true) {
            for (const entry of batch) entry.reject(err);
            return;
          }
          // Each on its own, all at once; the next batch waits for them like for any flush.
          await Promise.all(
            batch.map((entry) =>
              this.#flush([entry.item]).then(
                (results) => settle([entry], results),
                (alone: unknown) => entry.reject(alone),
              ),
            ),
          );
        },
      )
      .finally(() => {
        this.#inFlight--;
        this.#next();
      });
  }
}

function settle<T, R>(batch: readonly Queued<T, R>[], results: readonly R[]): void {
  batch.forEach((entry, index) => {
    if (index < results.length) entry.resolve(results[index] as R);
    else entry.reject(new Error('a batched write returned fewer results than items'));
  });
}
