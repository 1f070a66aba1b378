import { RoutingError } from './routing-error.js';

/**
 * How fresh a read must be.
 *
 * - `strong`: the primary.
 * - `read-your-writes`: a replica that has replayed the session's latest write (the default).
 * - `monotonic`: read-your-writes, and never older than anything the session already read.
 * - `bounded-staleness`: a replica whose lag is within `maxStalenessMs`.
 * - `eventual`: any healthy replica.
 * - `sticky-window`: the primary for `windowMs` after the session's latest write, replicas
 *   otherwise (Rails' approach; kept for comparison, it guesses where the others prove).
 */
export type Consistency =
  | { readonly level: 'strong' }
  | { readonly level: 'read-your-writes' }
  | { readonly level: 'monotonic' }
  | { readonly level: 'bounded-staleness'; readonly maxStalenessMs: number }
  | { readonly level: 'eventual' }
  | { readonly level: 'sticky-window'; readonly windowMs: number };

export type ConsistencyLevel = Consistency['level'];

export const DEFAULT_CONSISTENCY: Consistency = { level: 'read-your-writes' };

const MAX_BOUND_MS = 24 * 60 * 60 * 1000;

/** Quotes client input for a message, cut short: a header can be kilobytes long. */
function quote(text: string): string {
  return text.length > 40 ? `"${text.slice(0, 40)}…"` : `"${text}"`;
}

function bound(text: string, level: string): number {
  if (!/^\d{1,9}$/.test(text)) {
    throw new RoutingError(
      'CONSISTENCY_INVALID',
      `${level} needs a whole number of milliseconds, as in ${level}=500; got ${quote(text)}`,
    );
  }
  const ms = Number(text);
  if (ms > MAX_BOUND_MS)
    throw new RoutingError('CONSISTENCY_INVALID', `${level}=${ms} is more than a day`);
  return ms;
}

/**
 * Parses the `X-Consistency` header form: `strong`, `read-your-writes`, `monotonic`,
 * `bounded-staleness=<ms>`, `eventual` or `sticky-window=<ms>`.
 *
 * @throws RoutingError `CONSISTENCY_INVALID` naming what was wrong.
 */
export function parseConsistency(text: string): Consistency {
  const value = text.trim();
  const eq = value.indexOf('=');
  const level = eq === -1 ? value : value.slice(0, eq);
  const argument = eq === -1 ? undefined : value.slice(eq + 1);
  switch (level) {
    case 'strong':
    case 'read-your-writes':
    case 'monotonic':
    case 'eventual':
      if (argument !== undefined)
        throw new RoutingError('CONSISTENCY_INVALID', `${level} takes no parameter`);
      return { level };
    case 'bounded-staleness':
      if (argument === undefined)
        throw new RoutingError(
          'CONSISTENCY_INVALID',
          'bounded-staleness needs a bound, as in bounded-staleness=500',
        );
      return { level, maxStalenessMs: bound(argument, level) };
    case 'sticky-window':
      if (argument === undefined)
        throw new RoutingError(
          'CONSISTENCY_INVALID',
          'sticky-window needs a window, as in sticky-window=2000',
        );
      return { level, windowMs: bound(argument, level) };
    default:
      throw new RoutingError(
        'CONSISTENCY_INVALID',
        `unknown consistency level ${quote(level)}; use strong, read-your-writes, monotonic, bounded-staleness=<ms>, eventual or sticky-window=<ms>`,
      );
  }
}

/** The header form of a consistency, the inverse of {@link parseConsistency}. */
export function formatConsistency(consistency: Consistency): string {
  switch (consistency.level) {
    case 'bounded-staleness':
      return `bounded-staleness=${consistency.maxStalenessMs}`;
    case 'sticky-window':
      return `sticky-window=${consistency.windowMs}`;
    default:
      return consistency.level;
  }
}
