/**
 * The event store against Emmett's PostgreSQL event store (`@event-driven-io/emmett-postgresql`),
 * side by side on the same server in the same run (the bench stack in `.replikit/bench`, started
 * here if it is not running; each store in a database of its own, recreated at the start). Both
 * commit every append with the server's default durability (`synchronous_commit = on`).
 *
 * 1. Append throughput: 1 event per append by 1, 16 and 64 concurrent writers, and 10-event
 *    appends by 16 writers. The two stores alternate within each round; tables give medians
 *    across rounds and the replikit/Emmett ratio taken within each round.
 * 2. Projection lag at a steady rate (default 500 events/s) from 64 concurrent writers, each
 *    store with its own asynchronous consumer: lag is from an append's acknowledgement to the
 *    commit of the batch that applied it (Emmett: to its handler's call, which is earlier).
 * 3. Missed events: the events each consumer applied, against a recount from the log, live
 *    (after the writers stop) and on replay (a new consumer from the start of the log; for the
 *    large log of the throughput cells, bounded by --replay-seconds). Only an event the
 *    consumer's checkpoint has passed without applying it counts as missed: the consumer will
 *    never read it. Events after the checkpoint were not reached, and the tables say so when a
 *    consumer stopped before the end of the log.
 *
 *   npm run bench:events
 *   npm run bench:events -- --seconds 5 --rounds 3 --rate 500 --lag-seconds 15 --replay-seconds 90
 *   npm run bench:events -- --only append     (append throughput alone: no replay, no lag)
 *
 * Progress goes to stderr, markdown tables to stdout.
 */
import { randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';
import pg from 'pg';

import { migrate } from '../src/db/migrate.js';
import {
  createEventStore,
  EVENT_STORE_MIGRATIONS,
  type EventStore,
  type ProjectionRunner,
} from '../src/events/index.js';
import { LocalStack } from '../src/stack/index.js';
import { median, ms, percentile, progressFor, table, positiveOption } from './support/report.js';

const progress = progressFor('bench:events');

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: '.replikit/bench' },
    seconds: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '2' },
    rate: { type: 'string', default: '500' },
    'lag-seconds': { type: 'string', default: '12' },
    'lag-writers': { type: 'string', default: '64' },
    'replay-seconds': { type: 'string', default: '90' },
    only: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (values.help) {
  process.stdout.write(
    [
      'npm run bench:events -- [options]',
      '  --dir DIR               bench stack directory (default .replikit/bench)',
      '  --seconds S             measured seconds per throughput cell (default 4)',
      '  --warmup S              warm-up seconds per cell (default 1)',
      '  --rounds N              rounds of throughput cells (default 2)',
      '  --rate N                events/s of the lag run (default 500)',
      '  --lag-seconds S         length of the lag run (default 12)',
      '  --lag-writers N         writers of the lag run (default 64)',
      "  --replay-seconds S      bound of the throughput logs' replay (default 90)",
      '  --only append           append throughput only (no replay, no lag run)',
      '',
    ].join('\n'),
  );
  process.exit(0);
}
if (values.only !== undefined && values.only !== 'append') {
  throw new RangeError(`--only takes "append", got "${values.only}"`);
}
const APPEND_ONLY = values.only === 'append';

function positive(name: Exclude<keyof typeof values, 'help' | 'only'>, integer = true): number {
  return positiveOption(name, values[name], integer);
}

const SECONDS = positive('seconds', false);
const WARMUP = positive('warmup', false);
const ROUNDS = positive('rounds');
const RATE = positive('rate');
const LAG_SECONDS = positive('lag-seconds', false);
const LAG_WRITERS = positive('lag-writers');
const REPLAY_SECONDS = positive('replay-seconds', false);
const LOAD_AT_START = loadavg();
const COMMAND = ['npm run bench:events', ...(process.argv.length > 2 ? ['--'] : [])]
  .concat(process.argv.slice(2))
  .join(' ');

