import type { GlobalPosition } from './position.js';

/** Metadata every event carries, next to whatever the appender adds. */
export interface EventMetadata {
  /** The W3C `traceparent` of the append, linking the projections' spans to the appending trace. */
  readonly traceparent?: string;
  /** The request or process that started the chain of events this one belongs to. */
  readonly correlationId?: string;
  /** The message or event that directly caused this one. */
  readonly causationId?: string;
  readonly [key: string]: unknown;
}

/** An event to append. */
export interface EventInput<D = unknown> {
  /**
   * A UUID naming the event. Re-appending events with the same ids returns the first append's
   * result instead of writing them twice, so a retried command is harmless; default: a new
   * time-ordered UUID (version 7), which keeps the store's index on event ids compact.
   */
  readonly id?: string;
  readonly type: string;
  readonly data: D;
  /** The version of `data`'s schema for this type; upcasters bring old ones up to date on read. Default 1. */
  readonly schemaVersion?: number;
  readonly metadata?: Readonly<Record<string, unknown>>;
}

/** An event as stored and read back (after upcasting). */
export interface RecordedEvent<D = unknown> {
  readonly id: string;
  readonly streamId: string;
  /** 1 for a stream's first event. */
  readonly streamVersion: number;
  readonly type: string;
  /** The schema version of `data` as returned, after upcasting. */
  readonly schemaVersion: number;
  /** The schema version the row was written with. */
  readonly storedSchemaVersion: number;
  readonly data: D;
  readonly metadata: EventMetadata;
  /** When the appending transaction started. */
  readonly recordedAt: Date;
  readonly globalPosition: GlobalPosition;
}

/** A row of `replikit_events` as the queries below select it. */
export interface EventRow {
  position: string;
  tx_id: string;
  stream_id: string;
  stream_version: string;
  event_id: string;
  type: string;
  schema_version: number;
  data: unknown;
  metadata: Record<string, unknown> | null;
  created_at: Date;
}

/**
 * The columns {@link EventRow} names, for SELECT lists. The text aliases shadow the columns in
 * ORDER BY (which would then sort positions as text): order by `e.<column>`, the table aliased `e`.
 */
export const EVENT_COLUMNS =
  'position::text as position, tx_id::text as tx_id, stream_id, stream_version::text as stream_version, event_id::text as event_id, type, schema_version, data, metadata, created_at';
