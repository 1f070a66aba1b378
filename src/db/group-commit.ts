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
  #queue: { item: T; resolve: (result: R) => void; reject: (err: unknown) => void }[] = [];
  #inFlight = 0;

  /**
   * @param flush writes a batch and returns one result per item, in order.
   * @param options `maxBatch` items per flush (default 256); `maxInFlight` flushes at once (default 2).
   */
  constructor(
    flush: (items: readonly T[]) => Promise<readonly R[]>,
    options: { readonly maxBatch?: number; readonly maxInFlight?: number } = {},
  ) {
    this.#flush = flush;
    this.#maxBatch = options.maxBatch ?? 256;
    this.#maxInFlight = options.maxInFlight ?? 2;
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
        (results) => {
          batch.forEach((entry, index) => {
            if (index < results.length) entry.resolve(results[index] as R);
            else entry.reject(new Error('a batched write returned fewer results than items'));
          });
        },
        (err: unknown) => {
          for (const entry of batch) entry.reject(err);
        },
      )
      .finally(() => {
        this.#inFlight--;
        this.#next();
      });
  }
}
