/**
 * The one base class for every error replikit raises on purpose.
 *
 * `code` is stable and meant for programs (the HTTP adapter maps codes to status codes);
 * `message` is meant for people; `details` carries the structured facts behind the message.
 *
 * ```ts
 * try {
 *   await stack.start();
 * } catch (err) {
 *   if (err instanceof ReplikitError && err.code === 'STACK_PORT_IN_USE') console.error(err.message);
 * }
 * ```
 */
export class ReplikitError extends Error {
  override readonly name: string = 'ReplikitError';
  readonly code: string;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: string,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
  }
}

/** An error's message, or any other thrown value as a string. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The SQLSTATE of a PostgreSQL error (such as `23514`, a check violation), if `err` is one. */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
