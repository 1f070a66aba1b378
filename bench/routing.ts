/**
 * Read routing, measured in one run on a stack of its own (`.replikit/bench`, started here and
 * stopped at the end):
 *
 * 1. Policies side by side on one write-then-read workload, under injected replica apply delays:
 *    stale reads, share served by replicas, read latency.
 * 2. What routing costs: a routed read against a raw `pg.Pool` query of the same SQL on the same
 *    replica, in interleaved rounds.
 * 3. Shared waiting: position polls while 1000 reads wait on paused replicas, against 1 read.
 *
 *   npm run bench:routing
 *   npm run bench:routing -- --seconds 10 --sessions 32 --rounds 40
 *
 * The machine is shared: results are medians, and ratios of rounds run back to back. Progress goes
 * to stderr, markdown tables to stdout.
 */
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import pg from 'pg';

import {
  createCluster,
  parseLsn,
  type Cluster,
  type Consistency,
  type ConsistencyToken,
  type RouteReason,
} from '../src/routing/index.js';
import { LocalStack } from '../src/stack/index.js';
import { median, ms, percentile, progressFor, table } from './support/report.js';

const progress = progressFor('bench:routing');

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: '.replikit/bench' },
    delays: { type: 'string', default: '0,10,100,1000' },
    seconds: { type: 'string', default: '3' },
    sessions: { type: 'string', default: '16' },
    'max-reads': { type: 'string', default: '20000' },
    'wait-timeout-ms': { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '20' },
    queries: { type: 'string', default: '2000' },
    waiters: { type: 'string', default: '1000' },
    'hold-ms': { type: 'string', default: '1000' },
    repeats: { type: 'string', default: '3' },
  },
});

function positiveInt(name: keyof typeof values, min = 1): number {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`--${name} must be a whole number ≥ ${min}, got "${values[name]}"`);
  }
  return value;
}

const DELAYS = values.delays.split(',').map((text) => {
  const ms = Number(text.trim());
  if (!Number.isInteger(ms) || ms < 0) throw new RangeError(`--delays: bad delay "${text}"`);
  return ms;
});
const SECONDS = positiveInt('seconds');
const SESSIONS = positiveInt('sessions');
const MAX_READS = positiveInt('max-reads');
const WAIT_TIMEOUT_MS = positiveInt('wait-timeout-ms');
const ROUNDS = positiveInt('rounds');
const QUERIES = positiveInt('queries');
const WAITERS = positiveInt('waiters');
const HOLD_MS = positiveInt('hold-ms');
const REPEATS = positiveInt('repeats');

const COMMAND = ['npm run bench:routing', ...(process.argv.length > 2 ? ['--'] : [])]
  .concat(process.argv.slice(2))
  .join(' ');

const DATABASE = 'replikit_bench';
const BUMP = 'update counters set version = version + 1 where id = $1 returning version';
const SELECT = 'select version from counters where id = $1';

const stop = new AbortController();
process.once('SIGINT', () => {
  progress('interrupted: stopping after the current step');
  stop.abort();
});

function mean(samples: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < samples.length; i++) total += samples[i]!;
  return total / samples.length;
}

function sum(record: Readonly<Record<string, number>>): number {
  return Object.values(record).reduce((a, b) => a + b, 0);
}

function pct(part: number, whole: number): string {
  return whole === 0 ? '–' : `${((100 * part) / whole).toFixed(1)} %`;
}

/**
 * Counts `pg` queries by the connection's `application_name`, and times those that return a
 * promise (the monitors' own; pools use callbacks). The cluster reports its replica monitors'
 * polls itself, but not the primary monitor's refreshes (one per read whose token is newer than
 * the cached primary position), which queue on that monitor's single connection: this shows how
 * many there are and how long they take, queueing included. Installed for parts 1 and 3 only, so
 * part 2 times unpatched `pg`.
 */
