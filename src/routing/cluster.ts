import { SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';
import { CircuitState, type BulkheadPolicy } from 'cockatiel';
import pg from 'pg';

import { checkout, transactionOn, type DatabaseConnection } from '../db/checkout.js';
import { DEFAULT_CONSISTENCY, type Consistency } from './consistency.js';
import {
  encodeToken,
  mergeTokens,
  requiredPosition,
  type ConsistencyToken,
} from './consistency-token.js';
import { isConnectionError } from './connection-errors.js';
import { LagEstimator } from './lag-estimator.js';
import { formatLsn, maxLsn, normalizeInsertLsn, parseLsn, type Lsn } from './lsn.js';
import { LsnWaiter } from './lsn-waiter.js';
import {
  PrimaryMonitor,
  ReplicaMonitor,
  SERVER_IDENTITY,
  sameServer,
  samePrimary,
  type MonitorOptions,
  type PrimarySample,
  type ReplicaHealth,
  type ReplicaSample,
  type ServerIdentity,
} from './node-monitor.js';
import { RoutingError } from './routing-error.js';
import type { RouteReason, RoutingObserver } from './routing-observer.js';
import { currentSession, recordToken, type ConsistencySession } from './session.js';
import { waitInSlot } from './wait-slots.js';
import {
  hasReplayed,
  historyFileName,
  parseTimelineHistory,
  relateTimelines,
  type PrimaryTimeline,
  type TimelineHistory,
} from './timeline.js';
import { errorMessage, ReplikitError } from '../errors.js';

/** A node to connect to: a connection string, or a `pg` pool configuration. */
export type NodeConnection = DatabaseConnection;

/** Options for {@link createCluster}. */
export type ClusterOptions = ClusterSettings &
  (
    | {
        readonly primary: NodeConnection;
        /** Replicas by name. Names appear in metrics and headers: keep them few and stable. */
        readonly replicas: Readonly<Record<string, NodeConnection>>;
        readonly nodes?: undefined;
      }
    | {
        /**
         * Candidate nodes by name, instead of `primary` and `replicas`: the cluster sends writes
         * to the one that is not in recovery and reads to the others. When another node becomes
         * writable on a later timeline (a replica was promoted), writes and new tokens move to
         * it; the nodes that follow it serve reads again, and those that cannot (the old
         * primary until it is rebuilt) stay out of rotation with a health that says why. See
         * docs/failover.md. `primary` is the role's name in routes and headers, not a node name.
         */
        readonly nodes: Readonly<Record<string, NodeConnection>>;
        readonly primary?: undefined;
        readonly replicas?: undefined;
      }
  );

/** The options of {@link createCluster} besides its nodes. */
export interface ClusterSettings {
  /** Connections per node pool. Default 10. */
  readonly poolSize?: number;
  /** Consistency of reads that name none. Default read-your-writes. */
  readonly defaultConsistency?: Consistency;
  /** How long a read waits for a replica to catch up before falling back. Default 1000 ms. */
  readonly waitTimeoutMs?: number;
  /** After the wait: read from the primary (default) or fail with `REPLICA_WAIT_TIMEOUT`. */
  readonly onWaitTimeout?: 'primary' | 'error';
  /**
   * Bounds how many reads may wait for a replica at once (cockatiel's `bulkhead(n)`; its queue is
   * not used): one that would wait beyond it is refused at once with `REPLICA_WAIT_BUSY` rather
   * than piling up. Share one bulkhead with read models (`createReadModel`) to bound every wait of
   * a service. Default: unbounded.
   */
  readonly waitBulkhead?: BulkheadPolicy;
  /** Replicas lagging more than this leave eventual and bounded rotation; back under half. Default 30 s. */
  readonly maxLagMs?: number;
  /** Sampling interval of each node's monitor. Default 100 ms. */
  readonly monitorIntervalMs?: number;
  /** Poll interval while reads wait on a replica. Default 1 ms. */
  readonly waitPollMs?: number;
  /** Connect and statement timeout of the monitors. Default 2000 ms. */
  readonly monitorTimeoutMs?: number;
  /** Consecutive failures that take a replica out of rotation. Default 3. */
  readonly breakerFailures?: number;
  /** How long a failed replica stays out before a trial sample. Default 2000 ms. */
  readonly breakerHalfOpenAfterMs?: number;
  readonly observer?: RoutingObserver;
  readonly tracer?: Tracer;
  /** Where warnings go (every replica out of rotation, a replica leaving or rejoining). */
  readonly logger?: {
    warn(fields: Record<string, unknown>, message: string): void;
    info?(fields: Record<string, unknown>, message: string): void;
  };
}

/** Options of one read. */
export interface ReadOptions {
  /** Default: the session's, else the cluster's. */
  readonly consistency?: Consistency;
  /** Merged with the session's token. */
  readonly token?: ConsistencyToken;
  /** Overrides the cluster's wait bound for this read. */
  readonly waitTimeoutMs?: number;
  readonly onWaitTimeout?: 'primary' | 'error';
  readonly signal?: AbortSignal;
}

/** A routed read's rows and where they came from. */
export interface ReadResult<R> {
  readonly rows: R[];
  readonly rowCount: number;
  /** `primary` or the replica's name. */
  readonly servedBy: string;
  readonly reason: RouteReason;
  /**
   * The session's token after this read: `seen` advanced for a monotonic read and for any read in
   * a session or given a token.
   */
  readonly token: ConsistencyToken | undefined;
}

/** A write's rows and the token that proves it. */
export interface WriteResult<R> {
  readonly rows: R[];
  readonly rowCount: number;
  readonly token: ConsistencyToken;
}

/** The client handed to a {@link Cluster.transaction} callback: queries on the primary, in one transaction. */
export interface TransactionClient {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: readonly unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/** What {@link Cluster.replicaStatus} reports about one replica. */
export interface ReplicaStatus {
  readonly name: string;
  readonly health: ReplicaHealth;
  readonly replayLsn: string | undefined;
  /** Time lag in seconds (see lag-estimator.ts), from cached samples. */
  readonly lagSeconds: number;
  readonly lagBytes: number;
  readonly up: boolean;
}

interface Route {
  readonly node: string;
  readonly reason: RouteReason;
  /** The server whose cached position chose this replica; the read must reach that one. */
  readonly provenOn?: ServerIdentity;
}

interface ReplicaEntry {
  readonly name: string;
  readonly connection: NodeConnection;
  readonly pool: pg.Pool;
  readonly monitor: ReplicaMonitor;
  health: ReplicaHealth;
}

const SYSTEM_TIMEOUT_MS = 5000;
/** How long a failed read of the primary's timeline history stands before it is tried again. */
const HISTORY_RETRY_MS = 5000;

function poolConfig(connection: NodeConnection, max: number, role: string): pg.PoolConfig {
  const base = typeof connection === 'string' ? { connectionString: connection } : connection;
  return {
    max,
    connectionTimeoutMillis: SYSTEM_TIMEOUT_MS,
    application_name: `replikit-${role}`,
    ...base,
  };
}

function clientConfig(connection: NodeConnection): pg.ClientConfig {
  return typeof connection === 'string' ? { connectionString: connection } : connection;
}

/** Which server each pooled connection reached, asked once per connection. */
const identities = new WeakMap<pg.PoolClient, Promise<ServerIdentity>>();

function identityOf(client: pg.PoolClient): Promise<ServerIdentity> {
  let identity = identities.get(client);
  if (identity === undefined) {
    identity = client
      .query<{ system_id: string; started_at: string }>(SERVER_IDENTITY)
      .then(({ rows }) => ({ systemId: rows[0]?.system_id, startedAt: rows[0]?.started_at }));
    // A failed query is not an identity: ask again on the next checkout.
    identity.catch(() => identities.delete(client));
    identities.set(client, identity);
  }
  return identity;
}

/** Runs `fn` on a client checked out of `pool`; one that failed on its connection is discarded. */
async function withClient<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const { client, release } = await checkout(pool);
  let broken = false;
  try {
    return await fn(client);
  } catch (err) {
    broken = isConnectionError(err);
    throw err;
  } finally {
    release(broken);
  }
}

/**
 * Creates a cluster over one primary and its replicas. Reads are routed by consistency level;
 * writes go to the primary and return a token that later reads (here or in another service)
 * use to read their own writes.
 *
 * ```ts
 * const cluster = createCluster({
 *   primary: 'postgres://app@db-primary/app',
 *   replicas: { replica1: 'postgres://app@db-replica-1/app' },
 * });
 * await cluster.ready();
 * const { token } = await cluster.write('update users set name = $1 where id = $2', ['Ada', id]);
 * const { rows, servedBy } = await cluster.read('select * from users where id = $1', [id], { token });
 * ```
 */
export function createCluster(options: ClusterOptions): Cluster {
  return new Cluster(options);
}

/** The role's name in routes, headers and metrics; no node may take it. */
const PRIMARY = 'primary';

function invalidNodes(message: string): ReplikitError {
  return new ReplikitError('CONFIG_INVALID', `createCluster: ${message}`);
}

/** See {@link createCluster}. */
export class Cluster {
  /** The fixed primary's pool; `undefined` with candidate nodes, whose writable one changes. */
  readonly #fixedPrimary: pg.Pool | undefined;
  readonly #replicas: ReplicaEntry[];
  #primaryMonitor: PrimaryMonitor;
  /** With candidate nodes: the one writes go to, once one is found writable. */
  #elected: ReplicaEntry | undefined;
  readonly #monitorOptions: MonitorOptions;
  /** With candidate nodes: the node the primary monitor samples (at first a guess). */
  #monitoredNode: ReplicaEntry | undefined;
  /** The current primary monitor's first sample. */
  #primaryStarted: Promise<void> = Promise.resolve();
  /** Monitors of earlier primaries, closing in the background. */
  readonly #retired = new Set<Promise<void>>();
  /** Positions of the primary over time; replaced when the primary's identity changes. */
  #lag = new LagEstimator();
  #lagOf: PrimarySample | undefined;
  readonly #waiter = new LsnWaiter();
  readonly #options: ClusterOptions;
  readonly #tracer: Tracer;
  readonly #ready: Promise<void>;
  #started = false;
  #allOut = false;
  #closed = false;
  /** The primary's timeline history, read once per timeline when a replica is on another one. */
  #history:
    { readonly timeline: number; history: TimelineHistory | undefined; readAt: number } | undefined;

  constructor(options: ClusterOptions) {
    this.#options = options;
    this.#tracer = options.tracer ?? trace.getTracer('replikit');
    const poolSize = options.poolSize ?? 10;
    const monitorOptions: MonitorOptions = {
      intervalMs: options.monitorIntervalMs ?? 100,
      waitPollMs: options.waitPollMs ?? 1,
      timeoutMs: options.monitorTimeoutMs ?? 2000,
      breakerFailures: options.breakerFailures ?? 3,
      breakerHalfOpenAfterMs: options.breakerHalfOpenAfterMs ?? 2000,
    };
    this.#monitorOptions = monitorOptions;
    if (options.nodes !== undefined && options.primary !== undefined)
      throw invalidNodes('give either `nodes` or `primary` and `replicas`, not both');
    const nodes = options.nodes ?? options.replicas;
    if (options.nodes !== undefined) {
      if (Object.keys(nodes).length === 0) throw invalidNodes('`nodes` names no node');
      if (PRIMARY in nodes)
        throw invalidNodes(
          'a node may not be named "primary": that names the role in routes and headers; name nodes after their hosts',
        );
    }
    this.#fixedPrimary =
      options.primary === undefined
        ? undefined
        : this.#pool(new pg.Pool(poolConfig(options.primary, poolSize, PRIMARY)), PRIMARY);
    // With candidate nodes the first one is sampled as the primary until the nodes' own samples
    // say which is writable (a replica answers the primary's sample with an error, no position).
    const primaryConnection = options.primary ?? Object.values(nodes)[0]!;
    this.#primaryMonitor = this.#newPrimaryMonitor(primaryConnection);
    this.#replicas = Object.entries(nodes).map(([name, connection]) => ({
      name,
      pool: this.#pool(new pg.Pool(poolConfig(connection, poolSize, name)), name),
      monitor: new ReplicaMonitor(name, clientConfig(connection), monitorOptions, {
        onSample: (monitor) => this.#onReplicaSample(monitor),
        hasWaiters: () => this.#waiter.size > 0,
      }),
      connection,
      health: { state: 'starting' },
    }));
    if (this.#fixedPrimary === undefined) this.#monitoredNode = this.#replicas[0];
    this.#ready = this.#start();
  }

  async #start(): Promise<void> {
    this.#primaryStarted = this.#primaryMonitor.start();
    await Promise.all(this.#replicas.map((replica) => replica.monitor.start()));
    // An election during the nodes' first samples may have moved the primary monitor.
    let started: Promise<void> | undefined;
    while (started !== this.#primaryStarted) {
      started = this.#primaryStarted;
      await started;
    }
    this.#started = true;
  }

  /**
   * The primary's pool. With candidate nodes, the pool of the node found writable.
   *
   * @throws RoutingError `NO_NODE_AVAILABLE` when no candidate node has been found writable.
   */
  get primary(): pg.Pool {
    const pool = this.#fixedPrimary ?? this.#elected?.pool;
    if (pool === undefined)
      throw new RoutingError(
        'NO_NODE_AVAILABLE',
        `no writable node among ${this.replicaNames.join(', ')}: every one is in recovery or unreachable`,
        { details: { nodes: this.replicaNames } },
      );
    return pool;
  }

  #newPrimaryMonitor(connection: NodeConnection): PrimaryMonitor {
    const monitor: PrimaryMonitor = new PrimaryMonitor(
      clientConfig(connection),
      this.#monitorOptions,
      (sample) => {
        // A sample that a replaced monitor had in flight describes the old primary.
        if (this.#primaryMonitor === monitor) this.#onPrimarySample(sample);
      },
    );
    return monitor;
  }

  /**
   * With candidate nodes: which node takes the writes, from the nodes' latest samples. The
   * writable (not in recovery) and reachable node on the latest timeline wins; on a tie the
   * current one stays. None writable keeps the current one: it may only be restarting, and
   * writes fail with its connection errors meanwhile, which is what a client should see.
   */
  #elect(): void {
    if (this.#fixedPrimary !== undefined || this.#closed) return;
    let best: ReplicaEntry | undefined;
    for (const entry of this.#replicas) {
      const sample = entry.monitor.sample;
      if (sample === undefined || sample.inRecovery || entry.monitor.lastError !== undefined)
        continue;
      const timeline = sample.timeline ?? 0;
      const bestTimeline = best?.monitor.sample?.timeline ?? 0;
      if (
        best === undefined ||
        timeline > bestTimeline ||
        (timeline === bestTimeline && entry === this.#elected)
      )
        best = entry;
    }
    if (best === undefined || best === this.#elected) return;
    const from = this.#elected?.name;
    this.#elected = best;
    this.#history = undefined;
    if (best !== this.#monitoredNode) {
      const old = this.#primaryMonitor;
      this.#monitoredNode = best;
      this.#primaryMonitor = this.#newPrimaryMonitor(best.connection);
      const closing = old.close().catch(() => undefined);
      this.#retired.add(closing);
      void closing.finally(() => this.#retired.delete(closing));
      this.#primaryStarted = this.#primaryMonitor.start();
    }
    const fields = { from, to: best.name, timeline: best.monitor.sample?.timeline };
    if (from === undefined) this.#options.logger?.info?.(fields, 'found the primary');
    else this.#options.logger?.warn(fields, 'the primary changed');
  }

  /** Resolves once every node has been sampled once (whatever the outcome). */
  ready(): Promise<void> {
    return this.#ready;
  }

  /** Replica names, in configuration order. */
  get replicaNames(): readonly string[] {
    return this.#replicas.map((replica) => replica.name);
  }

  /**
   * Runs one statement on the primary and returns its rows with a token for read-your-writes.
   * The session's token (if any) absorbs the new one.
   */
  async write<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: readonly unknown[] = [],
  ): Promise<WriteResult<R>> {
    this.#assertOpen();
    await this.#ready;
    // Before the write: a refused token must leave nothing written behind.
    await this.admitSessionToken();
    return withClient(this.primary, async (client) => {
      // One statement outside a transaction block commits on its own; the position is read after.
      const result = await client.query<R>(sql, params as unknown[]);
      const token = await this.#tokenAfterCommit(client);
      return { rows: result.rows, rowCount: result.rowCount ?? 0, token };
    });
  }

  /**
   * Runs `fn` in one transaction on the primary. The token is taken after COMMIT returns: a
   * position read before it could precede the commit record, and a replica at that position
   * would not yet show the transaction (docs/routing.md).
   *
   * @throws ReplikitError `TRANSACTION_ROLLED_BACK` when `fn` resolved after catching the error of
   *   one of its statements: that aborted the transaction, and PostgreSQL rolled it back.
   */
  async transaction<T>(
    fn: (client: TransactionClient) => Promise<T>,
  ): Promise<{ result: T; token: ConsistencyToken }> {
    this.#assertOpen();
    await this.#ready;
    await this.admitSessionToken();
    return withClient(this.primary, async (client) => {
      // A callback that caught a failed statement leaves the transaction aborted and its COMMIT
      // answered with ROLLBACK: transactionOn checks, so no token is handed out for lost writes.
      const result = await transactionOn(client, () =>
        fn({ query: (sql, params) => client.query(sql, params as unknown[]) }),
      );
      return { result, token: await this.#tokenAfterCommit(client) };
    });
  }

  /**
   * Routes a read by consistency level and runs it. The routing check always finishes before the
   * read's own statement starts, so the read's snapshot is taken after the replica is known to
   * have caught up (docs/routing.md).
   *
   * @throws RoutingError `TOKEN_AHEAD` for a token past the primary's position,
   *   `REPLICA_WAIT_TIMEOUT` when told not to fall back, `NO_NODE_AVAILABLE` when nothing can serve.
   */
  async read<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: readonly unknown[] = [],
    options: ReadOptions = {},
  ): Promise<ReadResult<R>> {
    this.#assertOpen();
    if (!this.#started) await this.#ready;
    const session = currentSession();
    if (options.signal === undefined && session?.signal !== undefined)
      options = { ...options, signal: session.signal };
    await this.admitSessionToken(session);
    const consistency =
      options.consistency ??
      session?.consistency ??
      this.#options.defaultConsistency ??
      DEFAULT_CONSISTENCY;
    const token = mergeTokens(session?.token, options.token);
    const started = performance.now();
    const invokedAt = Date.now();
    // Every read in a session (or given a token) remembers what it saw, so that a later monotonic
    // read does not go back in time, whatever level this one was read at. It costs one more
    // query on the read's connection; a read nobody can follow up on skips it.
    const trackSeen =
      consistency.level === 'monotonic' || session !== undefined || options.token !== undefined;
    return this.#tracer.startActiveSpan(
      'replikit.read',
      { kind: SpanKind.INTERNAL, attributes: { 'replikit.consistency': consistency.level } },
      async (span) => {
        // Attributes cost string formatting: skip them when nobody records the span.
        const recording = span.isRecording();
        try {
          if (recording && token !== undefined)
            span.setAttribute(
              'replikit.token.lsn',
              formatLsn(requiredPosition(token, consistency.level === 'monotonic')),
            );
          let route = await this.#route(consistency, token, invokedAt, options, span);
          let ran: { result: pg.QueryResult<R>; seen: Lsn | undefined } | undefined;
          try {
            ran = await this.#run<R>(route, sql, params, trackSeen);
          } catch (err) {
            if (route.node === 'primary' || !isConnectionError(err)) throw err;
            // A replica that died or cancelled the read for a recovery conflict: reads have no
            // side effects, so the primary answers instead of the caller seeing an error.
            span.addEvent('replikit.fallback', {
              'replikit.fallback.from': route.node,
              'replikit.fallback.error': errorMessage(err),
            });
            this.#options.logger?.warn(
              { replica: route.node, err: errorMessage(err) },
              'read failed on a replica; served by the primary',
            );
            // Let the monitor look now rather than at its next interval.
            this.#replicas.find((replica) => replica.name === route.node)?.monitor.wake();
            route = { node: 'primary', reason: 'replica_error' };
            ran = await this.#run<R>(route, sql, params, trackSeen);
          }
          if (ran === undefined) {
            // The read's connection reached another server than the one whose position chose
            // the replica (another server behind the same address, or a restart): the proof
            // does not hold there.
            span.addEvent('replikit.fallback', { 'replikit.fallback.from': route.node });
            this.#replicas.find((replica) => replica.name === route.node)?.monitor.wake();
            route = { node: 'primary', reason: 'server_changed' };
            ran = (await this.#run<R>(route, sql, params, trackSeen))!;
          }
          const { result, seen } = ran;
          let newToken = token;
          const primary = this.#primaryMonitor.sample;
          if (seen !== undefined && newToken !== undefined) {
            // A position means something only on the token's own cluster and timeline.
            if (
              !(session?.tokenUntrusted ?? false) &&
              primary !== undefined &&
              newToken.systemId === primary.systemId &&
              newToken.timeline === primary.timeline
            )
              newToken = { ...newToken, seen: maxLsn(newToken.seen, seen) };
          } else if (
            seen !== undefined &&
            primary !== undefined &&
            // A token that says only what this read saw would replace the caller's untrusted one
            // and claim there is no write to wait for: the caller keeps its own instead.
            !(session?.tokenUntrusted ?? false)
          ) {
            newToken = this.#tokenAt(0n, seen);
          }
          if (session !== undefined) {
            session.servedBy = route.node;
            if (newToken !== undefined && route.reason !== 'token_untrusted')
              session.token = mergeTokens(session.token, newToken);
          }
          if (recording) {
            span.setAttributes({
              'replikit.route.target': route.node === 'primary' ? 'primary' : 'replica',
              'replikit.route.node': route.node,
              'replikit.route.reason': route.reason,
            });
          }
          this.#observe(() =>
            this.#options.observer?.onRead?.({
              consistency: consistency.level,
              target: route.node === 'primary' ? 'primary' : 'replica',
              node: route.node,
              reason: route.reason,
              durationMs: performance.now() - started,
            }),
          );
          return {
            rows: result.rows,
            rowCount: result.rowCount ?? result.rows.length,
            servedBy: route.node,
            reason: route.reason,
            token: newToken,
          };
        } catch (err) {
          span.recordException(err as Error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(err) });
          throw err;
        } finally {
          span.end();
        }
      },
    );
  }

  /**
   * Checks a token a client sent, before anything uses it. `untrusted` when it names another
   * cluster or timeline: its positions mean nothing here, so it must be neither waited on nor
   * merged with this cluster's tokens (reads with it at read-your-writes go to the primary).
   *
   * @throws RoutingError `TOKEN_AHEAD` when it names a position (written or seen) beyond the
   *   primary's: it was forged, or issued by another cluster; never waited on, never handed back.
   */
  async checkToken(token: ConsistencyToken): Promise<'trusted' | 'untrusted'> {
    this.#assertOpen();
    if (!this.#started) await this.#ready;
    return (await this.#trusted(token)) ? 'trusted' : 'untrusted';
  }

  /**
   * Checks the session's token with {@link Cluster.checkToken} and drops an untrusted one from
   * the session (marking it `tokenUntrusted`), so that no write merges its token into it and no
   * response hands it back. Reads and writes of the cluster call it for the current session; an
   * HTTP adapter calls it once per request, before any route, so that routes that never reach
   * the cluster check the token too.
   *
   * @throws RoutingError `TOKEN_AHEAD`, see {@link Cluster.checkToken}.
   */
  async admitSessionToken(
    session: ConsistencySession | undefined = currentSession(),
  ): Promise<void> {
    const token = session?.token;
    if (session === undefined || token === undefined) return;
    let trust: 'trusted' | 'untrusted';
    try {
      trust = await this.checkToken(token);
    } catch (err) {
      // Refused: not to be handed back with the error either.
      if (session.token === token) session.token = undefined;
      throw err;
    }
    if (trust === 'trusted') return;
    // A write of this request may have replaced it meanwhile: only the token checked is dropped.
    if (session.token === token) session.token = undefined;
    session.tokenUntrusted = true;
  }

  /** Health, position and lag of every replica, from the monitors' cached samples. */
  replicaStatus(): ReplicaStatus[] {
    const now = Date.now();
    return this.#replicas.map((replica) => ({
      name: replica.name,
      health: replica.health,
      replayLsn:
        replica.monitor.sample?.replayLsn === undefined
          ? undefined
          : formatLsn(replica.monitor.sample.replayLsn),
      // The writable one of candidate nodes is the primary: nothing to replay, no lag.
      lagSeconds: replica === this.#elected ? 0 : this.#lagMs(replica, now) / 1000,
      lagBytes: replica === this.#elected ? 0 : Number(this.#lagBytes(replica)),
      up: replica.monitor.lastError === undefined && replica.monitor.sample !== undefined,
    }));
  }

  /**
   * The primary's identity and latest sampled position, or `undefined` before the first sample.
   * `node` is the candidate node found writable, or `primary` for a fixed primary.
   */
  primaryStatus():
    | { node: string; systemId: string; timeline: number; insertLsn: string; up: boolean }
    | undefined {
    const sample = this.#primaryMonitor.sample;
    if (sample === undefined) return undefined;
    return {
      node: this.#elected?.name ?? PRIMARY,
      systemId: sample.systemId,
      timeline: sample.timeline,
      insertLsn: formatLsn(sample.insertLsn),
      up: this.#primaryMonitor.lastError === undefined,
    };
  }

  /** The connection pools, primary and replicas by name (for health checks and migrations). */
  nodePools(): {
    readonly primary: pg.Pool;
    readonly replicas: readonly { readonly name: string; readonly pool: pg.Pool }[];
  } {
    return {
      primary: this.primary,
      replicas: this.#replicas.map(({ name, pool }) => ({ name, pool })),
    };
  }

  /**
   * Queries each monitor has sent (`primary` and each replica): shows that waiting reads share one
   * poll stream per replica and one position check on the primary.
   */
  monitorPolls(): Readonly<Record<string, number>> {
    return Object.fromEntries([
      ['primary', this.#primaryMonitor.polls],
      ...this.#replicas.map((replica) => [replica.name, replica.monitor.polls] as const),
    ]);
  }

  /** Encodes a token, a convenience for adapters. */
  encodeToken(token: ConsistencyToken): string {
    return encodeToken(token);
  }

  /** Stops the monitors and closes every pool. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#ready.catch(() => undefined);
    await this.#primaryMonitor.close();
    await Promise.all([...this.#retired]);
    await Promise.all(this.#replicas.map((replica) => replica.monitor.close()));
    await Promise.all([
      this.#fixedPrimary?.end(),
      ...this.#replicas.map((replica) => replica.pool.end()),
    ]);
  }

  async #route(
    consistency: Consistency,
    token: ConsistencyToken | undefined,
    invokedAt: number,
    options: ReadOptions,
    span: Span,
  ): Promise<Route> {
    if (consistency.level === 'strong') return { node: 'primary', reason: 'strong' };

    const session = currentSession();
    if (
      (consistency.level === 'read-your-writes' || consistency.level === 'monotonic') &&
      (token === undefined ? session?.tokenUntrusted === true : !(await this.#trusted(token)))
    ) {
      // The caller wrote somewhere this cluster cannot place (another cluster, or before a
      // failover): no replica can be proven to have it, the primary is the best there is.
      if (session !== undefined) session.tokenUntrusted = true;
      const primary = this.#primaryMonitor.sample;
      span.addEvent('replikit.token_untrusted', {
        ...(token === undefined ? {} : { 'replikit.token.timeline': token.timeline }),
        ...(primary === undefined ? {} : { 'replikit.primary.timeline': primary.timeline }),
      });
      return { node: 'primary', reason: 'token_untrusted' };
    }

    if (
      token !== undefined &&
      (consistency.level === 'read-your-writes' || consistency.level === 'monotonic')
    ) {
      const required = requiredPosition(token, consistency.level === 'monotonic');
      // A wait for the write itself measures how long it took to become visible; one for a
      // position a read saw later does not.
      const writtenAt = required === token.written ? token.writtenAt : undefined;
      return this.#routeToPosition(required, options, span, writtenAt);
    }

    if (consistency.level === 'read-your-writes' || consistency.level === 'monotonic') {
      // No token: the session has not written; any replica in rotation is as fresh as needed.
      return this.#routeToPosition(0n, options, span);
    }

    if (consistency.level === 'sticky-window') {
      const writtenAt = token?.writtenAt ?? 0;
      if (Date.now() - writtenAt < consistency.windowMs)
        return { node: 'primary', reason: 'sticky_window' };
      const replica = this.#pick(this.#inRotation());
      return replica === undefined
        ? this.#noReplica()
        : { node: replica.name, reason: 'any_replica' };
    }

    if (consistency.level === 'bounded-staleness')
      return this.#routeBounded(consistency.maxStalenessMs, invokedAt, options, span);

    const replica = this.#pick(this.#inRotation());
    return replica === undefined
      ? this.#noReplica()
      : { node: replica.name, reason: 'any_replica' };
  }

  /**
   * A replica that provably shows every transaction committed `boundMs` before the read was
   * invoked (see docs/routing.md). A replica that has replayed a primary position asked for at
   * time s shows every commit made before s, whoever made it; the lag estimate cannot say that
   * (it learns of other clients' writes only at the next sample). When the cached samples prove
   * no replica fresh enough, a fresh primary position and a short wait for a replica to replay it
   * can; else the primary serves the read.
   */
  async #routeBounded(
    boundMs: number,
    invokedAt: number,
    options: ReadOptions,
    span: Span,
  ): Promise<Route> {
    const inRotation = this.#inRotation();
    if (inRotation.length === 0) return this.#noReplica();
    const oldestAllowed = invokedAt - boundMs;
    const proven = this.#pick(
      inRotation.filter((replica) => (this.#provenAsOf(replica) ?? -Infinity) >= oldestAllowed),
    );
    if (proven !== undefined)
      return { node: proven.name, reason: 'within_bound', provenOn: proven.monitor.sample };
    // Replicas estimated to be further behind than the bound are not worth a round trip.
    const now = Date.now();
    if (!inRotation.some((replica) => this.#lagMs(replica, now) <= boundMs))
      return { node: 'primary', reason: 'too_stale' };
    // A refresh already in flight may have been asked for too early to prove anything.
    let fresh = await this.#primaryMonitor.refresh().catch(() => undefined);
    if (fresh !== undefined && fresh.sentAt < oldestAllowed)
      fresh = await this.#primaryMonitor.refresh().catch(() => undefined);
    if (fresh === undefined || fresh.sentAt < oldestAllowed)
      return { node: 'primary', reason: 'too_stale' };
    const waitTimeoutMs = Math.min(
      boundMs,
      options.waitTimeoutMs ?? this.#options.waitTimeoutMs ?? 1000,
    );
    const route = await this.#routeToPosition(
      normalizeInsertLsn(fresh.insertLsn, fresh.walBlockSize),
      { ...options, waitTimeoutMs, onWaitTimeout: 'primary' },
      span,
    );
    switch (route.reason) {
      case 'caught_up':
        return { ...route, reason: 'within_bound' };
      case 'timeout_fallback':
        return { node: 'primary', reason: 'too_stale' };
      default:
        return route;
    }
  }

  /** When a replica provably showed every commit, from its cached replay position. */
  #provenAsOf(replica: ReplicaEntry): number | undefined {
    const replayed = replica.monitor.sample?.replayLsn;
    // Only a position on the primary's timeline (or on an ancestor, before the fork) compares
    // with the primary's samples: a replica left past the fork shows a high position that proves
    // nothing, and until its health says diverged it is still in rotation.
    if (replayed === undefined || !this.#hasReplayed(replica, replayed)) return undefined;
    return this.#lag.provenAsOf(replayed);
  }

  /**
   * A replica that has replayed `required`, waiting a bounded time for one if none has yet.
   * `writtenAt`: when `required` is the end of a write, the write's time (for its visibility).
   */
  async #routeToPosition(
    required: Lsn,
    options: ReadOptions,
    span: Span,
    writtenAt?: number,
  ): Promise<Route> {
    const usable = this.#usable();
    if (usable.length === 0) return this.#noReplica();
    const caughtUp = this.#pick(usable.filter((replica) => this.#hasReplayed(replica, required)));
    if (caughtUp !== undefined) {
      if (span.isRecording())
        span.setAttribute('replikit.replica.lsn', formatLsn(caughtUp.monitor.sample!.replayLsn!));
      return { node: caughtUp.name, reason: 'caught_up', provenOn: caughtUp.monitor.sample };
    }

    const timeoutMs = options.waitTimeoutMs ?? this.#options.waitTimeoutMs ?? 1000;
    const onTimeout = options.onWaitTimeout ?? this.#options.onWaitTimeout ?? 'primary';
    const started = performance.now();
    const replica = await this.#tracer.startActiveSpan(
      'replikit.wait',
      {
        attributes: {
          'replikit.token.lsn': formatLsn(required),
          'replikit.wait.timeout_ms': timeoutMs,
        },
      },
      async (waitSpan) => {
        try {
          const deadline = AbortSignal.timeout(timeoutMs);
          const signal =
            options.signal === undefined ? deadline : AbortSignal.any([deadline, options.signal]);
          const waiting = waitInSlot(
            this.#options.waitBulkhead,
            () => this.#waiter.wait(required, signal),
            (cause) =>
              new RoutingError(
                'REPLICA_WAIT_BUSY',
                'too many reads are already waiting for a replica to catch up; try again shortly',
                { cause },
              ),
          );
          for (const entry of usable) entry.monitor.wake();
          const name = await waiting;
          options.signal?.throwIfAborted();
          waitSpan.setAttribute(
            'replikit.wait.outcome',
            name === undefined ? 'timeout' : 'caught_up',
          );
          if (name !== undefined) waitSpan.setAttribute('replikit.route.node', name);
          return name;
        } finally {
          waitSpan.end();
        }
      },
    );
    const waitedMs = performance.now() - started;
    this.#observe(() =>
      this.#options.observer?.onWait?.({
        replica,
        outcome: replica === undefined ? 'timeout' : 'caught_up',
        waitedMs,
        visibilityMs:
          replica !== undefined && writtenAt !== undefined && writtenAt > 0
            ? Math.max(0, Date.now() - writtenAt)
            : undefined,
      }),
    );
    if (replica !== undefined) {
      const entry = this.#replicas.find((candidate) => candidate.name === replica);
      if (entry?.monitor.sample?.replayLsn !== undefined)
        span.setAttribute('replikit.replica.lsn', formatLsn(entry.monitor.sample.replayLsn));
      return {
        node: replica,
        reason: 'waited',
        // No sample is no identity: the check on the read's connection then fails safe.
        provenOn: entry?.monitor.sample ?? { systemId: undefined, startedAt: undefined },
      };
    }
    const expectedWaitMs = this.#expectedWaitMs();
    if (onTimeout === 'error') {
      throw new RoutingError(
        'REPLICA_WAIT_TIMEOUT',
        `no replica replayed ${formatLsn(required)} within ${timeoutMs} ms${expectedWaitMs === undefined ? '' : `; expected in about ${Math.ceil(expectedWaitMs)} ms`}`,
        {
          details: {
            required: formatLsn(required),
            waitedMs: Math.round(waitedMs),
            expectedWaitMs,
          },
        },
      );
    }
    span.addEvent('replikit.fallback', {
      'replikit.fallback.reason': 'timeout',
      'replikit.wait.ms': waitedMs,
    });
    return { node: 'primary', reason: 'timeout_fallback' };
  }

  /**
   * Whether `token` names this cluster's current timeline; throws `TOKEN_AHEAD` for one of them
   * whose positions pass the primary's.
   */
  async #trusted(token: ConsistencyToken): Promise<boolean> {
    const primary = this.#primaryMonitor.sample;
    if (
      primary === undefined ||
      token.systemId !== primary.systemId ||
      token.timeline !== primary.timeline
    )
      return false;
    await this.#assertNotAhead(maxLsn(token.written, token.seen));
    return true;
  }

  /** A token's position beyond the primary's is forged or foreign: refuse it, never wait on it. */
  async #assertNotAhead(required: Lsn): Promise<void> {
    const cached = this.#primaryMonitor.sample;
    if (cached !== undefined && required <= cached.insertLsn) return;
    // A refresh already in flight may have started before this token's write committed; only
    // one started after this read arrived can prove the token forged.
    let fresh = await this.#primaryMonitor.refresh();
    if (required > fresh.insertLsn) fresh = await this.#primaryMonitor.refresh();
    if (required > fresh.insertLsn) {
      throw new RoutingError(
        'TOKEN_AHEAD',
        `the consistency token names WAL position ${formatLsn(required)}, beyond the primary's ${formatLsn(fresh.insertLsn)}: it was not issued by this cluster`,
        { details: { token: formatLsn(required), primary: formatLsn(fresh.insertLsn) } },
      );
    }
  }

  /**
   * Runs the read where `route` says; with `trackSeen`, also an upper bound of the position its
   * snapshot showed. `undefined` when the route rests on a replica's cached position and the
   * read's connection reached another server than the one that position came from.
   */
  async #run<R extends pg.QueryResultRow>(
    route: Route,
    sql: string,
    params: readonly unknown[],
    trackSeen: boolean,
  ): Promise<{ result: pg.QueryResult<R>; seen: Lsn | undefined } | undefined> {
    const replica =
      route.node === 'primary'
        ? undefined
        : this.#replicas.find((entry) => entry.name === route.node);
    const pool = replica?.pool ?? this.primary;
    const provenOn = replica === undefined ? undefined : route.provenOn;
    if (!trackSeen && provenOn === undefined)
      return { result: await pool.query<R>(sql, params as unknown[]), seen: undefined };
    return withClient(pool, async (client) => {
      // Checked before the read's statement, like the position itself (asked once per connection).
      if (provenOn !== undefined && !sameServer(await identityOf(client), provenOn))
        return undefined;
      const result = await client.query<R>(sql, params as unknown[]);
      if (!trackSeen) return { result, seen: undefined };
      // An upper bound of what the read's snapshot showed: asked after the read finished.
      const position =
        replica === undefined ? 'pg_current_wal_insert_lsn()' : 'pg_last_wal_replay_lsn()';
      const { rows } = await client.query<{ lsn: string }>(`select ${position}::text as lsn`);
      const seen = parseLsn(rows[0]?.lsn ?? '');
      // A raw insert position can sit past a page header no replica ever stops at: rounded, a
      // caught-up replica can prove it (docs/routing.md, monotonic reads).
      const walBlockSize = this.#primaryMonitor.sample?.walBlockSize;
      return {
        result,
        seen:
          seen === undefined || replica !== undefined || walBlockSize === undefined
            ? seen
            : normalizeInsertLsn(seen, walBlockSize),
      };
    });
  }

  /** The token for everything committed on `client` so far; merged into the session's. */
  async #tokenAfterCommit(client: pg.PoolClient): Promise<ConsistencyToken> {
    const identity = await identityOf(client);
    const sentAt = Date.now();
    const { rows } = await client.query<{ lsn: string }>(
      'select pg_current_wal_insert_lsn()::text as lsn',
    );
    const position = parseLsn(rows[0]?.lsn ?? '') ?? 0n;
    // Only a position of the server the monitor samples may join its samples.
    const primary = this.#primaryMonitor.sample;
    if (primary !== undefined && sameServer(identity, primary))
      this.#primaryMonitor.observe(position, sentAt);
    const token = this.#tokenAt(position);
    recordToken(token);
    return token;
  }

  #tokenAt(written: Lsn, seen: Lsn = 0n): ConsistencyToken {
    const primary = this.#primaryMonitor.sample;
    if (primary === undefined)
      throw new RoutingError('NO_NODE_AVAILABLE', 'the primary has not been reached yet');
    return {
      systemId: primary.systemId,
      timeline: primary.timeline,
      written: written === 0n ? 0n : normalizeInsertLsn(written, primary.walBlockSize),
      seen,
      writtenAt: written === 0n ? 0 : Date.now(),
    };
  }

  /** Replicas usable when their position is proven: everything but down, promoted, foreign, starting. */
  #usable(): ReplicaEntry[] {
    return this.#replicas.filter(
      (replica) =>
        (replica.health.state === 'healthy' || replica.health.state === 'lagging') &&
        replica.monitor.breaker.state === CircuitState.Closed,
    );
  }

  /** Replicas in rotation for eventual, bounded and sticky reads: usable and not lagging. */
  #inRotation(): ReplicaEntry[] {
    return this.#usable().filter((replica) => replica.health.state === 'healthy');
  }

  /**
   * A random candidate. Round-robin over a shared counter locks into patterns when callers with
   * different candidate lists interleave (one list always landing on the same replica).
   */
  #pick(candidates: readonly ReplicaEntry[]): ReplicaEntry | undefined {
    if (candidates.length <= 1) return candidates[0];
    return candidates[Math.floor(Math.random() * candidates.length)];
  }

  #noReplica(): Route {
    return { node: 'primary', reason: 'no_replica' };
  }

  #lagMs(replica: ReplicaEntry, now: number): number {
    const sample = replica.monitor.sample;
    if (sample?.replayLsn === undefined) return Number.POSITIVE_INFINITY;
    const byPosition = this.#lag.lagMs(sample.replayLsn, now);
    // Cut off: the WAL receiver lost the primary, or we lost the replica. Never report 0 then.
    const cutOffSince = replica.monitor.failingSince ?? (sample.streaming ? undefined : sample.at);
    const cutOff = cutOffSince === undefined ? 0 : now - cutOffSince;
    return Math.max(byPosition, cutOff);
  }

  #lagBytes(replica: ReplicaEntry): bigint {
    const replay = replica.monitor.sample?.replayLsn;
    return replay === undefined ? 0n : this.#lag.lagBytes(replay);
  }

  /** The smallest lag among usable replicas: roughly when the first of them will catch up. */
  #expectedWaitMs(): number | undefined {
    const now = Date.now();
    const lags = this.#usable()
      .map((replica) => this.#lagMs(replica, now))
      .filter(Number.isFinite);
    return lags.length === 0 ? undefined : Math.min(...lags);
  }

  #onPrimarySample(sample: PrimarySample): void {
    // Positions of another server, a restarted one or an earlier timeline say nothing about this
    // one's: start the history again.
    if (this.#lagOf !== undefined && !samePrimary(this.#lagOf, sample))
      this.#lag = new LagEstimator();
    this.#lagOf = sample;
    // The raw insert position of an idle primary whose last record ended on a page boundary is
    // past the next page's header, where no replay position ever stops: caught-up replicas would
    // show a lag that grows for as long as the primary stays idle.
    this.#lag.record(
      normalizeInsertLsn(sample.insertLsn, sample.walBlockSize),
      sample.at,
      sample.sentAt,
    );
  }

  #onReplicaSample(monitor: ReplicaMonitor): void {
    const replica = this.#replicas.find((entry) => entry.name === monitor.name);
    if (replica === undefined) return;
    this.#elect();
    const before = replica.health;
    replica.health = this.#health(replica);
    const health = replica.health;
    // A replica that cannot follow the primary is worth a warning even on the first sample.
    if (
      before.state !== health.state &&
      (before.state !== 'starting' || health.state === 'diverged')
    ) {
      const fields = {
        replica: replica.name,
        from: before.state,
        to: health.state,
        ...(monitor.lastError === undefined ? {} : { err: monitor.lastError }),
        ...(health.state === 'diverged'
          ? {
              timeline: health.timeline,
              primaryTimeline: health.primaryTimeline,
              forkLsn: health.forkLsn,
            }
          : {}),
      };
      if (replica.health.state === 'healthy')
        this.#options.logger?.info?.(fields, 'replica back in rotation');
      else this.#options.logger?.warn(fields, 'replica left rotation');
    }
    const allOut = this.#usable().length === 0;
    if (allOut !== this.#allOut) {
      this.#allOut = allOut;
      if (allOut)
        this.#options.logger?.warn(
          { replicas: this.replicaNames },
          'every replica is out of rotation: reads go to the primary',
        );
      this.#observe(() => this.#options.observer?.onAllReplicasOut?.(allOut));
    }
    const position = monitor.sample?.replayLsn;
    if (
      position !== undefined &&
      monitor.closed &&
      (replica.health.state === 'healthy' || replica.health.state === 'lagging')
    ) {
      this.#waiter.advance(replica.name, position);
    }
  }

  #health(replica: ReplicaEntry): ReplicaHealth {
    const monitor = replica.monitor;
    const now = Date.now();
    const current = replica.health;
    if (monitor.lastError !== undefined || monitor.breaker.state !== CircuitState.Closed) {
      if (
        monitor.breaker.state === CircuitState.Closed &&
        current.state !== 'starting' &&
        current.state !== 'down'
      )
        return current;
      return current.state === 'down'
        ? current
        : { state: 'down', since: now, error: monitor.lastError ?? 'circuit open' };
    }
    const sample = monitor.sample;
    if (sample === undefined) return { state: 'starting' };
    if (!sample.inRecovery) {
      if (replica === this.#elected) return { state: 'primary' };
      return current.state === 'promoted' ? current : { state: 'promoted', since: now };
    }
    const primary = this.#primaryMonitor.sample;
    if (
      primary !== undefined &&
      sample.systemId !== undefined &&
      sample.systemId !== primary.systemId
    ) {
      return { state: 'foreign', systemId: sample.systemId };
    }
    const diverged =
      primary === undefined ? undefined : this.#diverged(sample, primary, current, now);
    if (diverged !== undefined) return diverged;
    const maxLagMs = this.#options.maxLagMs ?? 30_000;
    const lag = this.#lagMs(replica, now);
    if (current.state === 'lagging') return lag < maxLagMs / 2 ? { state: 'healthy' } : current;
    return lag > maxLagMs ? { state: 'lagging', since: now } : { state: 'healthy' };
  }

  /**
   * Whether a replica has replayed the primary's WAL up to `required`. A position compares with
   * another only on one timeline: after a failover, a replica left on the old timeline past the
   * fork shows a position beyond new writes that it will never hold.
   */
  #hasReplayed(replica: ReplicaEntry, required: Lsn): boolean {
    const sample = replica.monitor.sample;
    const primary = this.#primaryMonitor.sample;
    if (sample === undefined || primary === undefined) return false;
    return hasReplayed(sample, this.#primaryTimeline(primary, sample.timeline), required);
  }

  /** `diverged` health for a replica that cannot follow the primary's timeline, else `undefined`. */
  #diverged(
    sample: ReplicaSample,
    primary: PrimarySample,
    current: ReplicaHealth,
    now: number,
  ): ReplicaHealth | undefined {
    const relation = relateTimelines(sample, this.#primaryTimeline(primary, sample.timeline));
    if (relation.kind !== 'diverged') return undefined;
    return {
      state: 'diverged',
      since: current.state === 'diverged' ? current.since : now,
      ...(sample.timeline === undefined ? {} : { timeline: sample.timeline }),
      primaryTimeline: primary.timeline,
      ...(relation.forkLsn === undefined ? {} : { forkLsn: formatLsn(relation.forkLsn) }),
    };
  }

  /**
   * The primary's timeline, with its history when a replica is on another timeline. The history
   * is read in the background (a later sample uses it); until then such a replica counts as
   * diverged, which keeps reads off it rather than trusting an unproven position.
   */
  #primaryTimeline(primary: PrimarySample, replicaTimeline: number | undefined): PrimaryTimeline {
    if (replicaTimeline === undefined || replicaTimeline >= primary.timeline)
      return { timeline: primary.timeline, history: undefined };
    const cached = this.#history;
    if (cached?.timeline === primary.timeline && cached.history !== undefined)
      return { timeline: primary.timeline, history: cached.history };
    if (cached?.timeline !== primary.timeline || Date.now() - cached.readAt > HISTORY_RETRY_MS) {
      const entry = { timeline: primary.timeline, history: undefined, readAt: Date.now() };
      this.#history = entry;
      void this.#readHistory(entry);
    }
    return { timeline: primary.timeline, history: undefined };
  }

  async #readHistory(entry: {
    timeline: number;
    history: TimelineHistory | undefined;
  }): Promise<void> {
    try {
      // pg_read_file needs superuser or an explicit grant; without it, replicas on an older
      // timeline stay out of rotation until they reach the primary's.
      const { rows } = await this.primary.query<{ text: string }>(
        'select pg_read_file($1) as text',
        [`pg_wal/${historyFileName(entry.timeline)}`],
      );
      entry.history = parseTimelineHistory(rows[0]?.text ?? '');
    } catch (err) {
      this.#options.logger?.warn(
        { timeline: entry.timeline, err: errorMessage(err) },
        "cannot read the primary's timeline history; replicas on older timelines stay out of rotation",
      );
    }
  }

  #pool(pool: pg.Pool, name: string): pg.Pool {
    // An idle connection whose server went away emits 'error' on the pool; unhandled, it would
    // crash the process. The breaker and the monitors deal with the node itself.
    pool.on('error', (err) =>
      this.#options.logger?.warn({ node: name, err: err.message }, 'idle connection lost'),
    );
    return pool;
  }

  #observe(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#options.logger?.warn({ err: errorMessage(err) }, 'routing observer failed');
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new RoutingError('CLUSTER_CLOSED', 'the cluster has been closed');
  }
}
