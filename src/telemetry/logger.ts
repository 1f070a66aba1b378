import { isSpanContextValid, trace } from '@opentelemetry/api';
import { type DestinationStream, type Level, type Logger, pino } from 'pino';

/** A pino logger; the type every part of the service logs through. */
export type { Logger } from 'pino';

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** Minimum level written; `silent` writes nothing. */
  readonly level: Level | 'silent';
  /** Written as `service` on every line. */
  readonly service: string;
  /** Where lines go. Default: standard output. */
  readonly destination?: DestinationStream;
}

/**
 * Creates the service's JSON logger: one JSON object per line, ISO timestamps, level names instead
 * of numbers, and the active trace's `trace_id` / `span_id` on lines written inside a span, so a
 * log line leads to its trace.
 *
 * ```ts
 * const logger = createLogger({ level: 'info', service: 'replikit' });
 * logger.info({ port: 3000 }, 'listening');
 * ```
 */
export function createLogger(options: LoggerOptions): Logger {
  const settings = {
    level: options.level,
    base: { service: options.service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    mixin: traceContext,
  };
  return options.destination === undefined ? pino(settings) : pino(settings, options.destination);
}

function traceContext(): Record<string, string> {
  const context = trace.getActiveSpan()?.spanContext();
  if (context === undefined || !isSpanContextValid(context)) return {};
  return {
    trace_id: context.traceId,
    span_id: context.spanId,
    trace_flags: `0${context.traceFlags.toString(16)}`.slice(-2),
  };
}