class QueryCounter {
  readonly #counts = new Map<string, number>();
  readonly #durations = new Map<string, number[]>();
  #original: ((...args: unknown[]) => unknown) | undefined;

  install(): void {
    const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
    const original = proto.query;
    const counts = this.#counts;
    const durations = this.#durations;
    this.#original = original;
    proto.query = function (this: unknown, ...args: unknown[]): unknown {
      const name =
        (this as { connectionParameters?: { application_name?: string } }).connectionParameters
          ?.application_name ?? 'unknown';
      counts.set(name, (counts.get(name) ?? 0) + 1);
      const started = performance.now();
      const result = original.apply(this, args);
      if (result instanceof Promise) {
        const record = (): void => {
          let list = durations.get(name);
          if (list === undefined) durations.set(name, (list = []));
          list.push(performance.now() - started);
        };
        result.then(record, record);
      }
      return result;
    };
  }

  uninstall(): void {
    if (this.#original === undefined) return;
    (pg.Client.prototype as unknown as { query: unknown }).query = this.#original;
    this.#original = undefined;
  }

  /** Queries sent so far on connections named `name`. */
  count(name: string): number {
    return this.#counts.get(name) ?? 0;
  }

  /** Durations (ms) of the promise-style queries on `name` that have finished, oldest first. */
  durations(name: string): readonly number[] {
    return this.#durations.get(name) ?? [];
  }
}

const counter = new QueryCounter();
const PRIMARY_MONITOR = 'replikit-monitor-primary';

async function setDelay(stack: LocalStack, delayMs: number): Promise<void> {
  await Promise.all(
    stack.replicas.map((replica) =>
      delayMs === 0
        ? stack.clearApplyDelay(replica.name)
        : stack.setApplyDelay(replica.name, delayMs),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// 1. Policies side by side

interface Policy {
  readonly label: string;
  readonly consistency: Consistency;
}

const POLICIES: readonly Policy[] = [
  { label: 'primary only (`strong`)', consistency: { level: 'strong' } },
  { label: 'naive replica (`eventual`)', consistency: { level: 'eventual' } },
  { label: '`sticky-window=2000`', consistency: { level: 'sticky-window', windowMs: 2000 } },
  { label: '`read-your-writes`', consistency: { level: 'read-your-writes' } },
];

interface CellResult {
  readonly delayMs: number;
  readonly policy: Policy;
  readonly reads: number;
  readonly stale: number;
  readonly fromReplicas: number;
  readonly p50: number;
  readonly p99: number;
  readonly reasons: Readonly<Partial<Record<RouteReason, number>>>;
  readonly primaryChecks: number;
  /** Median time of the primary monitor's queries in the cell, queueing on its connection included. */
  readonly primaryCheckMs: number;
  readonly elapsedMs: number;
}

/** `SESSIONS` sessions, each writing its own row and reading it back, for `SECONDS` or `MAX_READS`. */
async function runCell(
  cluster: Cluster,
  delayMs: number,
  policy: Policy,
  seconds = SECONDS,
): Promise<CellResult> {
  const latencies: number[] = [];
  const reasons: Partial<Record<RouteReason, number>> = {};
  let started = 0;
  let stale = 0;
  let fromReplicas = 0;
  const checksBefore = counter.count(PRIMARY_MONITOR);
  const timedBefore = counter.durations(PRIMARY_MONITOR).length;
  const begin = performance.now();
  const deadline = begin + seconds * 1000;
  await Promise.all(
    Array.from({ length: SESSIONS }, async (_, session) => {
      const id = session + 1;
      while (performance.now() < deadline && started < MAX_READS && !stop.signal.aborted) {
        started++;
        const written = await cluster.write<{ version: number }>(BUMP, [id]);
        const t0 = performance.now();
        const read = await cluster.read<{ version: number }>(SELECT, [id], {
          consistency: policy.consistency,
          token: written.token,
        });
        latencies.push(performance.now() - t0);
        if (read.rows[0]!.version < written.rows[0]!.version) stale++;
        if (read.servedBy !== 'primary') fromReplicas++;
        reasons[read.reason] = (reasons[read.reason] ?? 0) + 1;
      }
    }),
  );
  return {
    delayMs,
    policy,
    reads: latencies.length,
    stale,
    fromReplicas,
    p50: median(latencies),
    p99: percentile(latencies, 0.99),
    reasons,
    primaryChecks: counter.count(PRIMARY_MONITOR) - checksBefore,
    primaryCheckMs: median(counter.durations(PRIMARY_MONITOR).slice(timedBefore)),
    elapsedMs: performance.now() - begin,
  };
}

async function policies(stack: LocalStack, urls: Urls): Promise<CellResult[]> {
  const cluster = createCluster({
    primary: urls.primary,
    replicas: urls.replicas,
    poolSize: SESSIONS,
    waitTimeoutMs: WAIT_TIMEOUT_MS,
  });
  const results: CellResult[] = [];
  try {
    await cluster.ready();
    // Unrecorded: JIT, pools and the servers' caches warm up before the first measured cell.
    progress('warm-up: 1 s of each policy, not recorded');
    for (const policy of POLICIES) await runCell(cluster, 0, policy, 1);
    for (const [d, delayMs] of DELAYS.entries()) {
      stop.signal.throwIfAborted();
      await setDelay(stack, delayMs);
      // Each delay starts with a different policy, so drift on the shared machine is spread.
      const order = POLICIES.map((_, i) => POLICIES[(i + d) % POLICIES.length]!);
      for (const policy of order) {
        stop.signal.throwIfAborted();
        // Start every cell from caught-up replicas, not from the previous cell's backlog.
        await stack.waitForReplicas();
        const cell = await runCell(cluster, delayMs, policy);
        results.push(cell);
        progress(
          `delay ${delayMs} ms, ${policy.consistency.level}: ${cell.reads} reads, ` +
            `${pct(cell.stale, cell.reads)} stale, ${pct(cell.fromReplicas, cell.reads)} from replicas, ` +
            `p50 ${ms(cell.p50)} ms, p99 ${ms(cell.p99)} ms, ` +
            `${cell.primaryChecks} primary monitor queries (p50 ${ms(cell.primaryCheckMs)} ms)`,
        );
      }
    }
  } finally {
    await cluster.close();
    await setDelay(stack, 0).catch(() => undefined);
  }
  return results.sort(
    (a, b) => a.delayMs - b.delayMs || POLICIES.indexOf(a.policy) - POLICIES.indexOf(b.policy),
  );
}

function formatReasons(reasons: Readonly<Partial<Record<RouteReason, number>>>): string {
  return Object.entries(reasons)
    .sort(([, a], [, b]) => b - a)
    .map(([reason, count]) => `${reason} ${count}`)
    .join(', ');
}

function policiesTable(results: readonly CellResult[]): string {
  return table(
    [
      'apply delay',
      'policy',
      'reads',
      'stale reads',
      'from replicas',
      'read p50 (ms)',
      'read p99 (ms)',
      'routes',
      'primary monitor queries / read (p50 ms)',
    ],
    results.map((cell) => [
      `${cell.delayMs} ms`,
      cell.policy.label,
      String(cell.reads),
      `${cell.stale} (${pct(cell.stale, cell.reads)})`,
      pct(cell.fromReplicas, cell.reads),
      ms(cell.p50),
      ms(cell.p99),
      formatReasons(cell.reasons),
      cell.reads === 0
        ? '–'
        : `${(cell.primaryChecks / cell.reads).toFixed(2)} (${ms(cell.primaryCheckMs)})`,
    ]),
  );
}

// ---------------------------------------------------------------------------------------------
// 2. Overhead of routing

interface Variant {
  readonly label: string;
  readonly short: string;
  /** Runs one read; returns whether it went where this variant expects. */
  readonly run: () => Promise<boolean>;
}

interface RoundSample {
  readonly medianUs: number;
  readonly meanUs: number;
  readonly unexpected: number;
}

async function timeRound(variant: Variant): Promise<RoundSample> {
  const latencies = new Float64Array(QUERIES);
  let unexpected = 0;
  for (let i = 0; i < QUERIES; i++) {
    const t0 = performance.now();
    const expected = await variant.run();
    latencies[i] = (performance.now() - t0) * 1000;
    if (!expected) unexpected++;
  }
  return { medianUs: median(latencies), meanUs: mean(latencies), unexpected };
}

interface OverheadResult {
  readonly label: string;
  readonly medianUs: number;
  readonly meanUs: number;
  readonly ratioMedian: number | undefined;
  readonly ratioMean: number | undefined;
  readonly unexpected: number;
}

async function overhead(urls: Urls): Promise<OverheadResult[]> {
  const replica = Object.keys(urls.replicas)[0]!;
  const replicaUrl = urls.replicas[replica]!;
  // One replica, so the routed read and the raw query hit the same server.
  const cluster = createCluster({
    primary: urls.primary,
    replicas: { [replica]: replicaUrl },
    poolSize: 1,
  });
  const raw = new pg.Pool({ connectionString: replicaUrl, max: 1 });
  try {
    await cluster.ready();
    const id = 1;
    const { token } = await cluster.write(BUMP, [id]);
    // A token from a write a second ago, which the cached replica position already covers.
    await sleep(1000);
    await proveCaughtUp(cluster, replica, token);

    const variants: Variant[] = [
      {
        label: `raw \`pg.Pool\` query on ${replica}`,
        short: 'raw',
        run: async () => (await raw.query(SELECT, [id])).rowCount === 1,
      },
      {
        label: 'routed, `eventual`',
        short: 'eventual',
        run: async () => {
          const read = await cluster.read(SELECT, [id], { consistency: { level: 'eventual' } });
          return read.servedBy === replica && read.reason === 'any_replica';
        },
      },
      {
        label: 'routed, `read-your-writes`, token already covered',
        short: 'read-your-writes',
        run: async () => {
          const read = await cluster.read(SELECT, [id], {
            consistency: { level: 'read-your-writes' },
            token,
          });
          return read.servedBy === replica && read.reason === 'caught_up';
        },
      },
    ];
    progress(`overhead: warm-up, then ${ROUNDS} rounds × ${QUERIES} sequential reads per variant`);
    for (const variant of variants) await timeRound(variant);

    const samples = variants.map((): RoundSample[] => []);
    for (let round = 0; round < ROUNDS; round++) {
      stop.signal.throwIfAborted();
      // A B C, then C B A: alternating the order cancels drift and warm-cache effects in pairs.
      const order = variants.map((_, i) => (round % 2 === 0 ? i : variants.length - 1 - i));
      for (const i of order) samples[i]!.push(await timeRound(variants[i]!));
      const rawSample = samples[0]![round]!;
      progress(
        `overhead round ${round + 1}/${ROUNDS}: ` +
          variants
            .map((variant, i) => {
              const sample = samples[i]![round]!;
              const ratio = sample.medianUs / rawSample.medianUs;
              return `${variant.short} ${sample.medianUs.toFixed(0)} µs (×${ratio.toFixed(3)})`;
            })
            .join(', '),
      );
    }

    return variants.map((variant, i) => {
      const rounds = samples[i]!;
      const rawRounds = samples[0]!;
      return {
        label: variant.label,
        medianUs: median(rounds.map((s) => s.medianUs)),
        meanUs: median(rounds.map((s) => s.meanUs)),
        ratioMedian:
          i === 0 ? undefined : median(rounds.map((s, r) => s.medianUs / rawRounds[r]!.medianUs)),
        ratioMean:
          i === 0 ? undefined : median(rounds.map((s, r) => s.meanUs / rawRounds[r]!.meanUs)),
        unexpected: rounds.reduce((total, s) => total + s.unexpected, 0),
      };
    });
  } finally {
    await raw.end();
    await cluster.close();
  }
}

/** Waits until the cluster's cached position of `replica` covers `token`, so reads need no wait. */
async function proveCaughtUp(
  cluster: Cluster,
  replica: string,
  token: ConsistencyToken,
): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const status = cluster.replicaStatus().find((entry) => entry.name === replica);
    const replay = status?.replayLsn === undefined ? undefined : parseLsn(status.replayLsn);
    if (replay !== undefined && replay >= token.written) return;
    if (Date.now() > deadline)
      throw new Error(`${replica} did not report the token's position within 10 s`);
    await sleep(50);
  }
}

function overheadTable(results: readonly OverheadResult[]): string {
  return table(
    [
      'read',
      'median latency (µs)',
      'mean latency (µs)',
      'ratio to raw, medians',
      'ratio to raw, means',
      'reads not routed as expected',
    ],
    results.map((result) => [
      result.label,
      result.medianUs.toFixed(0),
      result.meanUs.toFixed(0),
      result.ratioMedian === undefined ? '1' : result.ratioMedian.toFixed(3),
      result.ratioMean === undefined ? '1' : result.ratioMean.toFixed(3),
      String(result.unexpected),
    ]),
  );
}

// ---------------------------------------------------------------------------------------------
// 3. Shared waiting

/**
 * When the waiting reads start: once the primary monitor's cached position covers the write
 * (`cached`: no primary check per read, so the scenario isolates the replica wait), or right after
 * the write as an application would (`immediate`: each read first has its token checked against
 * a fresh primary position).
 */
type WaitStart = 'cached' | 'immediate';

interface WaitScenario {
  readonly waiters: number;
  readonly start: WaitStart;
  /** From the first read started to the last waiter woken. */
  readonly windowMs: number;
  /** Position queries of the replica monitors over that window. */
  readonly polls: number;
  readonly pollsPerReplica: Readonly<Record<string, number>>;
  /** Queries of the primary monitor over the window, and their p50 and max, queueing included. */
  readonly primaryChecks: number;
  readonly primaryCheckMs: number;
  readonly primaryCheckMaxMs: number;
  /** Wait of each read as the cluster reports it (from the start of its wait to its wake-up). */
  readonly waitedMedianMs: number;
  /** From the resume call to the last waiter woken. */
  readonly wakeAllMs: number;
  /** From the resume call to the last read answered. */
  readonly doneAllMs: number;
  readonly stale: number;
  readonly reasons: Readonly<Partial<Record<RouteReason, number>>>;
}

/** Resolves once the primary monitor's cached position is at or past `token`. */
async function primaryCovers(cluster: Cluster, token: ConsistencyToken): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const status = cluster.primaryStatus();
    const position = status === undefined ? undefined : parseLsn(status.insertLsn);
    if (position !== undefined && position >= token.written) return;
    if (Date.now() > deadline)
      throw new Error("the primary monitor did not sample the write's position within 10 s");
    await sleep(5);
  }
}

