import type { OutgoingMessage } from './message.js';

/** What a consumer decided about one delivery. */
export type DeliveryOutcome =
  /** Done with (handled, a duplicate, or parked as a dead letter): never deliver it to this group again. */
  | { readonly action: 'ack' }
  /** Deliver it again after `delayMs`, and nothing after it of the same key before then. */
  | { readonly action: 'retry'; readonly delayMs: number };

/** One delivery of a message to a consumer group. */
export interface Delivery {
  readonly message: OutgoingMessage;
  /** 1 on the first delivery to the group, counting up on each redelivery. */
  readonly attempt: number;
}

/** Options for {@link Transport.subscribe}. */
export interface SubscribeOptions {
  /**
   * The consumer group: every group gets every message of its topics; the processes of one group
   * share its messages. Letters, digits, `_` and `-`.
   */
  readonly group: string;
  /** Topics the group consumes. */
  readonly topics: readonly string[];
  /**
   * Called for each delivery. The transport calls it for one key's messages one at a time and in
   * order; a rejection counts as `retry` after a transport-chosen delay.
   */
  readonly handle: (delivery: Delivery, signal: AbortSignal) => Promise<DeliveryOutcome>;
  readonly signal?: AbortSignal;
}

/** A running subscription; `close` stops taking deliveries and waits for those in hand. */
export interface Subscription {
  close(): Promise<void>;
}

/**
 * How messages travel from relays to consumers. Implementations: {@link createPostgresTransport}
 * (embedded, no extra server) and {@link createNatsTransport} (NATS JetStream).
 *
 * The contract, which `test/support/messaging-contract.ts` checks against each:
 * - `publish` stores the batch durably, in the given order per key, before it resolves; a rejected
 *   publish may have stored some of the batch (the relay then publishes all of it again, and
 *   the inbox drops the duplicates);
 * - every group subscribed to a topic gets each message published to it after the group first
 *   subscribed, at least once;
 * - a group gets one key's messages in publish order, the next only after the previous one was
 *   acknowledged, whichever of the group's processes takes them.
 */
export interface Transport {
  /** `postgres` or `nats`, for spans and logs. */
  readonly kind: string;
  publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void>;
  subscribe(options: SubscribeOptions): Promise<Subscription>;
  /** Closes the transport's own connections (not a pool or connection it was given). */
  close(): Promise<void>;
}
