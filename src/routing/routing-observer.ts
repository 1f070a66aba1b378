import type { ConsistencyLevel } from './consistency.js';

/** Why a read went where it went. Bounded set: safe as a metric label. */
export type RouteReason =
  /** `strong`: the primary by definition. */
  | 'strong'
  /** A replica whose cached position already covered the token. */
  | 'caught_up'
  /** A replica that caught up while the read waited. */
  | 'waited'
  /** No replica caught up within the wait bound: the primary. */
  | 'timeout_fallback'
  /** No replica in rotation: the primary. */
  | 'no_replica'
  /** The token came from another cluster or timeline: the primary. */
  | 'token_untrusted'
  /** `bounded-staleness`: a replica within the bound. */
  | 'within_bound'
  /** `bounded-staleness`: no replica within the bound, the primary. */
  | 'too_stale'
  /** `eventual`: any replica in rotation. */
  | 'any_replica'
  /** `sticky-window`: within the window after the session's last write, the primary. */
  | 'sticky_window'
  /** The replica failed the read (connection lost, conflict with recovery): retried on the primary. */
  | 'replica_error'
  /**
   * The read's connection reached another server than the one whose position chose the replica
   * (a restart, or another server behind the same address): the primary.
   */
  | 'server_changed';

/** Where a read was served: the primary, or a replica by name. */
export type RouteTarget = 'primary' | 'replica';

/** A routed read, once it has finished. */
export interface ReadEvent {
  readonly consistency: ConsistencyLevel;
  readonly target: RouteTarget;
  /** The node's name: `primary` or the replica's. */
  readonly node: string;
  readonly reason: RouteReason;
  readonly durationMs: number;
}

/** A wait for a replica to catch up, once it has finished. */
export interface WaitEvent {
  /** The replica that caught up, or `undefined` after a timeout. */
  readonly replica: string | undefined;
  readonly outcome: 'caught_up' | 'timeout';
  readonly waitedMs: number;
  /** Time from the write's commit to its visibility on the replica, when the token carries the write time. */
  readonly visibilityMs: number | undefined;
}

/**
 * Hooks through which the routing core reports what it does, without knowing how it is measured
 * (`src/telemetry` turns them into Prometheus metrics). Hooks must not throw; the cluster guards
 * them anyway.
 */
export interface RoutingObserver {
  onRead?(event: ReadEvent): void;
  onWait?(event: WaitEvent): void;
  /** Every replica went out of rotation, or came back. */
  onAllReplicasOut?(out: boolean): void;
}
