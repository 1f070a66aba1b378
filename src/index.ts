/**
 * replikit: consistency-aware read routing over a PostgreSQL primary and its replicas.
 *
 * The core knows nothing of Express; the HTTP adapter is `replikit/express`, the Prometheus and
 * OpenTelemetry wiring `replikit/telemetry`, the local replication stack `replikit/stack`.
 *
 * @packageDocumentation
 */
export { ReplikitError } from './errors.js';
export {
  Cluster,
  createCluster,
  currentSession,
  decodeToken,
  DEFAULT_CONSISTENCY,
  describeToken,
  encodeToken,
  formatConsistency,
  formatLsn,
  LagEstimator,
  LsnWaiter,
  mergeTokens,
  newSession,
  normalizeInsertLsn,
  parseConsistency,
  parseLsn,
  recordToken,
  requiredPosition,
  RoutingError,
  withSession,
  type ClusterOptions,
  type Consistency,
  type ConsistencyLevel,
  type ConsistencySession,
  type ConsistencyToken,
  type Lsn,
  type NodeConnection,
  type ReadEvent,
  type ReadOptions,
  type ReadResult,
  type ReplicaHealth,
  type ReplicaStatus,
  type RouteReason,
  type RouteTarget,
  type RoutingErrorCode,
  type RoutingObserver,
  type TransactionClient,
  type WaitEvent,
  type WriteResult,
} from './routing/index.js';
