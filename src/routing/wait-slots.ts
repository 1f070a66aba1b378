import { isBulkheadRejectedError, type BulkheadPolicy } from 'cockatiel';

/**
 * Runs `wait` in one of `slots`' execution slots, or at once when there is no bulkhead. When
 * every slot is taken the wait does not queue: `refused` makes the error to throw instead, so a
 * flood of reads that would wait is turned away at once rather than piling up.
 */
export async function waitInSlot<T>(
  slots: BulkheadPolicy | undefined,
  wait: () => Promise<T>,
  refused: (cause: unknown) => Error,
): Promise<T> {
  if (slots === undefined) return wait();
  try {
    return await slots.execute(wait);
  } catch (err) {
    throw isBulkheadRejectedError(err) ? refused(err) : err;
  }
}
