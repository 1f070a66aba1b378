export {
  Cluster,
  createCluster,
  type ClusterOptions,
  type NodeConnection,
  type ReadOptions,
  type ReadResult,
  type ReplicaStatus,
  type TransactionClient,
  type WriteResult,
} from './cluster.js';
export {
  DEFAULT_CONSISTENCY,
  formatConsistency,
  parseConsistency,
  type Consistency,
  type ConsistencyLevel,
} from './consistency.js';
export {
  decodeToken,
  describeToken,
  encodeToken,
  mergeTokens,
  requiredPosition,
  type ConsistencyToken,
} from './consistency-token.js';
export { formatLsn, normalizeInsertLsn, parseLsn, type Lsn } from './lsn.js';
export { LagEstimator } from './lag-estimator.js';
export { LsnWaiter } from './lsn-waiter.js';
export type { ReplicaHealth } from './node-monitor.js';
export { RoutingError, type RoutingErrorCode } from './routing-error.js';
export type {
  ReadEvent,
  RouteReason,
  RouteTarget,
  RoutingObserver,
  WaitEvent,
} from './routing-observer.js';
export {
  currentSession,
  newSession,
  recordToken,
  withSession,
  type ConsistencySession,
} from './session.js';
