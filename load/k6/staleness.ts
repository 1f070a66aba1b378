/**
 * How often a read misses a write it follows by t ms, per consistency level.
 *
 * Each VU owns one user: it creates it on its first iteration and patches it on the others, then
 * waits t ∈ {0, 1, 2, 5, 10, 20, 50, 100} ms and reads it back at one level — every (level, t)
 * cell in turn. A read that misses the write counts in `stale_reads{level,t}`. At t = 0, reads at
 * the same level follow a stale one until the write shows: `visibility_ms{level}` is the time from
 * the write's response to the response of the first read that saw it. A stale read
 * at `strong`, `read-your-writes` or `monotonic` counts in `ryw_violations`, whose threshold is
 * zero; `eventual` is the control that must show staleness.
 *
 *   docker compose --profile load run --rm k6 run -o experimental-prometheus-rw /load/k6/staleness.ts
 *   k6 run -e BASE_URL=http://127.0.0.1:3000 -e ITERATIONS=2000 load/k6/staleness.ts
 *
 * Environment: `BASE_URL` (default `http://127.0.0.1:3000`), `ITERATIONS` (1000), `VUS` (4),
 * `MAX_DURATION` (`2m`), `BOUND_MS` (100, for `bounded-staleness`), `SUMMARY_FILE` (also write the
 * JSON summary there). The JSON summary goes to stdout, the tables to stderr; `npm run load --
 * staleness` runs the same scenario from Node with the same metrics and summary.
 */
import { sleep } from 'k6';
import exec from 'k6/execution';
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';

import {
  DEFAULT_BOUND_MS,
  DELAYS_MS,
  METRICS,
  MUST_SEE_WRITE,
  TREND_STATS,
  VISIBILITY_TIMEOUT_MS,
  buildSummary,
  cellOf,
  consistencyHeader,
  isStale,
  sendsToken,
  stalenessThresholds,
  summaryText,
  type Level,
  type SummaryData,
} from '../shared/scenarios.ts';

const BASE_URL = __ENV['BASE_URL'] ?? 'http://127.0.0.1:3000';
const BOUND_MS = Number(__ENV['BOUND_MS'] ?? DEFAULT_BOUND_MS);

export const options: Options = {
  scenarios: {
    staleness: {
      executor: 'shared-iterations',
      vus: Number(__ENV['VUS'] ?? 4),
      iterations: Number(__ENV['ITERATIONS'] ?? 1000),
      maxDuration: __ENV['MAX_DURATION'] ?? '2m',
    },
  },
  thresholds: stalenessThresholds(),
  summaryTrendStats: TREND_STATS,
};

const staleReads = new Rate(METRICS.staleReads);
const visibility = new Trend(METRICS.visibility, true);
const rywViolations = new Counter(METRICS.rywViolations);
const replicaReads = new Rate(METRICS.replicaReads);
const visibilityTimeouts = new Counter(METRICS.visibilityTimeouts);

const JSON_HEADERS = { 'Content-Type': 'application/json' };

// Module scope is per VU in k6: each VU keeps its own user and session token.
let userId: string | undefined;
let token: string | undefined;
let writes = 0;

function header(res: http.Response, name: string): string | undefined {
  return res.headers[name] ?? undefined;
}

/** Creates or patches this VU's user; the version it now has, or undefined when it failed. */
function write(): number | undefined {
  writes += 1;
  const res =
    userId === undefined
      ? http.post(
          `${BASE_URL}/users`,
          JSON.stringify({
            name: `load ${__VU}`,
            email: `load-${__VU}-${Date.now()}-${Math.random().toString(36).slice(2)}@example.com`,
          }),
          { headers: JSON_HEADERS, tags: { name: 'write' } },
        )
      : http.patch(
          `${BASE_URL}/users/${userId}`,
          JSON.stringify({ name: `load ${__VU} ${writes}` }),
          {
            headers: JSON_HEADERS,
            tags: { name: 'write' },
          },
        );
  if (res.status !== 200 && res.status !== 201) return undefined;
  const body = res.json() as { id?: string; version?: number };
  userId = body.id;
  token = header(res, 'X-Consistency-Token') ?? token;
  return body.version;
}

function read(level: Level): { status: number; version?: number; servedBy?: string } {
  const headers: Record<string, string> = { 'X-Consistency': consistencyHeader(level, BOUND_MS) };
  if (sendsToken(level) && token !== undefined) headers['X-Consistency-Token'] = token;
  const res = http.get(`${BASE_URL}/users/${userId ?? ''}`, {
    headers,
    tags: { name: 'read', level },
    responseCallback: http.expectedStatuses(200, 404),
  });
  if (sendsToken(level)) token = header(res, 'X-Consistency-Token') ?? token;
  const servedBy = header(res, 'X-Served-By');
  const version = res.status === 200 ? (res.json() as { version?: number }).version : undefined;
  return {
    status: res.status,
    ...(version === undefined ? {} : { version }),
    ...(servedBy === undefined ? {} : { servedBy }),
  };
}

export default function (): void {
  const { level, t } = cellOf(exec.scenario.iterationInTest, DELAYS_MS);
  const version = write();
  if (version === undefined) return;
  const written = Date.now();
  if (t > 0) sleep(t / 1000);
  const first = read(level);
  if (first.status !== 200 && first.status !== 404) return;
  const stale = isStale(version, first);
  const tags = { level, t: String(t) };
  staleReads.add(stale, tags);
  replicaReads.add(first.servedBy !== undefined && first.servedBy !== 'primary', { level });
  if (stale && MUST_SEE_WRITE.includes(level)) rywViolations.add(1, { level });
  // Visibility is timed from t = 0 reads only: a later first read would only bound it by t.
  if (t !== 0) return;
  if (!stale) {
    visibility.add(Date.now() - written, { level });
    return;
  }
  // Poll at the same level until the write shows, to time when it became visible.
  for (;;) {
    const elapsed = Date.now() - written;
    if (elapsed > VISIBILITY_TIMEOUT_MS) {
      visibilityTimeouts.add(1, { level });
      return;
    }
    sleep(0.001);
    const next = read(level);
    if ((next.status === 200 || next.status === 404) && !isStale(version, next)) {
      visibility.add(Date.now() - written, { level });
      return;
    }
  }
}

export function handleSummary(data: SummaryData): Record<string, string> {
  const summary = buildSummary(data, {
    scenario: 'staleness',
    runner: 'k6',
    target: BASE_URL,
    delaysMs: DELAYS_MS,
  });
  const json = `${JSON.stringify(summary, null, 2)}\n`;
  const out: Record<string, string> = { stdout: json, stderr: `\n${summaryText(summary)}\n` };
  const file = __ENV['SUMMARY_FILE'];
  if (file !== undefined && file !== '') out[file] = json;
  return out;
}
