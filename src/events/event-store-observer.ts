/** How an append ended, as `replikit_eventstore_appends_total{outcome}` counts it. */
export type AppendOutcome = 'appended' | 'duplicate' | 'conflict' | 'error';

/** One finished append. */
export interface AppendEvent {
  readonly outcome: AppendOutcome;
  readonly events: number;
  readonly durationMs: number;
}

/** The event log's horizon, sampled in the background (see `horizonSampleIntervalMs`). */
export interface HorizonSample {
  /**
   * Age in seconds of the oldest transaction that holds back the horizon (any transaction with
   * an id on the server, prepared ones included): while it stays open, projections see no event
   * appended after it started. 0 when there is none.
   */
  readonly xminAgeSeconds: number;
}

/** One projected batch, committed. */
export interface ProjectionBatchEvent {
  readonly projection: string;
  readonly version: number;
  readonly events: number;
  readonly durationMs: number;
}

/** Where one projection version stands, sampled by its runner while it holds the lock. */
export interface ProjectionStatusSample {
  readonly projection: string;
  readonly version: number;
  readonly status: 'active' | 'building' | 'retired';
  /** Committed events after the checkpoint (capped at the runner's `lagCountLimit`). */
  readonly lagEvents: number;
  /** Age of the oldest committed event not yet projected; 0 when caught up. */
  readonly lagSeconds: number;
  /** Append time of the last event projected, `undefined` before the first. */
  readonly lastProcessedAt: Date | undefined;
}

/** Hooks through which the store and its runners report what they do (`src/telemetry` makes metrics of them). */
export interface EventStoreObserver {
  onAppend?(event: AppendEvent): void;
  onHorizon?(sample: HorizonSample): void;
  onProjectionBatch?(event: ProjectionBatchEvent): void;
  onProjectionStatus?(sample: ProjectionStatusSample): void;
  /** A runner stopped reporting (stopped, retired, or lost its lock): forget its gauges. */
  onProjectionGone?(projection: string, version: number): void;
}

/** Where warnings go. */
export interface EventStoreLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
}