async function waitScenario(
  stack: LocalStack,
  cluster: Cluster,
  waits: WaitLog,
  waiters: number,
  start: WaitStart,
): Promise<WaitScenario> {
  await Promise.all(stack.replicas.map((replica) => stack.pauseReplay(replica.name)));
  try {
    const written = await cluster.write<{ version: number }>(BUMP, [1]);
    const version = written.rows[0]!.version;
    if (start === 'cached') await primaryCovers(cluster, written.token);
    waits.reset(waiters, () => cluster.monitorPolls());
    const pollsBefore = cluster.monitorPolls();
    const checksBefore = counter.count(PRIMARY_MONITOR);
    const timedBefore = counter.durations(PRIMARY_MONITOR).length;
    const startedAt = performance.now();
    const reads = Array.from({ length: waiters }, () =>
      cluster.read<{ version: number }>(SELECT, [1], {
        consistency: { level: 'read-your-writes' },
        token: written.token,
        waitTimeoutMs: HOLD_MS + 30_000,
      }),
    );
    await sleep(HOLD_MS);
    const resumedAt = performance.now();
    await Promise.all(stack.replicas.map((replica) => stack.resumeReplay(replica.name)));
    const results = await Promise.all(reads);
    const doneAt = performance.now();
    const pollsAfter = waits.pollsAtLastWake ?? cluster.monitorPolls();
    const lastWake =
      waits.events.length === 0 ? doneAt : Math.max(...waits.events.map((e) => e.at));
    const checkTimes = counter.durations(PRIMARY_MONITOR).slice(timedBefore);
    const pollsPerReplica = Object.fromEntries(
      Object.entries(pollsAfter).map(([name, polls]) => [name, polls - (pollsBefore[name] ?? 0)]),
    );
    const reasons: Partial<Record<RouteReason, number>> = {};
    for (const read of results) reasons[read.reason] = (reasons[read.reason] ?? 0) + 1;
    return {
      waiters,
      start,
      windowMs: lastWake - startedAt,
      polls: sum(pollsPerReplica),
      pollsPerReplica,
      primaryChecks: counter.count(PRIMARY_MONITOR) - checksBefore,
      primaryCheckMs: median(checkTimes),
      primaryCheckMaxMs: checkTimes.length === 0 ? Number.NaN : Math.max(...checkTimes),
      waitedMedianMs: median(waits.events.map((event) => event.waitedMs)),
      wakeAllMs: waits.events.length === 0 ? Number.NaN : lastWake - resumedAt,
      doneAllMs: doneAt - resumedAt,
      stale: results.filter((read) => read.rows[0]!.version < version).length,
      reasons,
    };
  } finally {
    await Promise.all(stack.replicas.map((replica) => stack.resumeReplay(replica.name)));
    await stack.waitForReplicas();
  }
}

