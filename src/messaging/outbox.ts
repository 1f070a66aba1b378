import { randomUUID } from 'node:crypto';

import { encodeToken, type ConsistencyToken } from '../routing/consistency-token.js';
import { currentSession } from '../routing/session.js';
import {
  CONSISTENCY_TOKEN_HEADER,
  isTopic,
  normalizeHeaders,
  traceHeaders,
  type SqlClient,
} from './message.js';
import { MessagingError } from './messaging-error.js';
import { OUTBOX_CHANNEL, OUTBOX_TABLE } from './schema.js';

/** One message to write to the outbox. */
export interface OutboxMessage {
  /** Dot-separated words of letters, digits, `_` and `-`, such as `orders.placed`. */
  readonly topic: string;
  /** Messages of one key are delivered in the order they were enqueued (an order id, say). */
  readonly key: string;
  /** Any JSON value. */
  readonly payload: unknown;
  /** Extra headers; names are lower-cased. Trace context and consistency token are added. */
  readonly headers?: Readonly<Record<string, string>>;
  /** A uuid; one is generated when absent. Give one to make a retried business transaction idempotent. */
  readonly id?: string;
}

/** Options for {@link enqueue}. */
export interface EnqueueOptions {
  /**
   * A consistency token to send along, merged with the current consistency session's, if any.
   * The relay adds the position of the write itself when it publishes (see `createRelay`).
   */
  readonly token?: ConsistencyToken;
  readonly signal?: AbortSignal;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Writes messages to the transactional outbox through `client`, which must be inside the caller's
 * own transaction: the messages then exist if and only if the business change commits. Captures
 * the active OpenTelemetry context (`traceparent`/`tracestate`, through the global propagator) and
 * the consistency token (given, or of the current session) into each message's headers, and
 * notifies the relay, which PostgreSQL delivers at commit. Returns the message ids, in order.
 *
 * ```ts
 * // inTransaction checks what COMMIT answered: a caught statement error rolls all of it back.
 * await inTransaction(pool, async (client) => {
 *   await client.query('insert into orders (id, amount) values ($1, $2)', [orderId, amount]);
 *   await enqueue(client, { topic: 'orders.placed', key: orderId, payload: { orderId, amount } });
 * });
 * ```
 *
 * Messages of one key are published in the order of their `position`, which is assigned at this
 * insert. Two transactions that enqueue for the same key concurrently commit in an order of their
 * own: a producer that needs their order serialises them (by locking the row the key names, which
 * it usually does anyway to change it), and then position order is commit order.
 *
 * @throws MessagingError `MESSAGING_INVALID_MESSAGE` for an empty topic or key, a bad id, or a
 *   payload that is not JSON.
 */
export async function enqueue(
  client: SqlClient,
  messages: OutboxMessage | readonly OutboxMessage[],
  options: EnqueueOptions = {},
): Promise<string[]> {
  options.signal?.throwIfAborted();
  const list: readonly OutboxMessage[] = Array.isArray(messages)
    ? (messages as readonly OutboxMessage[])
    : [messages as OutboxMessage];
  if (list.length === 0) return [];
  const session = currentSession();
  const token = options.token ?? session?.token;
  const trace = traceHeaders();
  const ids: string[] = [];
  const topics: string[] = [];
  const keys: string[] = [];
  const payloads: string[] = [];
  const headers: string[] = [];
  for (const message of list) {
    const id = message.id ?? randomUUID();
    if (!UUID.test(id)) throw invalid(`message id ${id} is not a uuid`, message);
    if (!isTopic(message.topic)) {
      throw invalid(
        `topic "${message.topic}" must be dot-separated words of letters, digits, _ and -`,
        message,
      );
    }
    if (message.key === '' || message.key.length > 500)
      throw invalid('key must be 1 to 500 characters', message);
    let payload: string | undefined;
    try {
      payload = JSON.stringify(message.payload);
    } catch (cause) {
      throw invalid('payload cannot be serialised as JSON', message, cause);
    }
    if (payload === undefined) throw invalid('payload is not a JSON value', message);
    ids.push(id);
    topics.push(message.topic);
    keys.push(message.key);
    payloads.push(payload);
    headers.push(
      JSON.stringify({
        ...normalizeHeaders(message.headers),
        ...trace,
        ...(token === undefined ? {} : { [CONSISTENCY_TOKEN_HEADER]: encodeToken(token) }),
      }),
    );
  }
  // One round trip: the insert and the notification. NOTIFY is delivered at commit and not at
  // all on rollback, and PostgreSQL folds identical notifications of one transaction into one.
  await client.query(
    `with inserted as (
       insert into ${OUTBOX_TABLE} (id, topic, key, payload, headers)
       select id, topic, key, payload, headers
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::text[]::jsonb[])
              with ordinality as m(id, topic, key, payload, headers, ord)
        order by ord
       returning 1
     )
     select pg_notify('${OUTBOX_CHANNEL}', '') from (select count(*) from inserted) as done`,
    [ids, topics, keys, payloads, headers],
  );
  return ids;
}

function invalid(reason: string, message: OutboxMessage, cause?: unknown): MessagingError {
  return new MessagingError('MESSAGING_INVALID_MESSAGE', `cannot enqueue message: ${reason}`, {
    cause,
    details: { topic: message.topic, key: message.key },
  });
}
