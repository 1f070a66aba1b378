import {
  context,
  propagation,
  ROOT_CONTEXT,
  type Context,
  type TextMapGetter,
} from '@opentelemetry/api';
import type pg from 'pg';

import {
  decodeToken,
  encodeToken,
  mergeTokens,
  type ConsistencyToken,
} from '../routing/consistency-token.js';

/**
 * Message headers: lower-case names, string values. They carry the W3C trace context
 * (`traceparent`, `tracestate`) and the producer's consistency token ({@link CONSISTENCY_TOKEN_HEADER}).
 */
export type MessageHeaders = Readonly<Record<string, string>>;

/**
 * Header holding the producer's consistency token (the same text form as the HTTP
 * `X-Consistency-Token` header), so that a consumer can read through the router what its
 * producer wrote (a token is portable: it names its cluster, not a server).
 */
export const CONSISTENCY_TOKEN_HEADER = 'x-consistency-token';

/** A message as the relay hands it to a transport: taken from the outbox, in order per key. */
export interface OutgoingMessage {
  /** A uuid, stable across redeliveries: inboxes deduplicate on it, NATS on `Nats-Msg-Id`. */
  readonly id: string;
  /** Dot-separated words of letters, digits, `_` and `-`, such as `orders.placed`. */
  readonly topic: string;
  /** Messages of one key are delivered in the order they were written. */
  readonly key: string;
  /** Any JSON value. */
  readonly payload: unknown;
  readonly headers: MessageHeaders;
}

/** A message as a consumer's handler receives it. */
export interface ReceivedMessage<P = unknown> extends OutgoingMessage {
  readonly payload: P;
  /** 1 on first delivery to this consumer group, then counting redeliveries. */
  readonly attempt: number;
  /**
   * The producer's consistency token, if the message carried a valid one. The handler also runs
   * inside a consistency session holding it, so reads through the router see the producer's write.
   */
  readonly token: ConsistencyToken | undefined;
}

/** The subset of a `pg` client the outbox and inbox need; `Cluster.transaction`'s client fits too. */
export interface SqlClient {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<pg.QueryResult<R>>;
}

const TOPIC = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;

/** Whether `topic` is a valid topic name (also a valid NATS subject suffix). */
export function isTopic(topic: string): boolean {
  return topic.length <= 200 && TOPIC.test(topic);
}

/** Headers carrying the active trace context of `ctx` (W3C by default, whatever propagator is global). */
export function traceHeaders(ctx: Context = context.active()): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

const getter: TextMapGetter<MessageHeaders> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key.toLowerCase()],
};

/** The producer's trace context carried by `headers` (the root context when there is none). */
export function extractTraceContext(headers: MessageHeaders): Context {
  return propagation.extract(ROOT_CONTEXT, headers, getter);
}

/**
 * The consistency token in `headers`, or `undefined` when there is none or it is malformed (a
 * malformed token must not make the message undeliverable: the consumer then reads as it
 * would without one, and the router's own consistency rules apply).
 */
export function tokenFromHeaders(headers: MessageHeaders): ConsistencyToken | undefined {
  const text = headers[CONSISTENCY_TOKEN_HEADER];
  if (text === undefined) return undefined;
  try {
    return decodeToken(text);
  } catch {
    return undefined;
  }
}

/** `headers` with `token` merged into the token they carry. */
export function withToken(
  headers: MessageHeaders,
  token: ConsistencyToken | undefined,
): MessageHeaders {
  const merged = mergeTokens(tokenFromHeaders(headers), token);
  return merged === undefined
    ? headers
    : { ...headers, [CONSISTENCY_TOKEN_HEADER]: encodeToken(merged) };
}

/** Lower-cases header names and keeps string values only. */
export function normalizeHeaders(
  headers: Readonly<Record<string, unknown>> | undefined,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (typeof value === 'string') out[name.toLowerCase()] = value;
  }
  return out;
}

/** An error's message (the project's one helper, here for the messaging modules). */
export { errorMessage } from '../errors.js';