/** The cluster's wait events of the scenario running, and the poll counts at its last wake-up. */
class WaitLog {
  events: { waitedMs: number; at: number }[] = [];
  pollsAtLastWake: Readonly<Record<string, number>> | undefined;
  #expected = 0;
  #polls: () => Readonly<Record<string, number>> = () => ({});

  reset(expected: number, polls: () => Readonly<Record<string, number>>): void {
    this.events = [];
    this.pollsAtLastWake = undefined;
    this.#expected = expected;
    this.#polls = polls;
  }

  record(waitedMs: number): void {
    this.events.push({ waitedMs, at: performance.now() });
    if (this.events.length === this.#expected) this.pollsAtLastWake = this.#polls();
  }
}

/** Replica monitor polls in `HOLD_MS` with replay paused and nobody waiting. */
async function idleBaseline(stack: LocalStack, cluster: Cluster): Promise<number> {
  await Promise.all(stack.replicas.map((replica) => stack.pauseReplay(replica.name)));
  try {
    await cluster.write(BUMP, [1]);
    const before = cluster.monitorPolls();
    await sleep(HOLD_MS);
    return sum(cluster.monitorPolls()) - sum(before);
  } finally {
    await Promise.all(stack.replicas.map((replica) => stack.resumeReplay(replica.name)));
    await stack.waitForReplicas();
  }
}

interface WaitSummary {
  readonly waiters: number;
  readonly start: WaitStart;
  readonly runs: readonly WaitScenario[];
}

async function sharedWaiting(
  stack: LocalStack,
  urls: Urls,
): Promise<{ idle: number[]; summaries: WaitSummary[] }> {
  const waits = new WaitLog();
  const cluster = createCluster({
    primary: urls.primary,
    replicas: urls.replicas,
    poolSize: SESSIONS,
    observer: { onWait: (event) => waits.record(event.waitedMs) },
  });
  const cases: { waiters: number; start: WaitStart }[] = [
    { waiters: 1, start: 'cached' },
    { waiters: WAITERS, start: 'cached' },
    { waiters: 1, start: 'immediate' },
    { waiters: WAITERS, start: 'immediate' },
  ];
  const runs = cases.map((): WaitScenario[] => []);
  const idle: number[] = [];
  try {
    await cluster.ready();
    for (let repeat = 0; repeat < REPEATS; repeat++) {
      stop.signal.throwIfAborted();
      idle.push(await idleBaseline(stack, cluster));
      // Alternate the order of the cases from one repeat to the next.
      const order = cases.map((_, i) => (repeat % 2 === 0 ? i : cases.length - 1 - i));
      for (const i of order) {
        stop.signal.throwIfAborted();
        const { waiters, start } = cases[i]!;
        const run = await waitScenario(stack, cluster, waits, waiters, start);
        runs[i]!.push(run);
        const perReplica = Object.entries(run.pollsPerReplica)
          .map(([name, polls]) => `${name} ${polls}`)
          .join(', ');
        progress(
          `shared wait ${repeat + 1}/${REPEATS}, ${waiters} reads (${start}): ` +
            `${run.polls} replica polls in ${ms(run.windowMs)} ms (${perReplica}), ` +
            `${run.primaryChecks} primary monitor queries (p50 ${ms(run.primaryCheckMs)} ms, ` +
            `max ${ms(run.primaryCheckMaxMs)} ms), last waiter woken ${ms(run.wakeAllMs)} ms and ` +
            `last read answered ${ms(run.doneAllMs)} ms after resume; ${formatReasons(run.reasons)}; ` +
            `${run.stale} stale`,
        );
      }
    }
  } finally {
    await cluster.close();
  }
  return { idle, summaries: cases.map((c, i) => ({ ...c, runs: runs[i]! })) };
}

function waitTable(
  idle: readonly number[],
  summaries: readonly WaitSummary[],
  replicas: number,
): string {
  const rows = summaries.map(({ waiters, start, runs }) => {
    const of = (pick: (run: WaitScenario) => number): number => median(runs.map(pick));
    const names = Object.keys(runs[0]?.pollsPerReplica ?? {});
    const perReplica = names
      .map((name) => `${name} ${of((run) => run.pollsPerReplica[name] ?? 0)}`)
      .join(', ');
    const perSecond = of((run) => (1000 * run.polls) / names.length / run.windowMs);
    const reasons: Partial<Record<RouteReason, number>> = {};
    for (const run of runs)
      for (const [reason, count] of Object.entries(run.reasons))
        reasons[reason as RouteReason] = (reasons[reason as RouteReason] ?? 0) + count;
    return [
      String(waiters),
      start === 'cached' ? 'after the primary cache covers the write' : 'right after the write',
      ms(of((run) => run.windowMs)),
      `${of((run) => run.polls)} (${perReplica})`,
      perSecond.toFixed(0),
      `${of((run) => run.primaryChecks)} (${ms(of((run) => run.primaryCheckMs))} / ${ms(of((run) => run.primaryCheckMaxMs))})`,
      ms(of((run) => run.waitedMedianMs)),
      ms(of((run) => run.wakeAllMs)),
      ms(of((run) => run.doneAllMs)),
      `${runs.reduce((total, run) => total + run.stale, 0)} / ${runs.length * waiters}`,
      formatReasons(reasons),
    ];
  });
  const idlePerSecond = (1000 * median(idle)) / replicas / HOLD_MS;
  return table(
    [
      'reads',
      'reads start',
      'window (ms)',
      'replica position polls in the window',
      'polls / s per replica',
      'primary monitor queries (p50 / max ms)',
      'wait per read, p50 (ms)',
      'resume → last waiter woken (ms)',
      'resume → last read answered (ms)',
      'stale',
      'routes (all runs)',
    ],
    [
      [
        '0',
        'idle sampling, replay paused',
        String(HOLD_MS),
        String(median(idle)),
        idlePerSecond.toFixed(0),
        '–',
        '–',
        '–',
        '–',
        '–',
        '–',
      ],
      ...rows,
    ],
  );
}

// ---------------------------------------------------------------------------------------------

interface Urls {
  readonly primary: string;
  readonly replicas: Readonly<Record<string, string>>;
}

async function prepare(stack: LocalStack): Promise<Urls> {
  await stack.resetFaults();
  await stack.query('primary', `drop database if exists ${DATABASE} with (force)`);
  await stack.query('primary', `create database ${DATABASE}`);
  await stack.query(
    'primary',
    'create table counters (id int primary key, version int not null)',
    [],
    DATABASE,
  );
  await stack.query(
    'primary',
    'insert into counters select g, 0 from generate_series(1, $1::int) g',
    [Math.max(SESSIONS, 1)],
    DATABASE,
  );
  await stack.waitForReplicas();
  return {
    primary: stack.url('primary', DATABASE),
    replicas: Object.fromEntries(
      stack.replicas.map((replica) => [replica.name, stack.url(replica.name, DATABASE)]),
    ),
  };
}

const startedAt = performance.now();
const load = loadavg()
  .map((value) => value.toFixed(2))
  .join(' ');
progress(`starting the bench stack in ${values.dir}`);
const stack = await LocalStack.start({ dir: resolve(values.dir), log: progress });
let output: string;
try {
  const urls = await prepare(stack);

  counter.install();
  progress(
    `part 1: ${POLICIES.length} policies × ${DELAYS.length} delays, ${SESSIONS} sessions, ` +
      `${SECONDS} s or ${MAX_READS} reads per cell`,
  );
  const cells = await policies(stack, urls);
  counter.uninstall();

  progress('part 2: routing overhead');
  const costs = await overhead(urls);

  counter.install();
  progress(`part 3: shared waiting, 1 and ${WAITERS} reads, ${REPEATS} times each`);
  const { idle, summaries } = await sharedWaiting(stack, urls);
  counter.uninstall();

  output = [
    `Command: \`${COMMAND}\``,
    '',
    `${stack.binaries.version}, Node ${process.version}, ${cpus().length} CPUs, ` +
      `load average at start ${load}; total ${((performance.now() - startedAt) / 1000).toFixed(0)} s.`,
    '',
    `### Policies on a write-then-read workload`,
    '',
    `${SESSIONS} concurrent sessions, each updating its own row and reading it back with the ` +
      `write's token; ${SECONDS} s (at most ${MAX_READS} reads) per cell; apply delay set on both ` +
      `replicas; wait bound ${WAIT_TIMEOUT_MS} ms. Latency is around \`cluster.read\` only. ` +
      `Primary monitor queries: its background sample every 100 ms, plus a refresh for each ` +
      `read whose token is newer than its cached position; their p50 includes queueing on its ` +
      `one connection.`,
    '',
    policiesTable(cells),
    '',
    `### Routing overhead`,
    '',
    `One client, sequential reads of one row by primary key on the same replica; ${ROUNDS} ` +
      `rounds × ${QUERIES} reads per variant, in order A B C / C B A; latency and ratios are ` +
      `medians across rounds of per-round values (the ratio is taken within each round).`,
    '',
    overheadTable(costs),
    '',
    `### Shared waiting`,
    '',
    `Replay paused on both replicas, one write, then N concurrent read-your-writes reads with ` +
      `its token; replay resumed ${HOLD_MS} ms after the first read. The window runs from the ` +
      `first read to the last waiter woken; polls are counted over it. Medians of ${REPEATS} ` +
      `runs; stale and routes summed over them.`,
    '',
    waitTable(idle, summaries, stack.replicas.length),
    '',
  ].join('\n');
} finally {
  counter.uninstall();
  progress('stopping the bench stack');
  await stack.stop();
}
process.stdout.write(output);
