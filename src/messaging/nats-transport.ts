import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import {
  connect,
  headers as natsHeaders,
  nanos,
  type NatsConnection,
} from '@nats-io/transport-node';

import { errorMessage, type OutgoingMessage } from './message.js';
import { MessagingError } from './messaging-error.js';
import { isName, type MessagingLogger } from './connections.js';
import type { DeliveryOutcome, SubscribeOptions, Subscription, Transport } from './transport.js';

/** Options for {@link createNatsTransport}. */
export interface NatsTransportOptions {
  /** Servers to connect to. Default `127.0.0.1:4222`. Ignored when `connection` is given. */
  readonly servers?: string | readonly string[];
  /** A connection to use instead of opening one; it is left open on close. */
  readonly connection?: NatsConnection;
  /** JetStream stream holding the messages, created when missing. Letters, digits, `_`, `-`. */
  readonly stream: string;
  /** Subjects are `<subjectPrefix>.<topic>`; the stream takes `<subjectPrefix>.>`. Default `replikit`. */
  readonly subjectPrefix?: string;
  /**
   * Unacknowledged messages a group may have out at once (`max_ack_pending`). The default, 1,
   * keeps each key's order across redeliveries and across the group's processes; a larger value
   * trades that order for throughput (a message waiting to be retried no longer holds back the
   * ones behind it). Only applies when the group's durable consumer is created.
   */
  readonly maxAckPending?: number;
  /** Time a delivery may stay unacknowledged before JetStream redelivers it. Default 30 000 ms. */
  readonly ackWaitMs?: number;
  /** Window in which JetStream drops a republished message id (`Nats-Msg-Id`). Default 120 000 ms. */
  readonly duplicateWindowMs?: number;
  readonly logger?: MessagingLogger;
}

const KEY_HEADER = 'replikit-key';
const ID_HEADER = 'replikit-message-id';
/** Delay before a delivery whose handling threw (rather than answered) is tried again. */
const FAILED_HANDLE_DELAY_MS = 1000;

/**
 * The NATS JetStream transport, for services on many machines.
 *
 * - One stream (`stream`) over `<subjectPrefix>.>`; a message goes to `<subjectPrefix>.<topic>`
 *   with its id as `Nats-Msg-Id`, so a message the relay publishes again (after a crash between
 *   publish and marking) is dropped by JetStream within the duplicate window, and by the inbox
 *   after it. Key, id, trace context and consistency token travel as headers.
 * - `publish` sends one key's messages one after the other, each confirmed before the next, so a
 *   failure never leaves a later message of a key stored without an earlier one.
 * - A consumer group is a durable pull consumer named after the group, with explicit acks and
 *   `max_ack_pending` 1 by default: the group's processes share it, and each key's messages are
 *   handled in stream order. A retry is a `nak` with a delay, which JetStream honours durably;
 *   with one message pending, the messages behind it wait.
 * - A group with several topics filters on the whole prefix and acknowledges messages of other
 *   topics without handling them (servers before 2.10 take one filter subject per consumer).
 *
 * ```ts
 * const transport = createNatsTransport({ servers: 'nats://127.0.0.1:4222', stream: 'ORDERS' });
 * ```
 */
export function createNatsTransport(options: NatsTransportOptions): Transport {
  return new NatsTransport(options);
}

class NatsTransport implements Transport {
  readonly kind = 'nats';
  readonly #options: NatsTransportOptions;
  readonly #prefix: string;
  readonly #subscriptions = new Set<NatsSubscription>();
  #connected:
    Promise<{ nc: NatsConnection; js: JetStreamClient; jsm: JetStreamManager }> | undefined;
  #closed = false;

  constructor(options: NatsTransportOptions) {
    if (!isName(options.stream)) {
      throw new RangeError(`stream "${options.stream}" must be 1-64 letters, digits, _ or -`);
    }
    this.#options = options;
    this.#prefix = options.subjectPrefix ?? 'replikit';
  }