/** Streams each writer spreads its appends over: enough that writers rarely share one. */
const STREAMS_PER_WRITER = 100;

interface Mode {
  readonly key: string;
  readonly writers: number;
  readonly eventsPerAppend: number;
}

const MODES: readonly Mode[] = [
  { key: 'sequential, 1 event', writers: 1, eventsPerAppend: 1 },
  { key: '16 writers, 1 event', writers: 16, eventsPerAppend: 1 },
  { key: '64 writers, 1 event', writers: 64, eventsPerAppend: 1 },
  { key: '16 writers, 10 events', writers: 16, eventsPerAppend: 10 },
];

type StoreKey = 'replikit' | 'emmett';

interface Appender {
  append(stream: string, events: number): Promise<void>;
  close(): Promise<void>;
}

function followed(): { type: 'UserFollowed'; data: { userId: string; targetId: string } } {
  return {
    type: 'UserFollowed',
    data: { userId: randomUUID(), targetId: `u${Math.floor(Math.random() * 1000)}` },
  };
}

function replikitAppender(url: string, writers: number): Appender {
  const store = createEventStore({ connection: url, poolSize: writers });
  return {
    append: async (stream, n) => {
      await store.append(
        stream,
        Array.from({ length: n }, () => followed()),
      );
    },
    close: () => store.close(),
  };
}

function emmettAppender(url: string, writers: number): Appender {
  const pool = new pg.Pool({ connectionString: url, max: writers });
  const store = getPostgreSQLEventStore(url, {
    connectionOptions: { pool, pooled: true },
    schema: { autoMigration: 'None' },
  });
  return {
    append: async (stream, n) => {
      await store.appendToStream(
        stream,
        Array.from({ length: n }, () => followed()),
      );
    },
    close: async () => {
      await store.close();
      await pool.end().catch(() => undefined);
    },
  };
}

interface Cell {
  readonly store: StoreKey;
  readonly mode: string;
  readonly round: number;
  readonly eventsPerSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly failed: number;
}

async function runCell(url: string, store: StoreKey, mode: Mode, round: number): Promise<Cell> {
  const appender =
    store === 'replikit' ? replikitAppender(url, mode.writers) : emmettAppender(url, mode.writers);
  const latencies: number[] = [];
  let failed = 0;
  let lastEnd = 0;
  const measureFrom = performance.now() + WARMUP * 1000;
  const deadline = measureFrom + SECONDS * 1000;
  try {
    await Promise.all(
      Array.from({ length: mode.writers }, async (_, w) => {
        for (let i = 0; performance.now() < deadline; i++) {
          const began = performance.now();
          try {
            await appender.append(`w${w}-${round}-${i % STREAMS_PER_WRITER}`, mode.eventsPerAppend);
            if (began >= measureFrom) {
              const ended = performance.now();
              latencies.push(ended - began);
              lastEnd = Math.max(lastEnd, ended);
            }
          } catch {
            if (began >= measureFrom) failed++;
          }
        }
      }),
    );
  } finally {
    await appender.close();
  }
  const elapsed = Math.max(lastEnd - measureFrom, 1);
  return {
    store,
    mode: mode.key,
    round,
    eventsPerSecond: (latencies.length * mode.eventsPerAppend * 1000) / elapsed,
    p50: median(latencies),
    p99: percentile(latencies, 0.99),
    failed,
  };
}

// ---------------------------------------------------------------------------------------------
// Projection lag and missed events

/**
 * Where an event sits in the order a consumer reads and checkpoints in. replikit reads in
 * `(transaction id, position)` order and checkpoints both; Emmett's puller orders a batch by
 * `(transaction_id, global_position)` but checkpoints the bare `global_position` of the batch's
 * last message and reads on with `global_position > checkpoint`, so its order, for what it will
 * still read, is the global position alone (the transaction id is left at 0).
 */
