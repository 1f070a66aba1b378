import { ReplikitError } from '../errors.js';

/**
 * Stable codes of {@link MessagingError}:
 * - `MESSAGING_INVALID_MESSAGE`: a message to enqueue lacks a topic or key, or its payload is not JSON;
 * - `MESSAGING_CLOSED`: the relay, consumer or transport has been closed;
 * - `MESSAGING_PUBLISH_FAILED`: the transport refused or could not confirm a publish (the relay retries);
 * - `MESSAGING_SUBSCRIBE_FAILED`: the transport could not set up a consumer group's subscription;
 * - `MESSAGING_HANDLER_FAILED`: a consumer's handler threw (the message is retried, then dead-lettered);
 * - `MESSAGING_DEAD_LETTER`: a message was parked after its last allowed attempt.
 */
export type MessagingErrorCode =
  | 'MESSAGING_INVALID_MESSAGE'
  | 'MESSAGING_CLOSED'
  | 'MESSAGING_PUBLISH_FAILED'
  | 'MESSAGING_SUBSCRIBE_FAILED'
  | 'MESSAGING_HANDLER_FAILED'
  | 'MESSAGING_DEAD_LETTER';

/**
 * An error of the outbox, relay, transports or consumers.
 *
 * ```ts
 * consumer = createConsumer({ ..., observer: {
 *   onDeadLetter: ({ error }) => {
 *     if (error instanceof MessagingError) alert(error.code, error.details);
 *   },
 * } });
 * ```
 */
export class MessagingError extends ReplikitError {
  override readonly name = 'MessagingError';
  declare readonly code: MessagingErrorCode;

  constructor(
    code: MessagingErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}
