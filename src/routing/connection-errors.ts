const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/**
 * SQLSTATEs after which the same read may succeed elsewhere: connection exceptions (class 08),
 * a server shutting down or starting (57P01–57P03), and a standby cancelling a query that
 * conflicts with replay (40001 from recovery conflicts).
 */
const RETRYABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '40001']);

const MESSAGES = [
  /Connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /Query read timeout/i,
  /Client has encountered a connection error/i,
];

/** Whether `err` says the node could not serve the query, rather than that the query was wrong. */
export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (NETWORK_CODES.has(code) || code.startsWith('08') || RETRYABLE_SQLSTATES.has(code))
      return true;
    // The server answered with a SQLSTATE of another class: the query was at fault, whatever its
    // message says (a relation may well be named "connection terminated").
    if (/^[0-9A-Z]{5}$/.test(code)) return false;
  }
  return MESSAGES.some((pattern) => pattern.test(err.message));
}