type OrderKey = readonly [bigint, bigint];

function compareKeys(a: OrderKey, b: OrderKey): number {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  return a[1] === b[1] ? 0 : a[1] < b[1] ? -1 : 1;
}

interface AppliedEvent {
  readonly id: string;
  readonly key: OrderKey;
}

interface Consumer {
  /** Event ids applied, in order of application (a repeat shows up twice). */
  readonly applied: string[];
  /** Milliseconds from acknowledgement to application, per event acknowledged before it applied. */
  readonly lags: number[];
  /**
   * The last event applied, in the consumer's order: its checkpoint. Both consumers only read
   * after their checkpoint, so an event at or before it that was never applied is skipped for
   * good, whereas one after it may simply not have been reached yet.
   */
  readonly progress: { last: OrderKey | undefined; lastAppliedAt: number };
  stop(): Promise<void>;
}

/** Acknowledgement times by event id, shared by the writers and the consumer of one store. */
type Acks = Map<string, number>;

function newConsumerState(): Omit<Consumer, 'stop'> {
  return { applied: [], lags: [], progress: { last: undefined, lastAppliedAt: 0 } };
}

function record(
  consumer: Omit<Consumer, 'stop'>,
  acks: Acks,
  events: readonly AppliedEvent[],
): void {
  const now = performance.now();
  for (const event of events) {
    consumer.applied.push(event.id);
    const ackAt = acks.get(event.id);
    if (ackAt !== undefined) consumer.lags.push(Math.max(0, now - ackAt));
    consumer.progress.last = event.key;
  }
  if (events.length > 0) consumer.progress.lastAppliedAt = now;
}

function replikitConsumer(store: EventStore, name: string, acks: Acks): Consumer {
  const consumer = newConsumerState();
  let pending: AppliedEvent[] = [];
  const runner: ProjectionRunner = store.startProjection(
    {
      name,
      apply: (events) => {
        pending = events.map((event) => ({
          id: event.id,
          key: [event.globalPosition.transactionId, event.globalPosition.position] as const,
        }));
        return Promise.resolve();
      },
    },
    { batchSize: 500 },
  );
  // Stamped once the batch has committed (the store's observer calls back after COMMIT).
  batchCommitted.set(name, () => {
    record(consumer, acks, pending);
    pending = [];
  });
  return { ...consumer, stop: () => runner.stop() };
}

const batchCommitted = new Map<string, () => void>();

/** Emmett with its default pulling (batches of 100, 50 ms apart while there is more). */
function emmettConsumer(url: string, processorId: string, acks: Acks): Consumer {
  const consumer = newConsumerState();
  const store = getPostgreSQLEventStore(url, { schema: { autoMigration: 'None' } });
  const subscription = store.consumer();
  subscription.reactor({
    processorId,
    startFrom: 'BEGINNING',
    eachMessage: (message) => {
      const metadata = message.metadata as { messageId?: string; globalPosition?: bigint };
      if (metadata.messageId !== undefined && metadata.globalPosition !== undefined)
        record(consumer, acks, [
          { id: metadata.messageId, key: [0n, BigInt(metadata.globalPosition)] },
        ]);
      return Promise.resolve();
    },
  });
  const running = subscription.start().catch((err: unknown) => {
    progress(
      `emmett consumer ${processorId} failed: ${err instanceof Error ? err.message : String(err)}`,
    );
  });
  return {
    ...consumer,
    stop: async () => {
      await subscription.stop();
      await running;
      await subscription.close().catch(() => undefined);
      await store.close();
    },
  };
}

/** One event of a store's log, recounted from the table. */
interface LogEvent {
  readonly id: string;
  readonly transactionId: bigint;
  readonly position: bigint;
}

interface Log {
  readonly store: StoreKey;
  readonly events: readonly LogEvent[];
}

