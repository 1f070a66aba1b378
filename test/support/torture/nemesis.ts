import { setTimeout as sleep } from 'node:timers/promises';

import type { LocalStack } from '../../../src/stack/index.js';
import type { HistoryRecorder } from '../../../src/verify/index.js';
import type { TcpProxy } from '../tcp-proxy.js';

/**
 * One kind of fault: `inject` breaks something and returns what exactly (for the history);
 * `heal` puts it back. Faults are injected one at a time, each healed before the next.
 */
export interface Fault {
  readonly kind: string;
  inject(): Promise<string>;
  heal(): Promise<void>;
}

/** What the faults act on. */
export interface FaultTargets {
  readonly stack: LocalStack;
  /**
   * The address the services write to, as a load balancer in front of the primary: after a
   * promotion it is moved to the new primary (the services are not restarted).
   */
  readonly primaryProxy: TcpProxy;
  /** A proxy in front of every node, through which the services reach it as a replica. */
  readonly nodeProxies: ReadonlyMap<string, TcpProxy>;
  /** Kills service process `i` (SIGKILL). */
  readonly killService: (i: number) => Promise<void>;
  /** Starts service process `i` again. */
  readonly restartService: (i: number) => Promise<void>;
  readonly services: number;
}

/** The kinds, in the order the nemesis cycles through them. */
export const FAULT_KINDS = [
  'pause-replay',
  'apply-delay',
  'kill-replica',
  'stall-proxy',
  'failover',
  'kill-service',
] as const;

export type FaultKind = (typeof FAULT_KINDS)[number];

/** How long `apply-delay` holds back each commit on the replica. */
const APPLY_DELAY_MS = 1500;

/** Picks one of `items` with `random`. */
function pick<T>(items: readonly T[], random: () => number): T {
  const item = items[Math.floor(random() * items.length)];
  if (item === undefined) throw new Error('nothing to pick from');
  return item;
}

/**
 * The fault kinds of the torture run, one of each of {@link FAULT_KINDS}. Which node a fault hits
 * is chosen when it is injected, among the nodes that are replicas then: a failover changes the
 * roles, and every fault is healed (the old primary rebuilt as a replica) before the next.
 */
export function faultKinds(targets: FaultTargets, random: () => number): Fault[] {
  const { stack } = targets;
  const replicas = (): string[] =>
    stack.replicas.map((node) => node.name).filter((name) => !stack.diverged.includes(name));
  const proxyOf = (node: string): TcpProxy => {
    const proxy = targets.nodeProxies.get(node);
    if (proxy === undefined) throw new Error(`no proxy in front of ${node}`);
    return proxy;
  };
  let replica = '';
  let service = 0;
  const faults: Record<FaultKind, Omit<Fault, 'kind'>> = {
    'pause-replay': {
      inject: async () => {
        replica = pick(replicas(), random);
        await stack.pauseReplay(replica);
        return replica;
      },
      heal: () => stack.resumeReplay(replica),
    },
    'apply-delay': {
      inject: async () => {
        replica = pick(replicas(), random);
        await stack.setApplyDelay(replica, APPLY_DELAY_MS);
        return `${replica} ${APPLY_DELAY_MS} ms`;
      },
      heal: () => stack.clearApplyDelay(replica),
    },
    'kill-replica': {
      inject: async () => {
        replica = pick(replicas(), random);
        await stack.killNode(replica);
        return replica;
      },
      heal: () => stack.startNode(replica),
    },
    'stall-proxy': {
      inject: () => {
        replica = pick(replicas(), random);
        proxyOf(replica).stall();
        return Promise.resolve(replica);
      },
      heal: () => {
        proxyOf(replica).resume();
        return Promise.resolve();
      },
    },
    failover: {
      // The old primary is stopped, a replica promoted, the others re-pointed; then the primary's
      // address moves to it. Healing rebuilds every node that cannot follow (the old primary, and
      // a replica that had replayed past the fork) as a replica of the new primary.
      inject: async () => {
        const old = stack.primary.name;
        const promoted = await stack.promote(pick(replicas(), random));
        targets.primaryProxy.retarget(stack.node(promoted.primary).port);
        return `${promoted.primary} promoted (timeline ${promoted.timeline}, fork ${promoted.switchLsn}), ${old} stopped; diverged: ${promoted.diverged.join(', ')}`;
      },
      heal: async () => {
        for (const node of [...stack.diverged]) await stack.rebuild(node);
      },
    },
    'kill-service': {
      inject: async () => {
        service = Math.floor(random() * targets.services);
        await targets.killService(service);
        return `service ${service}`;
      },
      heal: () => targets.restartService(service),
    },
  };
  return FAULT_KINDS.map((kind) => ({ kind, ...faults[kind] }));
}

/** Options of {@link runNemesis}. */
export interface NemesisOptions {
  readonly faults: readonly Fault[];
  readonly history: HistoryRecorder;
  readonly signal: AbortSignal;
  /** How long each fault lasts. */
  readonly holdMs: number;
  /** Quiet time between faults. */
  readonly gapMs: number;
  readonly onFault?: (kind: string, detail: string) => void;
  /** Called after each heal, with how many faults of each kind have been injected and healed. */
  readonly onHealed?: (healed: Readonly<Record<string, number>>) => void;
}

/**
 * Cycles through the faults, in order, until `signal` aborts; heals the fault in force before
 * returning. Returns how many of each kind were injected.
 */
export async function runNemesis(options: NemesisOptions): Promise<Record<string, number>> {
  const injected: Record<string, number> = {};
  const healed: Record<string, number> = {};
  const wait = (ms: number): Promise<void> =>
    sleep(ms, undefined, { signal: options.signal }).catch(() => undefined);
  for (let round = 0; !options.signal.aborted; round++) {
    const fault = options.faults[round % options.faults.length]!;
    await wait(options.gapMs);
    if (options.signal.aborted) break;
    const detail = await fault.inject();
    injected[fault.kind] = (injected[fault.kind] ?? 0) + 1;
    options.history.nemesis(fault.kind, 'inject', detail);
    options.onFault?.(fault.kind, detail);
    await wait(options.holdMs);
    await fault.heal();
    options.history.nemesis(fault.kind, 'heal', detail);
    healed[fault.kind] = (healed[fault.kind] ?? 0) + 1;
    options.onHealed?.(healed);
  }
  return injected;
}
