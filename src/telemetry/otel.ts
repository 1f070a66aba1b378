import type { IncomingMessage } from 'node:http';

import { type DiagLogger, DiagLogLevel, diag } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { ExpressInstrumentation } from '@opentelemetry/instrumentation-express';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';

/** Where telemetry's own problems are reported: the subset of a pino logger it needs. */
export interface TelemetryLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
  trace(obj: object, msg: string): void;
}

/** Options for {@link startTelemetry}. */
export interface TelemetryOptions {
  /** `service.name` of every span. */
  readonly serviceName: string;
  /**
   * Base URL of an OTLP/HTTP receiver (as in `OTEL_EXPORTER_OTLP_ENDPOINT`); spans go to
   * `<endpoint>/v1/traces` as protobuf. When undefined no span processor is installed and
   * nothing is exported; instrumentation still propagates incoming trace context.
   */
  readonly otlpEndpoint?: string | undefined;
  /** Receives OpenTelemetry's diagnostics and export failures. */
  readonly logger: TelemetryLogger;
  /**
   * Level of OpenTelemetry's own diagnostics (`OTEL_LOG_LEVEL`: none, error, warn, info, debug,
   * verbose, all). Default `warn`.
   */
  readonly diagLevel?: string | undefined;
  /** Start nothing at all (as `OTEL_SDK_DISABLED=true` asks). */
  readonly disabled?: boolean;
}

/** What {@link startTelemetry} set up. */
export interface TelemetryState {
  readonly started: boolean;
  readonly exporting: boolean;
  /** The URL spans are sent to, when exporting. */
  readonly tracesUrl?: string;
}

/** Requests that probes and scrapers repeat all day; a span for each would bury the real traffic. */
const UNTRACED_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

let sdk: NodeSDK | undefined;
let state: TelemetryState = { started: false, exporting: false };

/** `<endpoint>/v1/traces`, as the OTLP exporter specification builds it from the base endpoint. */
export function tracesUrl(endpoint: string): string {
  return `${endpoint.replace(/\/+$/, '')}/v1/traces`;
}

function diagLevel(value: string | undefined): DiagLogLevel {
  const levels: Record<string, DiagLogLevel> = {
    NONE: DiagLogLevel.NONE,
    ERROR: DiagLogLevel.ERROR,
    WARN: DiagLogLevel.WARN,
    INFO: DiagLogLevel.INFO,
    DEBUG: DiagLogLevel.DEBUG,
    VERBOSE: DiagLogLevel.VERBOSE,
    ALL: DiagLogLevel.ALL,
  };
  return levels[(value ?? 'WARN').trim().toUpperCase()] ?? DiagLogLevel.WARN;
}

/** Routes OpenTelemetry's `diag` channel (and so its global error handler) into the logger. */
function diagLogger(logger: TelemetryLogger): DiagLogger {
  const write =
    (level: keyof TelemetryLogger) =>
    (message: string, ...args: unknown[]): void => {
      const err = args.find((arg) => arg instanceof Error);
      logger[level]({ ...(err === undefined ? {} : { err }), args }, message);
    };
  return {
    error: write('error'),
    warn: write('warn'),
    info: write('info'),
    debug: write('debug'),
    verbose: write('trace'),
  };
}

function ignoredIncoming(request: IncomingMessage): boolean {
  const path = (request.url ?? '').split('?', 1)[0] ?? '';
  return UNTRACED_PATHS.has(path);
}

/**
 * Starts the OpenTelemetry Node SDK once per process, with automatic instrumentation of `http`,
 * `express` and `pg`. Call it before anything imports those modules (see
 * `src/telemetry/register.ts`, loaded with `node --import`); ESM modules also need the
 * import-in-the-middle hook registered first.
 *
 * Never throws: a failure is logged and the service runs untraced. A second call returns the
 * state of the first.
 *
 * Only the OTLP trace exporter is used. OpenTelemetry metrics and logs are off (metrics are served
 * by prom-client at `/metrics`, logs go to standard output), whatever `OTEL_METRICS_EXPORTER` and
 * `OTEL_LOGS_EXPORTER` say.
 */
export function startTelemetry(options: TelemetryOptions): TelemetryState {
  if (state.started || options.disabled === true) return state;
  try {
    const url = options.otlpEndpoint === undefined ? undefined : tracesUrl(options.otlpEndpoint);
    const created = new NodeSDK({
      serviceName: options.serviceName,
      // An explicit empty list keeps the SDK from building OTLP exporters from its defaults.
      spanProcessors:
        url === undefined ? [] : [new BatchSpanProcessor(new OTLPTraceExporter({ url }))],
      metricReaders: [],
      logRecordProcessors: [],
      instrumentations: [
        new HttpInstrumentation({ ignoreIncomingRequestHook: ignoredIncoming }),
        new ExpressInstrumentation(),
        // Statement text only, never parameter values; a query outside any request (pool
        // housekeeping, readiness probes, migrations) does not start a trace of its own.
        new PgInstrumentation({ enhancedDatabaseReporting: false, requireParentSpan: true }),
      ],
    });
    // Set after the SDK is built: it installs a console diag logger when OTEL_LOG_LEVEL is set.
    diag.setLogger(diagLogger(options.logger), {
      logLevel: diagLevel(options.diagLevel),
      suppressOverrideMessage: true,
    });
    created.start();
    sdk = created;
    state = {
      started: true,
      exporting: url !== undefined,
      ...(url === undefined ? {} : { tracesUrl: url }),
    };
  } catch (err) {
    sdk = undefined;
    options.logger.error({ err }, 'OpenTelemetry did not start; tracing is off');
  }
  return state;
}

/** What {@link startTelemetry} did in this process; `started: false` when it was never called. */
export function telemetryState(): TelemetryState {
  return state;
}

/**
 * Flushes pending spans and stops the SDK, within `timeoutMs`. Never throws; a failure is logged
 * through the diag channel. Safe to call when telemetry never started.
 */
export async function shutdownTelemetry(options: { timeoutMs?: number } = {}): Promise<void> {
  const current = sdk;
  sdk = undefined;
  if (current === undefined) return;
  const timeoutMs = options.timeoutMs ?? 5_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      current.shutdown(),
      new Promise<void>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`OpenTelemetry shutdown took longer than ${timeoutMs} ms`)),
          timeoutMs,
        );
        timer.unref();
      }),
    ]);
  } catch (err) {
    diag.error('OpenTelemetry shutdown failed; some spans may be lost', err);
  } finally {
    clearTimeout(timer);
    state = { ...state, started: false };
  }
}