/** An event's place in the order the store's consumer reads in (see {@link OrderKey}). */
function orderKey(store: StoreKey, event: LogEvent): OrderKey {
  return store === 'replikit' ? [event.transactionId, event.position] : [0n, event.position];
}

/** The last event of the log in the store's consumer order: a consumer there has read it all. */
function logEnd(log: Log): OrderKey | undefined {
  let end: OrderKey | undefined;
  for (const event of log.events) {
    const key = orderKey(log.store, event);
    if (end === undefined || compareKeys(key, end) > 0) end = key;
  }
  return end;
}

function reachedEnd(consumer: Consumer, end: OrderKey | undefined): boolean {
  if (end === undefined) return true;
  const last = consumer.progress.last;
  return last !== undefined && compareKeys(last, end) >= 0;
}

/**
 * Waits until the consumer has applied the last event of the log (in its own order), or made no
 * progress for `quietMs`, or `maxMs` has passed.
 */
async function settle(consumer: Consumer, log: Log, quietMs = 3000, maxMs = 60_000): Promise<void> {
  const end = logEnd(log);
  const started = Date.now();
  let last = -1;
  let lastChange = Date.now();
  while (Date.now() - started < maxMs) {
    if (reachedEnd(consumer, end)) return;
    const n = consumer.applied.length;
    if (n !== last) {
      last = n;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > quietMs) {
      return;
    }
    await sleep(50);
  }
}

async function readLog(url: string, store: StoreKey): Promise<Log> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const sql =
      store === 'replikit'
        ? 'select event_id::text as id, tx_id::text as tx, position::text as position from replikit_events'
        : 'select message_id as id, transaction_id::text as tx, global_position::text as position from emt_messages';
    const { rows } = await client.query<{ id: string; tx: string; position: string }>(sql);
    return {
      store,
      events: rows.map((row) => ({
        id: row.id,
        transactionId: BigInt(row.tx),
        position: BigInt(row.position),
      })),
    };
  } finally {
    await client.end();
  }
}

/** A consumer's applied events against a recount of the log. */
interface MissedCount {
  /** Never applied, at or before the consumer's checkpoint: skipped for good. */
  readonly missed: number;
  /** Never applied, after the checkpoint: not reached (yet). 0 when the consumer reached the end. */
  readonly notReached: number;
  /** Events of the log at or before the checkpoint: how far the consumer got. */
  readonly covered: number;
  readonly duplicates: number;
  readonly reachedEnd: boolean;
}

function missed(log: Log, consumer: Consumer): MissedCount {
  const seen = new Set(consumer.applied);
  const checkpoint = consumer.progress.last;
  let skipped = 0;
  let notReached = 0;
  for (const event of log.events) {
    const behind =
      checkpoint !== undefined && compareKeys(orderKey(log.store, event), checkpoint) <= 0;
    if (!seen.has(event.id)) {
      if (behind) skipped++;
      else notReached++;
    }
  }
  return {
    missed: skipped,
    notReached,
    covered: log.events.length - notReached,
    duplicates: consumer.applied.length - seen.size,
    reachedEnd: notReached === 0 && reachedEnd(consumer, logEnd(log)),
  };
}

function percent(n: number, of: number): string {
  return `${((100 * n) / Math.max(1, of)).toFixed(2)} %`;
}

/** "0 (0.00 %)", with "; not reached: n" when the consumer stopped before the end of the log. */
function missedCell(result: MissedCount, total: number): string {
  const cell = `${result.missed} (${percent(result.missed, total)})`;
  return result.reachedEnd
    ? cell
    : `${cell}; end not reached (${result.notReached} after its checkpoint)`;
}

interface LagResult {
  readonly store: StoreKey;
  readonly appended: number;
  readonly ratePerSecond: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly live: MissedCount;
  readonly replay: MissedCount;
}

