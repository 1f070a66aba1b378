/**
 * Preload module that turns on tracing before the service's own code runs:
 *
 * ```sh
 * node --import ./dist/telemetry/register.js dist/app/start.js
 * ```
 *
 * It registers OpenTelemetry's ESM loader hook (import-in-the-middle) so that `import express`
 * and `import pg` in ESM code reach the instrumentations, then starts the SDK. Both must happen
 * before the first import of an instrumented module, which is why this runs through `--import`
 * rather than from `start.ts`.
 *
 * When the configuration is invalid it does nothing: `start.ts` reports the bad variable.
 *
 * @packageDocumentation
 */
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

import { loadConfig } from '../app/config.js';
import { createLogger } from './logger.js';
import { startTelemetry } from './otel.js';

/**
 * Modules the hook wraps. Wrapping only what is instrumented keeps import-in-the-middle away from
 * every other module (its wrappers cost start-up time and have broken unusual export shapes).
 */
const INSTRUMENTED_MODULES = ['express', 'pg', 'pg-pool', 'http', 'https'];

function configOrUndefined(): ReturnType<typeof loadConfig> | undefined {
  try {
    return loadConfig(process.env);
  } catch {
    return undefined;
  }
}

const config = isMainThread ? configOrUndefined() : undefined;
if (config !== undefined) {
  register('@opentelemetry/instrumentation/hook.mjs', import.meta.url, {
    data: { include: INSTRUMENTED_MODULES },
  });
  startTelemetry({
    serviceName: config.OTEL_SERVICE_NAME,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
    diagLevel: process.env['OTEL_LOG_LEVEL'],
    disabled: process.env['OTEL_SDK_DISABLED']?.trim().toLowerCase() === 'true',
    logger: createLogger({ level: config.LOG_LEVEL, service: config.OTEL_SERVICE_NAME }).child({
      component: 'opentelemetry',
    }),
  });
}
