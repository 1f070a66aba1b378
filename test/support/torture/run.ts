import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { MIGRATIONS } from '../../../src/app/migrations.js';
import { migrate } from '../../../src/db/migrate.js';
import { LocalStack } from '../../../src/stack/index.js';
import {
  checkHistory,
  HistoryRecorder,
  type Anomaly,
  type CheckOptions,
  type CheckResult,
  type HistoryOp,
  type NemesisOp,
} from '../../../src/verify/index.js';
import { signalGroup, spawnTs, type Spawned } from '../process.js';
import { TcpProxy } from '../tcp-proxy.js';
import { faultKinds, runNemesis } from './nemesis.js';
import { INITIAL_NAME, Session, ValueSource, type ServiceUrls } from './workload.js';

/** The levels the sessions read at, in the `X-Consistency` form. */
export const TORTURE_LEVELS = [
  'strong',
  'read-your-writes',
  'monotonic',
  'bounded-staleness=1000',
  'eventual',
] as const;

/**
 * How often each session writes rather than reads. Sessions that seldom write hold old tokens, so a
 * lagging replica is still fresh enough for their read-your-writes reads while other sessions'
 * writes are not on it yet: the case where monotonic reads and bounded staleness must do their
 * own work.
 */
const WRITE_SHARES = [0.5, 0.2, 0.05] as const;

const DATABASE = 'torture';
const SERVICES = 2;

/** Options of {@link runTorture}. */
export interface TortureOptions {
  /**
   * How long the sessions and the nemesis run at least: they go on until every fault kind has
   * been injected and healed once.
   */
  readonly durationMs: number;
  /** Client sessions. Default 4. */
  readonly sessions?: number;
  /** Registers (users). Default 5. */
  readonly registers?: number;
  /** How long each fault lasts. Default 3000 ms. */
  readonly faultHoldMs?: number;
  /** Quiet time between faults. Default 1000 ms. */
  readonly faultGapMs?: number;
  /** Also run the control: reads sent as `eventual` but recorded as stronger, replicas paused. */
  readonly control?: boolean;
  /** Seed of the sessions' and nemesis's choices. Default 1. */
  readonly seed?: number;
  /** How the main history is checked (the control is always checked with the defaults). */
  readonly check?: CheckOptions;
  /** Progress lines for a person watching. */
  readonly log?: (line: string) => void;
}

/** One history and what the checker found in it. */
export interface CheckedHistory {
  readonly history: readonly HistoryOp[];
  readonly result: CheckResult;
}

/** What {@link runTorture} did and found. */
export interface TortureResult {
  readonly main: CheckedHistory;
  readonly control?: CheckedHistory;
  /** Faults injected, by kind. */
  readonly faults: Readonly<Record<string, number>>;
  readonly elapsedMs: number;
}

/** A small seeded generator (mulberry32): the same seed makes the same choices. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Counts of operations by what they were (`write`, `read strong`, …) and how they ended. */
export function operationCounts(
  history: readonly HistoryOp[],
): Record<string, { ok: number; fail: number; info: number }> {
  const counts: Record<string, { ok: number; fail: number; info: number }> = {};
  for (const op of history) {
    if (op.process === 'nemesis' || op.type === 'invoke') continue;
    const what =
      op.f === 'write' ? 'write' : `read ${op.level}${op.final === true ? ' (final)' : ''}`;
    const entry = (counts[what] ??= { ok: 0, fail: 0, info: 0 });
    entry[op.type]++;
  }
  return counts;
}

async function createRegisters(url: string, count: number, prefix: string): Promise<string[]> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    await migrate(pool, MIGRATIONS);
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const { rows } = await pool.query<{ id: string }>(
        'insert into users (name, email) values ($1, $2) returning id',
        [INITIAL_NAME, `${prefix}${i}@torture.invalid`],
      );
      ids.push(rows[0]!.id);
    }
    return ids;
  } finally {
    await pool.end();
  }
}

/**
 * A Jepsen-style run against a stack of its own (a primary and two replicas in a temporary
 * folder): two service processes, `sessions` client sessions writing and reading every register
 * at every level through either service, and a nemesis cycling faults; then every fault healed, a
 * final strong read, and the history checked. The sessions go on past `durationMs` until every
 * fault kind has been injected and healed at least once. Everything it started is stopped before
 * it returns.
 *
 * The services reach the primary through a proxy that stands for a load balancer's address (the
 * failover fault moves it to the new primary) and every node, the primary included, as a replica
 * through a proxy of its own (one that is not in recovery is out of rotation, as a promoted
 * replica is): so they follow a failover without a restart, the way docs/failover.md tells users
 * to deploy.
 */