async function lagCell(url: string, store: StoreKey): Promise<LagResult> {
  const acks: Acks = new Map();
  let replikit: EventStore | undefined;
  let appendOne: (stream: string) => Promise<string>;
  let closeWriters: () => Promise<void>;
  let live: Consumer;
  if (store === 'replikit') {
    const s = createEventStore({
      connection: url,
      poolSize: LAG_WRITERS + 4,
      observer: { onProjectionBatch: (event) => batchCommitted.get(event.projection)?.() },
    });
    replikit = s;
    appendOne = async (stream) => {
      const id = randomUUID();
      await s.append(stream, [{ ...followed(), id }]);
      return id;
    };
    closeWriters = () => Promise.resolve();
    live = replikitConsumer(s, 'bench_live', acks);
  } else {
    const pool = new pg.Pool({ connectionString: url, max: LAG_WRITERS + 4 });
    const s = getPostgreSQLEventStore(url, {
      connectionOptions: { pool, pooled: true },
      schema: { autoMigration: 'None' },
    });
    appendOne = async (stream) => {
      const id = randomUUID();
      await s.appendToStream(stream, [{ ...followed(), metadata: { messageId: id } }]);
      return id;
    };
    closeWriters = async () => {
      await s.close();
      await pool.end().catch(() => undefined);
    };
    live = emmettConsumer(url, 'bench_live', acks);
  }
  await sleep(500);

  // Writers take slots on a fixed schedule (one every 1000/RATE ms); a slot whose time has come
  // goes to the next free writer, so the rate holds as long as 64 writers can keep up.
  const interval = 1000 / RATE;
  const slots = Math.round(RATE * LAG_SECONDS);
  let next = 0;
  const t0 = performance.now();
  let appended = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: LAG_WRITERS }, async (_, w) => {
      for (;;) {
        const slot = next++;
        if (slot >= slots) return;
        const due = t0 + slot * interval;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        try {
          const id = await appendOne(`lag-${w}-${slot % STREAMS_PER_WRITER}`);
          acks.set(id, performance.now());
          appended++;
        } catch {
          failed++;
        }
      }
    }),
  );
  const ratePerSecond = (appended * 1000) / (performance.now() - t0);
  if (failed > 0) progress(`${store}: ${failed} appends failed`);
  await closeWriters();

  const log = await readLog(url, store);
  await settle(live, log);
  await live.stop();
  const liveResult = missed(log, live);

  // Replay: a new consumer from the start of the log, everything committed.
  const replayAcks: Acks = new Map();
  const replay =
    store === 'replikit'
      ? replikitConsumer(replikit!, 'bench_replay', replayAcks)
      : emmettConsumer(url, 'bench_replay', replayAcks);
  await settle(replay, log);
  await replay.stop();
  const replayResult = missed(log, replay);
  await replikit?.close();

  return {
    store,
    appended,
    ratePerSecond,
    p50: median(live.lags),
    p99: percentile(live.lags, 0.99),
    max: percentile(live.lags, 1),
    live: liveResult,
    replay: replayResult,
  };
}

// ---------------------------------------------------------------------------------------------

async function freshDatabase(stack: LocalStack, name: string, store: StoreKey): Promise<string> {
  await stack.query('primary', `drop database if exists ${name} with (force)`);
  await stack.query('primary', `create database ${name}`);
  const url = stack.url('primary', name);
  if (store === 'replikit') {
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    await migrate(pool, EVENT_STORE_MIGRATIONS);
    await pool.end();
  } else {
    const es = getPostgreSQLEventStore(url, { schema: { autoMigration: 'CreateOrUpdate' } });
    await es.schema.migrate();
    await es.close();
  }
  return url;
}

const stack = await LocalStack.start({ dir: resolve(values.dir), log: progress });
const urls: Record<StoreKey, string> = {
  replikit: await freshDatabase(stack, 'bench_events_replikit', 'replikit'),
  emmett: await freshDatabase(stack, 'bench_events_emmett', 'emmett'),
};
const [settings] = await stack.query<{ sync: string; fsync: string; version: string }>(
  'primary',
  "select current_setting('synchronous_commit') as sync, current_setting('fsync') as fsync, current_setting('server_version') as version",
);
progress(
  `PostgreSQL ${settings!.version}, synchronous_commit=${settings!.sync}, fsync=${settings!.fsync}`,
);

