/**
 * Prometheus metrics and OpenTelemetry set-up (`replikit/telemetry`).
 *
 * @packageDocumentation
 */
export { createMetricsRegistry, renderMetrics, type MetricsRegistry } from './metrics.js';
export {
  createRoutingMetrics,
  type RoutingMetrics,
  type RoutingMetricsOptions,
} from './routing-metrics.js';
export { createEventMetrics, type EventMetrics } from './event-metrics.js';
export { createOutboxMetrics, type OutboxMetrics } from './outbox-metrics.js';
export { createSagaMetrics, type SagaMetrics } from './saga-metrics.js';
export { shutdownTelemetry, startTelemetry } from './otel.js';
export { createTwoPhaseMetrics, type TwoPhaseMetrics } from './twopc-metrics.js';