  /** Connects and creates the stream once; a failed attempt is retried by the next call. */
  #connect(): Promise<{ nc: NatsConnection; js: JetStreamClient; jsm: JetStreamManager }> {
    this.#connected ??= (async () => {
      const nc =
        this.#options.connection ??
        (await connect({
          servers:
            typeof this.#options.servers === 'string'
              ? this.#options.servers
              : [...(this.#options.servers ?? ['127.0.0.1:4222'])],
          name: 'replikit-messaging',
        }));
      try {
        const jsm = await jetstreamManager(nc);
        const subjects = [`${this.#prefix}.>`];
        try {
          await jsm.streams.info(this.#options.stream);
        } catch {
          await jsm.streams.add({
            name: this.#options.stream,
            subjects,
            duplicate_window: nanos(this.#options.duplicateWindowMs ?? 120_000),
          });
        }
        return { nc, js: jetstream(nc), jsm };
      } catch (err) {
        if (this.#options.connection === undefined) await nc.close().catch(() => undefined);
        throw err;
      }
    })().catch((err: unknown) => {
      this.#connected = undefined;
      throw err;
    });
    return this.#connected;
  }

  async publish(messages: readonly OutgoingMessage[], signal?: AbortSignal): Promise<void> {
    this.#assertOpen();
    signal?.throwIfAborted();
    if (messages.length === 0) return;
    let js: JetStreamClient;
    try {
      ({ js } = await this.#connect());
    } catch (cause) {
      throw publishFailed(messages.length, cause);
    }
    // Keys go concurrently; within a key, each publish waits for the previous one's ack.
    const byKey = new Map<string, OutgoingMessage[]>();
    for (const message of messages) {
      const list = byKey.get(message.key);
      if (list === undefined) byKey.set(message.key, [message]);
      else list.push(message);
    }
    const results = await Promise.allSettled(
      [...byKey.values()].map(async (list) => {
        for (const message of list) {
          signal?.throwIfAborted();
          const h = natsHeaders();
          for (const [name, value] of Object.entries(message.headers)) h.set(name, value);
          h.set(KEY_HEADER, message.key);
          h.set(ID_HEADER, message.id);
          await js.publish(`${this.#prefix}.${message.topic}`, JSON.stringify(message.payload), {
            msgID: message.id,
            headers: h,
          });
        }
      }),
    );
    const failed = results.find((result) => result.status === 'rejected');
    if (failed !== undefined) throw publishFailed(messages.length, failed.reason);
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.#assertOpen();
    if (!isName(options.group)) {
      throw new MessagingError(
        'MESSAGING_SUBSCRIBE_FAILED',
        `group "${options.group}" must be 1-64 letters, digits, _ or -`,
      );
    }
    const topics = new Set(options.topics);
    const filter = topics.size === 1 ? `${this.#prefix}.${[...topics][0]!}` : `${this.#prefix}.>`;
    let messages: ConsumerMessages;
    try {
      const { js, jsm } = await this.#connect();
      try {
        await jsm.consumers.info(this.#options.stream, options.group);
      } catch {
        await jsm.consumers.add(this.#options.stream, {
          durable_name: options.group,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          filter_subject: filter,
          max_ack_pending: this.#options.maxAckPending ?? 1,
          ack_wait: nanos(this.#options.ackWaitMs ?? 30_000),
          // Redelivery is bounded by the consumer, which parks a message in its dead-letter state.
          max_deliver: -1,
        });
      }
      const consumer = await js.consumers.get(this.#options.stream, options.group);
      messages = await consumer.consume({ max_messages: 64 });
    } catch (cause) {
      throw new MessagingError(
        'MESSAGING_SUBSCRIBE_FAILED',
        `could not subscribe group ${options.group} to stream ${this.#options.stream}: ${errorMessage(cause)}`,
        { cause, details: { group: options.group, stream: this.#options.stream } },
      );
    }
    const subscription = new NatsSubscription(messages, {
      prefix: this.#prefix,
      topics,
      options,
      logger: this.#options.logger,
      onClose: () => this.#subscriptions.delete(subscription),
    });
    this.#subscriptions.add(subscription);
    return subscription;
  }

  #assertOpen(): void {
    if (this.#closed) throw new MessagingError('MESSAGING_CLOSED', 'the transport has been closed');
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([...this.#subscriptions].map((s) => s.close()));
    const connected = await this.#connected?.catch(() => undefined);
    if (connected !== undefined && this.#options.connection === undefined)
      await connected.nc.close();
  }
}

function publishFailed(count: number, cause: unknown): MessagingError {
  return new MessagingError(
    'MESSAGING_PUBLISH_FAILED',
    `publishing ${count} messages to JetStream failed: ${errorMessage(cause)}`,
    { cause, details: { count } },
  );
}

interface SubscriptionContext {
  readonly prefix: string;
  readonly topics: ReadonlySet<string>;
  readonly options: SubscribeOptions;
  readonly logger: MessagingLogger | undefined;
  readonly onClose: () => void;
}

class NatsSubscription implements Subscription {
  readonly #messages: ConsumerMessages;
  readonly #context: SubscriptionContext;
  readonly #abort = new AbortController();
  readonly #loop: Promise<void>;

  constructor(messages: ConsumerMessages, context: SubscriptionContext) {
    this.#messages = messages;
    this.#context = context;
    context.options.signal?.addEventListener('abort', () => void this.close(), { once: true });
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    for await (const msg of this.#messages) {
      if (this.#abort.signal.aborted) break;
      try {
        await this.#deliver(msg);
      } catch (err) {
        // Unacknowledged, the message comes back after the ack wait.
        this.#context.logger?.warn(
          { group: this.#context.options.group, err: errorMessage(err) },
          'a JetStream delivery could not be settled',
        );
      }
    }
  }

  async #deliver(msg: JsMsg): Promise<void> {
    const topic = msg.subject.slice(this.#context.prefix.length + 1);
    const received: Record<string, string> = {};
    for (const name of msg.headers?.keys() ?? []) {
      const lower = name.toLowerCase();
      if (lower.startsWith('nats-')) continue;
      received[lower] = msg.headers!.get(name);
    }
    const id = received[ID_HEADER] ?? msg.headers?.get('Nats-Msg-Id') ?? '';
    const key = received[KEY_HEADER] ?? '';
    delete received[ID_HEADER];
    delete received[KEY_HEADER];
    if (!this.#context.topics.has(topic)) {
      msg.ack();
      return;
    }
    let outcome: DeliveryOutcome;
    try {
      outcome = await this.#context.options.handle(
        {
          attempt: msg.info.deliveryCount,
          message: { id, topic, key, payload: JSON.parse(msg.string()), headers: received },
        },
        this.#abort.signal,
      );
    } catch (err) {
      this.#context.logger?.warn(
        { group: this.#context.options.group, messageId: id, err: errorMessage(err) },
        'handling a delivery failed; it will be delivered again',
      );
      outcome = { action: 'retry', delayMs: FAILED_HANDLE_DELAY_MS };
    }
    if (outcome.action === 'ack') {
      // Wait for the server to record the ack, so the group's next message is not handed out
      // while this one could still be redelivered.
      await msg
        .ackAck()
        .catch((err: unknown) =>
          this.#context.logger?.warn(
            { group: this.#context.options.group, messageId: id, err: errorMessage(err) },
            'acknowledgement not confirmed; JetStream may deliver the message again',
          ),
        );
    } else {
      msg.nak(Math.max(0, Math.round(outcome.delayMs)));
    }
  }

  async close(): Promise<void> {
    if (!this.#abort.signal.aborted) {
      this.#abort.abort();
      this.#context.onClose();
      await this.#messages.close().catch(() => undefined);
    }
    await this.#loop.catch((err: unknown) =>
      this.#context.logger?.warn(
        { err: errorMessage(err) },
        'JetStream subscription ended with an error',
      ),
    );
  }
}