const cells: Cell[] = [];
for (let round = 1; round <= ROUNDS; round++) {
  for (const mode of MODES) {
    const order: StoreKey[] = round % 2 === 1 ? ['replikit', 'emmett'] : ['emmett', 'replikit'];
    for (const store of order) {
      await stack.query('primary', 'checkpoint');
      const cell = await runCell(urls[store], store, mode, round);
      cells.push(cell);
      progress(
        `round ${round} ${mode.key} ${store}: ${cell.eventsPerSecond.toFixed(0)} events/s, p50 ${ms(cell.p50)} ms, p99 ${ms(cell.p99)} ms${cell.failed > 0 ? `, ${cell.failed} failed` : ''}`,
      );
    }
  }
}

const throughputRows = MODES.flatMap((mode) => {
  const mine = (store: StoreKey) => cells.filter((c) => c.mode === mode.key && c.store === store);
  const ratios = mine('replikit').flatMap((c) => {
    const partner = mine('emmett').find((e) => e.round === c.round);
    return partner === undefined ? [] : [c.eventsPerSecond / partner.eventsPerSecond];
  });
  return (['replikit', 'emmett'] as const).map((store) => [
    mode.key,
    store === 'replikit' ? 'replikit' : 'Emmett 0.42',
    median(mine(store).map((c) => c.eventsPerSecond)).toFixed(0),
    mine(store)
      .map((c) => c.eventsPerSecond.toFixed(0))
      .join(', '),
    ms(median(mine(store).map((c) => c.p50))),
    ms(median(mine(store).map((c) => c.p99))),
    store === 'replikit' && ratios.length > 0
      ? `${median(ratios).toFixed(2)} (${ratios.map((r) => r.toFixed(2)).join(', ')})`
      : '–',
    String(mine(store).reduce((n, c) => n + c.failed, 0)),
  ]);
});

// Replay of the throughput cells' logs: written by up to 64 unpaced writers, so commit order and
// position order differ the most. Bounded by --replay-seconds: a replay stopped before the end of
// the log still counts cleanly, as misses are only counted behind the consumer's checkpoint.
const replayRows: string[][] = [];
for (const store of APPEND_ONLY ? [] : (['replikit', 'emmett'] as const)) {
  const log = await readLog(urls[store], store);
  const replikit =
    store === 'replikit'
      ? createEventStore({
          connection: urls.replikit,
          observer: { onProjectionBatch: (event) => batchCommitted.get(event.projection)?.() },
        })
      : undefined;
  const started = performance.now();
  const replay =
    store === 'replikit'
      ? replikitConsumer(replikit!, 'bench_throughput_replay', new Map())
      : emmettConsumer(urls.emmett, 'bench_throughput_replay', new Map());
  await settle(replay, log, 3000, REPLAY_SECONDS * 1000);
  const seconds = (Math.max(replay.progress.lastAppliedAt, started + 1) - started) / 1000;
  await replay.stop();
  await replikit?.close();
  const result = missed(log, replay);
  const total = log.events.length;
  progress(
    `${store}: replay covered ${result.covered} of ${total} events in ${seconds.toFixed(0)} s (${result.reachedEnd ? 'reached the end' : 'stopped before the end'}), missed ${result.missed}, applied twice ${result.duplicates}`,
  );
  replayRows.push([
    store === 'replikit' ? 'replikit' : 'Emmett 0.42',
    String(total),
    `${result.covered} (${percent(result.covered, total)})${result.reachedEnd ? ', end reached' : ''}`,
    seconds.toFixed(0),
    `${result.missed} (${percent(result.missed, result.covered)})`,
    String(result.duplicates),
    (new Set(replay.applied).size / seconds).toFixed(0),
  ]);
}

