import type { SagaRecord } from './saga-log.js';

/** A wait that can be given up. */
export interface Wakeup {
  readonly promise: Promise<void>;
  cancel(): void;
}

/**
 * What `SagaEngine.wait` needs from the engine's own process: a signal when a saga it holds
 * settles (finishes, needs attention, or is let go), and the final state of the sagas it settled
 * lately, so that waiting for a saga this process ran costs no read of the log.
 */
export class SettledSagas {
  readonly #waiters = new Map<string, Set<() => void>>();
  readonly #recent = new Map<string, { readonly at: number; readonly record: SagaRecord }>();
  readonly #keepMs: number;
  readonly #max: number;

  /** Keeps each final state for `keepMs` (default 30 s), at most `max` of them (default 10,000). */
  constructor(options: { readonly keepMs?: number; readonly max?: number } = {}) {
    this.#keepMs = options.keepMs ?? 30_000;
    this.#max = options.max ?? 10_000;
  }

  /** The final state this process wrote for the saga lately, if any. */
  get(id: string): SagaRecord | undefined {
    return this.#recent.get(id)?.record;
  }

  /** Records a settled saga's state (`record` undefined: let go without a final state) and wakes its waiters. */
  settle(id: string, record?: SagaRecord): void {
    if (record !== undefined) {
      const now = Date.now();
      // Oldest first (insertion order): drop what has expired, and the oldest beyond the cap.
      for (const [key, entry] of this.#recent) {
        if (now - entry.at < this.#keepMs && this.#recent.size < this.#max) break;
        this.#recent.delete(key);
      }
      this.#recent.set(id, { at: now, record });
    }
    const waiters = this.#waiters.get(id);
    if (waiters === undefined) return;
    this.#waiters.delete(id);
    for (const wake of waiters) wake();
  }

  /** Forgets a saga's final state: it runs again (claimed, retried or compensated by a person). */
  forget(id: string): void {
    this.#recent.delete(id);
  }

  /** Resolves when the saga settles here, `ms` pass, or `signal` aborts. Register before reading the log. */
  wakeup(id: string, ms: number, signal?: AbortSignal): Wakeup {
    const waiters = this.#waiters.get(id) ?? new Set();
    this.#waiters.set(id, waiters);
    let timer: NodeJS.Timeout | undefined;
    let wake = (): void => undefined;
    const promise = new Promise<void>((resolve) => {
      wake = (): void => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.#waiters.get(id) === waiters) this.#waiters.delete(id);
        signal?.removeEventListener('abort', wake);
        resolve();
      };
      timer = setTimeout(wake, ms);
      waiters.add(wake);
      signal?.addEventListener('abort', wake, { once: true });
    });
    return { promise, cancel: () => wake() };
  }
}
