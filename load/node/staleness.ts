/**
 * The staleness scenario of `load/k6/staleness.ts`, run from Node: `vus` writers, each with a user
 * of its own, write (create, then patch), wait t ms, and read the user back at one consistency
 * level, every (level, t) cell in turn; at t = 0 a stale read is followed by polls that time when
 * the write became visible. Same metric names, same thresholds, same summary.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import {
  METRICS,
  MUST_SEE_WRITE,
  VISIBILITY_TIMEOUT_MS,
  buildSummary,
  cellOf,
  consistencyHeader,
  isStale,
  sendsToken,
  stalenessThresholds,
  type Level,
  type LoadSummary,
} from '../shared/scenarios.js';
import { createClient, progressLine } from './http.js';
import { MetricSet } from './metrics.js';
import type { StalenessOptions } from './options.js';

interface Read {
  status: number;
  version?: number;
  servedBy?: string;
}

export async function runStaleness(
  options: StalenessOptions,
  url: string,
  signal: AbortSignal,
): Promise<LoadSummary> {
  const metrics = new MetricSet();
  const client = createClient(url, metrics);
  const staleReads = metrics.rate(METRICS.staleReads);
  const visibility = metrics.trend(METRICS.visibility);
  const rywViolations = metrics.counter(METRICS.rywViolations);
  const replicaReads = metrics.rate(METRICS.replicaReads);
  const visibilityTimeouts = metrics.counter(METRICS.visibilityTimeouts);
  const iterations = metrics.counter('iterations');
  const progress = progressLine('staleness');
  const started = performance.now();
  const deadline = started + options.maxDurationMs;
  /** Actual waits before the first read, by t: Node's timers fire at t or a little later. */
  const waits = new Map<number, number[]>();
  let next = 0;
  let done = 0;
  let stale = 0;
  let violations = 0;
  let errors = 0;

  async function vu(n: number): Promise<void> {
    let userId: string | undefined;
    let token: string | undefined;
    let writes = 0;

    const read = async (level: Level): Promise<Read> => {
      const headers: Record<string, string> = {
        'x-consistency': consistencyHeader(level, options.boundMs),
      };
      if (sendsToken(level) && token !== undefined) headers['x-consistency-token'] = token;
      const reply = await client.request('GET', `/users/${userId ?? ''}`, {
        headers,
        expected: [200, 404],
      });
      if (sendsToken(level)) token = reply.headers.get('x-consistency-token') ?? token;
      const servedBy = reply.headers.get('x-served-by') ?? undefined;
      const version =
        reply.status === 200 ? (reply.body as { version?: number }).version : undefined;
      return {
        status: reply.status,
        ...(version === undefined ? {} : { version }),
        ...(servedBy === undefined ? {} : { servedBy }),
      };
    };

    while (!signal.aborted && performance.now() < deadline) {
      const iteration = next++;
      if (iteration >= options.iterations) return;
      const { level, t } = cellOf(iteration, options.delaysMs);
      writes += 1;
      const reply =
        userId === undefined
          ? await client.request('POST', '/users', {
              body: {
                name: `load ${n}`,
                email: `load-${n}-${Date.now()}-${Math.random().toString(36).slice(2)}@example.com`,
              },
            })
          : await client.request('PATCH', `/users/${userId}`, {
              body: { name: `load ${n} ${writes}` },
            });
      iterations.add(1);
      done += 1;
      if (reply.status !== 200 && reply.status !== 201) {
        errors += 1;
        continue;
      }
      const user = reply.body as { id: string; version: number };
      userId = user.id;
      token = reply.headers.get('x-consistency-token') ?? token;
      const written = performance.now();
      if (t > 0) await sleep(t);
      const waited = performance.now() - written;
      let list = waits.get(t);
      if (list === undefined) waits.set(t, (list = []));
      list.push(waited);

      const first = await read(level);
      if (first.status !== 200 && first.status !== 404) {
        errors += 1;
        continue;
      }
      const missed = isStale(user.version, first);
      staleReads.add(missed, { level, t });
      replicaReads.add(first.servedBy !== undefined && first.servedBy !== 'primary', { level });
      if (missed) stale += 1;
      if (missed && MUST_SEE_WRITE.includes(level)) {
        violations += 1;
        rywViolations.add(1, { level });
      }
      // Visibility is timed from t = 0 reads only: a later first read would only bound it by t.
      if (t !== 0) continue;
      if (!missed) {
        visibility.add(performance.now() - written, { level });
        continue;
      }
      // Poll at the same level until the write shows, to time when it became visible.
      for (;;) {
        if (performance.now() - written > VISIBILITY_TIMEOUT_MS) {
          visibilityTimeouts.add(1, { level });
          break;
        }
        await sleep(1);
        const again = await read(level);
        if ((again.status === 200 || again.status === 404) && !isStale(user.version, again)) {
          visibility.add(performance.now() - written, { level });
          break;
        }
      }
    }
  }

  const ticker = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    progress.update(
      `${seconds.toFixed(0)} s  ${done}/${options.iterations} writes  stale ${done === 0 ? 0 : ((100 * stale) / done).toFixed(1)} %  ryw violations ${violations}  errors ${errors}`,
    );
  }, 1000);
  try {
    await Promise.all(Array.from({ length: options.vus }, (_, i) => vu(i + 1)));
  } finally {
    clearInterval(ticker);
    progress.done();
  }
  const durationMs = performance.now() - started;
  const waitsLine = [...waits.entries()]
    .sort(([a], [b]) => a - b)
    .map(([t, list]) => {
      const sorted = [...list].sort((a, b) => a - b);
      return `t=${t}: ${sorted[Math.floor(sorted.length / 2)]!.toFixed(2)}`;
    })
    .join(', ');
  process.stderr.write(`[load:staleness] median actual wait before the read (ms): ${waitsLine}\n`);
  return buildSummary(metrics.summaryData(stalenessThresholds(options.delaysMs), durationMs), {
    scenario: 'staleness',
    runner: 'node',
    target: url,
    delaysMs: options.delaysMs,
  });
}
