import type { z } from 'zod';

import { ReplikitError } from '../errors.js';

/**
 * Parses `value` with a zod schema, or throws a `VALIDATION_FAILED` error (400) that names every
 * field that was wrong, for the problem-details handler.
 *
 * ```ts
 * const body = parseInput(createUserBody, req.body, 'body');
 * ```
 */
export function parseInput<S extends z.ZodType>(
  schema: S,
  value: unknown,
  where: 'body' | 'query' | 'path' | 'header',
): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.map(String).join('.') || where,
    message: issue.message,
  }));
  const first = issues[0];
  throw new ReplikitError(
    'VALIDATION_FAILED',
    `invalid ${where}: ${first === undefined ? 'invalid value' : `${first.path}: ${first.message}`}${issues.length > 1 ? ` (and ${issues.length - 1} more)` : ''}`,
    { details: { issues } },
  );
}
