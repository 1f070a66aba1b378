import { ReplikitError } from '../errors.js';

/** Why the local stack could not do what was asked. */
export type StackErrorCode =
  | 'STACK_BINARY_MISSING'
  | 'STACK_PORT_IN_USE'
  | 'STACK_INCOMPATIBLE_DATA'
  | 'STACK_UNREACHABLE_PATH'
  | 'STACK_START_FAILED'
  | 'STACK_COMMAND_FAILED'
  | 'STACK_NOT_INITIALISED'
  | 'STACK_UNKNOWN_NODE'
  | 'STACK_NODE_STOPPED'
  | 'STACK_DIVERGED'
  | 'STACK_TIMEOUT';

/** An error of the local replication stack; `message` is one line meant for the person at the terminal. */
export class StackError extends ReplikitError {
  override readonly name = 'StackError';
  declare readonly code: StackErrorCode;

  constructor(
    code: StackErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
