export {
  createEventStore,
  EventStore,
  type AppendOptions,
  type AppendResult,
  type EventStoreOptions,
  type EventTransaction,
  type ExpectedVersion,
  type ProjectionInfo,
  type ReadAllOptions,
  type ReadAllResult,
  type ReadStreamOptions,
} from './event-store.js';
export { EventStoreError, type EventStoreErrorCode } from './event-store-error.js';
export type {
  AppendEvent,
  AppendOutcome,
  EventStoreLogger,
  EventStoreObserver,
  HorizonSample,
  ProjectionBatchEvent,
  ProjectionStatusSample,
} from './event-store-observer.js';
export {
  comparePositions,
  formatPosition,
  maxPosition,
  parsePosition,
  START,
  type GlobalPosition,
} from './position.js';
export {
  ProjectionRunner,
  type InlineProjection,
  type ProjectionClient,
  type ProjectionContext,
  type ProjectionDefinition,
  type ProjectionRunnerOptions,
  type ProjectionRunnerState,
} from './projection-runner.js';
export type { ProjectionWaitResult } from './projection-waiter.js';
export {
  createReadModel,
  ReadModel,
  type ReadModelOptions,
  type ReadModelQueryOptions,
  type ReadModelResult,
} from './read-model.js';
export type { EventInput, EventMetadata, RecordedEvent } from './recorded-event.js';
export { EVENT_STORE_MIGRATIONS } from './schema.js';
export {
  createUpcasterChain,
  type UpcastInput,
  type Upcaster,
  type UpcasterChain,
} from './upcaster.js';
