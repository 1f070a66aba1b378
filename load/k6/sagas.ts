/**
 * Orders at a constant arrival rate, a share of them built to be refused (too much stock asked,
 * or an amount above the wallet's 10,000): how many are confirmed, rejected or still running when
 * the service answers (202), and how long `POST /orders` takes for each.
 *
 *   docker compose --profile load run --rm k6 run -o experimental-prometheus-rw /load/k6/sagas.ts
 *   k6 run -e BASE_URL=http://127.0.0.1:3000 -e RATE=20 -e DURATION=1m load/k6/sagas.ts
 *
 * Environment: `BASE_URL` (default `http://127.0.0.1:3000`), `RATE` (orders per second, 10),
 * `DURATION` (`30s`), `MAX_VUS` (50), `FAILURE_SHARE` (0.2), `SUMMARY_FILE`. Thresholds: under 1 %
 * failed requests, and no order whose outcome contradicts what it was built to do (a plain order
 * rejected can also mean the demo's stock or wallets ran out on a long-lived service). `npm run
 * load -- sagas` runs the same scenario from Node.
 */
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';

import {
  METRICS,
  SAGA_DEFAULTS,
  TREND_STATS,
  buildSummary,
  isUnexpected,
  orderFor,
  outcomeOf,
  sagaThresholds,
  summaryText,
  type SummaryData,
} from '../shared/scenarios.ts';

const BASE_URL = __ENV['BASE_URL'] ?? 'http://127.0.0.1:3000';
const RATE = Number(__ENV['RATE'] ?? SAGA_DEFAULTS.rate);
const MAX_VUS = Number(__ENV['MAX_VUS'] ?? SAGA_DEFAULTS.maxInFlight);
const FAILURE_SHARE = Number(__ENV['FAILURE_SHARE'] ?? SAGA_DEFAULTS.failureShare);

export const options: Options = {
  scenarios: {
    orders: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV['DURATION'] ?? '30s',
      preAllocatedVUs: Math.min(MAX_VUS, Math.max(2, RATE)),
      maxVUs: MAX_VUS,
    },
  },
  thresholds: sagaThresholds(),
  summaryTrendStats: TREND_STATS,
};

const confirmed = new Rate(METRICS.ordersConfirmed);
const rejected = new Rate(METRICS.ordersRejected);
const pending = new Rate(METRICS.ordersPending);
const failed = new Rate(METRICS.ordersFailed);
const latency = new Trend(METRICS.orderLatency, true);
const unexpected = new Counter(METRICS.ordersUnexpected);

export default function (): void {
  const { intent, body } = orderFor(exec.scenario.iterationInTest, Math.random(), FAILURE_SHARE);
  const res = http.post(`${BASE_URL}/orders`, JSON.stringify(body), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'order', intent },
    responseCallback: http.expectedStatuses(201, 202),
  });
  let status: unknown;
  if (res.status === 201) status = (res.json() as { status?: unknown }).status;
  const outcome = outcomeOf(res.status, status);
  confirmed.add(outcome === 'confirmed');
  rejected.add(outcome === 'rejected');
  pending.add(outcome === 'pending');
  failed.add(outcome === 'failed');
  latency.add(res.timings.duration, { outcome });
  if (isUnexpected(intent, outcome)) unexpected.add(1, { intent });
}

export function handleSummary(data: SummaryData): Record<string, string> {
  const summary = buildSummary(data, { scenario: 'sagas', runner: 'k6', target: BASE_URL });
  const json = `${JSON.stringify(summary, null, 2)}\n`;
  const out: Record<string, string> = { stdout: json, stderr: `\n${summaryText(summary)}\n` };
  const file = __ENV['SUMMARY_FILE'];
  if (file !== undefined && file !== '') out[file] = json;
  return out;
}