export async function runTorture(options: TortureOptions): Promise<TortureResult> {
  const log = options.log ?? (() => undefined);
  const random = seededRandom(options.seed ?? 1);
  const started = performance.now();
  const clock = (): number => performance.now() - started;
  const dir = await mkdtemp(join(tmpdir(), 'replikit-torture-'));
  let stack: LocalStack | undefined;
  const proxies: TcpProxy[] = [];
  const children: (Spawned | undefined)[] = [];
  try {
    log(`starting a primary and two replicas in ${dir}`);
    stack = await LocalStack.start({ dir });
    const live = stack;
    await live.query(live.primary.name, `create database ${DATABASE}`);
    const registers = await createRegisters(
      live.url(live.primary.name, DATABASE),
      options.registers ?? 5,
      'main',
    );
    const controlRegisters = await createRegisters(
      live.url(live.primary.name, DATABASE),
      2,
      'control',
    );
    await live.waitForReplicas();

    const primaryProxy = await TcpProxy.start(live.primary.port);
    proxies.push(primaryProxy);
    const nodeProxies = new Map<string, TcpProxy>();
    for (const node of live.nodes) {
      const proxy = await TcpProxy.start(node.port);
      proxies.push(proxy);
      nodeProxies.set(node.name, proxy);
    }
    const env = {
      TORTURE_PRIMARY_URL: primaryProxy.url(DATABASE),
      TORTURE_REPLICA_URLS: [...nodeProxies]
        .map(([name, proxy]) => `${name}=${proxy.url(DATABASE)}`)
        .join(','),
    };
    const services: ServiceUrls = { urls: Array.from({ length: SERVICES }, () => undefined) };
    const startService = async (i: number): Promise<void> => {
      const child = spawnTs(['test/support/torture/service.ts'], env);
      children[i] = child;
      const line = await child.waitFor(/listening http:\/\/\S+/, 60_000);
      services.urls[i] = line.slice('listening '.length);
    };
    const killService = async (i: number): Promise<void> => {
      services.urls[i] = undefined;
      const child = children[i];
      if (child === undefined) return;
      signalGroup(child, 'SIGKILL');
      await child.exit();
    };
    for (let i = 0; i < SERVICES; i++) await startService(i);
    log(`services up: ${services.urls.join(', ')}`);

    const history = new HistoryRecorder(clock);
    const values = new ValueSource();
    const sessions = Array.from(
      { length: options.sessions ?? 4 },
      (_, process) =>
        new Session({ process, history, services, registers: { ids: registers }, random }),
    );

    const stopNemesis = new AbortController();
    const stopSessions = new AbortController();
    const faults = faultKinds(
      {
        stack: live,
        primaryProxy,
        nodeProxies,
        services: SERVICES,
        killService,
        restartService: startService,
      },
      random,
    );
    let everyFaultHealed = false;
    let injectedSoFar = 0;
    const nemesis = runNemesis({
      faults,
      history,
      signal: stopNemesis.signal,
      holdMs: options.faultHoldMs ?? 3000,
      gapMs: options.faultGapMs ?? 1000,
      onFault: (kind, detail) => {
        injectedSoFar++;
        log(`nemesis: ${kind} (${detail})`);
      },
      onHealed: (healed) => {
        everyFaultHealed = faults.every((fault) => (healed[fault.kind] ?? 0) > 0);
      },
    });
    // A nemesis that fails (a fault it could not inject or heal) ends the run: no session waits
    // for a deadline with the stack in an unknown state.
    nemesis.catch(() => stopSessions.abort());
    const deadline = performance.now() + options.durationMs;
    const progress = setInterval(() => {
      const ops = history.ops.filter((op) => op.process !== 'nemesis' && op.type !== 'invoke');
      log(
        `${Math.round(clock() / 1000)} s: ${ops.length} operations (${ops.filter((op) => op.type !== 'ok').length} not ok), ${injectedSoFar} faults injected`,
      );
    }, 10_000);
    try {
      await Promise.all(
        sessions.map(async (session) => {
          const writeShare = WRITE_SHARES[session.process % WRITE_SHARES.length]!;
          while (
            !stopSessions.signal.aborted &&
            (performance.now() < deadline || !everyFaultHealed)
          ) {
            const did =
              random() < writeShare
                ? await session.write(Math.floor(random() * registers.length), values.next())
                : await session.read(TORTURE_LEVELS[Math.floor(random() * TORTURE_LEVELS.length)]!);
            await sleep(did ? Math.floor(random() * 20) : 100);
          }
        }),
      );
    } finally {
      clearInterval(progress);
      stopNemesis.abort();
    }
    const injected = await nemesis;

    log('healing every fault, then the final read');
    for (const proxy of proxies) proxy.resume();
    await live.resetFaults();
    for (let i = 0; i < SERVICES; i++) if (services.urls[i] === undefined) await startService(i);
    const finalSession = new Session({
      process: sessions.length,
      history,
      services,
      registers: { ids: registers },
      random,
    });
    for (let attempt = 0; attempt < 5; attempt++) {
      await finalSession.read('strong', 'strong', true);
      if (history.ops.at(-1)?.type === 'ok') break;
      await sleep(500);
    }
    const main = { history: history.ops, result: checkHistory(history.ops, options.check) };

    let control: CheckedHistory | undefined;
    if (options.control === true) {
      log('control: every replica paused, reads sent as eventual but recorded as stronger');
      control = await runControl(live, services, controlRegisters, random);
    }
    return {
      main,
      ...(control === undefined ? {} : { control }),
      faults: injected,
      elapsedMs: clock(),
    };
  } finally {
    for (const child of children) {
      if (child !== undefined && child.child.exitCode === null && child.child.signalCode === null) {
        signalGroup(child, 'SIGKILL');
        await child.exit();
      }
    }
    for (const proxy of proxies) await proxy.close();
    await stack?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * What a person needs to judge an anomaly: the session's operations up to the read that showed
 * it, and the faults in force then, one line each.
 */
export function anomalyExcerpt(
  history: readonly HistoryOp[],
  anomaly: Anomaly,
  context = 6,
): string[] {
  const mine = history.filter(
    (op) => op.process === anomaly.process && op.type !== 'invoke' && op.index <= anomaly.index,
  );
  const at = history[anomaly.index]?.time ?? 0;
  const inForce = new Map<string, NemesisOp>();
  for (const op of history) {
    if (op.time > at) break;
    if (op.process !== 'nemesis') continue;
    const [kind, phase] = op.f.split(':');
    if (phase === 'inject') inForce.set(kind!, op);
    else inForce.delete(kind!);
  }
  return [
    ...[...inForce.values()].map(
      (op) => `  nemesis ${op.f} ${op.value} at ${op.time.toFixed(0)} ms`,
    ),
    ...mine.slice(-context).map((op) => `  ${JSON.stringify(op)}`),
  ];
}

/**
 * The checkers' control: with both replicas paused, a session writes and then reads with
 * `eventual` while the history says `read-your-writes`, `monotonic`, `bounded-staleness=50` or a
 * final strong read. Every one of those checkers must find its anomaly here.
 */
async function runControl(
  stack: LocalStack,
  services: ServiceUrls,
  registers: readonly string[],
  random: () => number,
): Promise<CheckedHistory> {
  const started = performance.now();
  const history = new HistoryRecorder(() => performance.now() - started);
  const values = new ValueSource();
  const session = new Session({
    process: 0,
    history,
    services,
    registers: { ids: registers },
    random,
  });
  // An eventual read goes to the primary while no replica is in rotation (say one rebuilt a moment
  // ago): such a read is fresh and proves nothing, so it is tried again until a replica serves it.
  const fromReplica = async (level: string, final = false): Promise<void> => {
    for (let attempt = 0; attempt < 50; attempt++) {
      await session.read('eventual', level, final);
      const last = history.ops.at(-1);
      if (last?.type === 'ok' && last.process === 0 && last.servedBy !== 'primary') return;
      await sleep(100);
    }
  };
  const replicas = stack.replicas.filter((replica) => !stack.diverged.includes(replica.name));
  for (const replica of replicas) await stack.pauseReplay(replica.name);
  try {
    for (let round = 0; round < 5; round++) {
      await session.write(round % registers.length, values.next());
      await fromReplica('read-your-writes');
      // A monotonic read from the primary, then one from a paused replica: back in time.
      await session.read('strong', 'monotonic');
      await fromReplica('monotonic');
      await sleep(80);
      await fromReplica('bounded-staleness=50');
    }
    await fromReplica('strong', true);
  } finally {
    for (const replica of replicas) await stack.resumeReplay(replica.name);
  }
  return { history: history.ops, result: checkHistory(history.ops) };
}
