/**
 * Choreography messaging: the transactional outbox, its relay, the inbox-backed consumer, and the
 * PostgreSQL transport. The NATS JetStream transport is `replikit/nats`, so that only services
 * that use it load the NATS client.
 *
 * @packageDocumentation
 */
export type { MessagingLogger } from './connections.js';
export {
  createConsumer,
  Consumer,
  type ConsumerObserver,
  type ConsumerOptions,
  type DeadLetter,
  type DeadLetterEvent,
  type DuplicateEvent,
  type HandledEvent,
  type MessageHandler,
  type RetryEvent,
} from './consumer.js';
export {
  CONSISTENCY_TOKEN_HEADER,
  type MessageHeaders,
  type OutgoingMessage,
  type ReceivedMessage,
  type SqlClient,
} from './message.js';
export { MessagingError, type MessagingErrorCode } from './messaging-error.js';
export { enqueue, type EnqueueOptions, type OutboxMessage } from './outbox.js';
export { createPostgresTransport, type PostgresTransportOptions } from './postgres-transport.js';
export {
  createRelay,
  Relay,
  type PublishedEvent,
  type PublishFailedEvent,
  type RelayObserver,
  type RelayOptions,
  type RelayStats,
} from './relay.js';
export { inboxMigrations, outboxMigrations, postgresTransportMigrations } from './schema.js';
export type {
  Delivery,
  DeliveryOutcome,
  SubscribeOptions,
  Subscription,
  Transport,
} from './transport.js';
