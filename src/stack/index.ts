export {
  LocalStack,
  type NodeRole,
  type NodeStatus,
  type PromoteResult,
  type StackNode,
  type StackOptions,
} from './local-stack.js';
export { findPostgresBinaries, type PostgresBinaries } from './postgres-binaries.js';
export { StackError, type StackErrorCode } from './stack-error.js';
