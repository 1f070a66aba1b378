export type { DatabaseConnection } from '../db/checkout.js';
export {
  Coordinator,
  createCoordinator,
  type CoordinatorOptions,
  type DistributedTransaction,
  type RecoveryReport,
  type RunResult,
  type TransactionEvent,
  type TwoPhaseObserver,
  type TwoPhaseOutcome,
  type TwoPhasePhase,
} from './coordinator.js';
export { formatGid, parseGid, type GlobalId } from './gid.js';
export { TwoPhaseError, type TwoPhaseErrorCode } from './twopc-error.js';
