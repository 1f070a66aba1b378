/**
 * The sagas scenario of `load/k6/sagas.ts`, run from Node: orders arrive at a constant rate (an
 * arrival finding `maxInFlight` orders still running is dropped and counted in
 * `dropped_iterations`, as k6's `constant-arrival-rate` does when it runs out of VUs), a share of
 * them built to be refused. Same metric names, same thresholds, same summary.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import {
  METRICS,
  buildSummary,
  isUnexpected,
  orderFor,
  outcomeOf,
  sagaThresholds,
  type LoadSummary,
  type OrderOutcome,
} from '../shared/scenarios.js';
import { createClient, progressLine } from './http.js';
import { MetricSet } from './metrics.js';
import type { SagasOptions } from './options.js';

/** How long orders still in flight at the end may take (k6's default `gracefulStop`). */
const GRACEFUL_STOP_MS = 30_000;

export async function runSagas(
  options: SagasOptions,
  url: string,
  signal: AbortSignal,
): Promise<LoadSummary> {
  const metrics = new MetricSet();
  const client = createClient(url, metrics, GRACEFUL_STOP_MS);
  const rates: Record<OrderOutcome, ReturnType<MetricSet['rate']>> = {
    confirmed: metrics.rate(METRICS.ordersConfirmed),
    rejected: metrics.rate(METRICS.ordersRejected),
    pending: metrics.rate(METRICS.ordersPending),
    failed: metrics.rate(METRICS.ordersFailed),
  };
  const latency = metrics.trend(METRICS.orderLatency);
  const unexpected = metrics.counter(METRICS.ordersUnexpected);
  const iterations = metrics.counter('iterations');
  const dropped = metrics.counter('dropped_iterations');
  const progress = progressLine('sagas');
  const counts: Record<OrderOutcome | 'dropped', number> = {
    confirmed: 0,
    rejected: 0,
    pending: 0,
    failed: 0,
    dropped: 0,
  };
  const inFlight = new Set<Promise<void>>();

  async function place(n: number): Promise<void> {
    const { intent, body } = orderFor(n, Math.random(), options.failureShare);
    const reply = await client.request('POST', '/orders', { body, expected: [201, 202] });
    const outcome = outcomeOf(
      reply.status,
      (reply.body as { status?: unknown } | undefined)?.status,
    );
    for (const [name, rate] of Object.entries(rates)) rate.add(name === outcome);
    latency.add(reply.durationMs, { outcome });
    if (isUnexpected(intent, outcome)) unexpected.add(1, { intent });
    iterations.add(1);
    counts[outcome] += 1;
  }

  const started = performance.now();
  const intervalMs = 1000 / options.rate;
  const ticker = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    progress.update(
      `${seconds.toFixed(0)} s  confirmed ${counts.confirmed}  rejected ${counts.rejected}  202 ${counts.pending}  failed ${counts.failed}  dropped ${counts.dropped}  in flight ${inFlight.size}`,
    );
  }, 1000);
  try {
    for (let n = 0; !signal.aborted; n++) {
      // Arrivals are scheduled from the start, so a slow loop does not lower the rate.
      const due = started + n * intervalMs;
      if (due >= started + options.durationMs) break;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      if (inFlight.size >= options.maxInFlight) {
        dropped.add(1);
        counts.dropped += 1;
        continue;
      }
      const order = place(n).finally(() => inFlight.delete(order));
      inFlight.add(order);
    }
    await Promise.all(inFlight);
  } finally {
    clearInterval(ticker);
    progress.done();
  }
  const durationMs = performance.now() - started;
  return buildSummary(metrics.summaryData(sagaThresholds(), durationMs), {
    scenario: 'sagas',
    runner: 'node',
    target: url,
  });
}