if (!APPEND_ONLY) {
  progress(`projection lag at ${RATE} events/s from ${LAG_WRITERS} writers for ${LAG_SECONDS} s`);
}
const lagResults: LagResult[] = [];
for (const store of APPEND_ONLY ? [] : (['replikit', 'emmett'] as const)) {
  const url = await freshDatabase(stack, `bench_events_lag_${store}`, store);
  const result = await lagCell(url, store);
  lagResults.push(result);
  progress(
    `${store}: ${result.appended} appended at ${result.ratePerSecond.toFixed(0)}/s; lag p50 ${ms(result.p50)} ms, p99 ${ms(result.p99)} ms; missed live ${result.live.missed}${result.live.reachedEnd ? '' : ' (end not reached)'}, replay ${result.replay.missed}${result.replay.reachedEnd ? '' : ' (end not reached)'}`,
  );
}

const lagRows = lagResults.map((r) => [
  r.store === 'replikit' ? 'replikit' : 'Emmett 0.42',
  String(r.appended),
  r.ratePerSecond.toFixed(0),
  ms(r.p50),
  ms(r.p99),
  ms(r.max),
  missedCell(r.live, r.appended),
  missedCell(r.replay, r.appended),
  `${r.live.duplicates} / ${r.replay.duplicates}`,
]);

process.stdout.write(
  [
    `Command: \`${COMMAND}\``,
    '',
    `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, load average (1, 5, 15 min) ${LOAD_AT_START.map(
      (l) => l.toFixed(2),
    ).join(' ')} at the start, ${loadavg()
      .map((l) => l.toFixed(2))
      .join(
        ' ',
      )} at the end; PostgreSQL ${settings!.version} (synchronous_commit=${settings!.sync}, fsync=${settings!.fsync}), primary with 2 asynchronous streaming replicas, loopback.`,
    '',
    `Append throughput: ${ROUNDS} rounds, ${WARMUP} s warm-up + ${SECONDS} s per cell, stores alternating within each round.`,
    '',
    table(
      [
        'writers / append size',
        'store',
        'events/s (median)',
        'events/s per round',
        'append p50 (ms)',
        'append p99 (ms)',
        'replikit / Emmett (per round)',
        'failed',
      ],
      throughputRows,
    ),
    '',
    ...(APPEND_ONLY ? [] : replayAndLagSections()),
  ].join('\n'),
);

function replayAndLagSections(): string[] {
  return [
    `Replay of the append-throughput logs (written by 1 to 64 unpaced concurrent writers) by a new consumer from the start, for at most ${REPLAY_SECONDS} s, checked against a recount of the log: an event is missed when the consumer's checkpoint (the last event it applied, in the order it reads: (transaction id, position) for replikit, the bare global position for Emmett) has passed it without applying it; events after the checkpoint were not reached and are not counted.`,
    '',
    table(
      [
        'store',
        'events in the log',
        'covered (at or before the checkpoint)',
        'replay time (s)',
        'missed (of covered)',
        'applied twice',
        'replay rate (events/s)',
      ],
      replayRows,
    ),
    '',
    `Projection lag and missed events at ${RATE} events/s from ${LAG_WRITERS} concurrent writers (1 event per append) for ${LAG_SECONDS} s; lag from append acknowledgement to the consumer applying the event.`,
    '',
    table(
      [
        'store',
        'events appended',
        'rate achieved (/s)',
        'lag p50 (ms)',
        'lag p99 (ms)',
        'lag max (ms)',
        'missed live',
        'missed on replay',
        'applied twice (live / replay)',
      ],
      lagRows,
    ),
    '',
  ];
}
await stack.query('primary', 'select 1');
progress(
  'done (the bench stack keeps running; `npm run stack -- stop --dir .replikit/bench` stops it)',
);
