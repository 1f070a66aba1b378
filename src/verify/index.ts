/**
 * Checking histories of a run against what the consistency levels promise, and exporting them for
 * Jepsen's Elle. Written apart from the routing code on purpose: it derives every expectation from
 * the history alone.
 */
export {
  ANOMALY_KINDS,
  checkHistory,
  type Anomaly,
  type AnomalyKind,
  type CheckOptions,
  type CheckResult,
} from './checker.js';
export {
  formatElleJson,
  toElleRwRegister,
  type ElleExportOptions,
  type ElleOp,
} from './elle-export.js';
export {
  clientOps,
  HistoryRecorder,
  type ClientOp,
  type Completion,
  type CompletionFacts,
  type HistoryOp,
  type Invocation,
  type NemesisOp,
  type Observation,
  type OpType,
  type ReadOp,
  type WriteOp,
} from './history.js';
