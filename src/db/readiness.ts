import type pg from 'pg';

import { parseLsn } from '../routing/lsn.js';
import type { NodePools } from './pools.js';

/** A node's role as configured. */
export type NodeRole = 'primary' | 'replica';

/** What one node answered (or failed to) during a readiness check. */
export interface NodeReadiness {
  readonly name: string;
  readonly role: NodeRole;
  /** Whether it answered within the deadline. */
  readonly reachable: boolean;
  /** `pg_is_in_recovery()`; null when the node did not answer. A replica showing false was promoted. */
  readonly inRecovery: boolean | null;
  /** The primary's `pg_current_wal_lsn()`. */
  readonly currentLsn?: string;
  /** A replica's `pg_last_wal_replay_lsn()`. */
  readonly replayLsn?: string;
  /**
   * WAL bytes a replica has yet to replay compared with the primary's position sampled in the
   * same check (never negative). Absent when either side did not answer.
   */
  readonly lagBytes?: number;
  /** Why the node is unreachable. */
  readonly error?: string;
}

/** Overall verdict: `degraded` when the primary answers but a replica does not. */
export type ReadinessStatus = 'ok' | 'degraded' | 'unavailable';

/** What {@link checkReadiness} found. */
export interface ReadinessReport {
  readonly status: ReadinessStatus;
  /** True when the primary answered: the service can do its work, perhaps without some replicas. */
  readonly ready: boolean;
  /** The primary first, then replicas in configured order. */
  readonly nodes: readonly NodeReadiness[];
}

/** Options for {@link checkReadiness}. */
export interface CheckReadinessOptions {
  /** Deadline per node for getting a connection and answering. Default 1000 ms. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/**
 * Runs one query on a pooled connection within `timeoutMs`, counting the wait for a connection.
 * On timeout the connection is destroyed rather than returned: a node that stopped answering
 * mid-query would otherwise leave a busy connection in the pool.
 */
async function queryWithin<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  text: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<R | undefined> {
  let expired = false;
  let checkedOut: pg.PoolClient | undefined;
  let released = false;
  const release = (err?: Error): void => {
    if (checkedOut === undefined || released) return;
    released = true;
    checkedOut.release(err);
  };

  const work = (async (): Promise<R | undefined> => {
    const client = await pool.connect();
    checkedOut = client;
    if (expired) {
      // The deadline passed while waiting for this connection; it is healthy, give it back.
      release();
      return undefined;
    }
    try {
      const { rows } = await client.query<R>(text);
      release();
      return rows[0];
    } catch (err) {
      release(err instanceof Error ? err : new Error(String(err)));
      throw err;
    }
  })();

  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const deadline = new Promise<never>((_, reject) => {
    const fail = (reason: Error): void => {
      expired = true;
      release(reason);
      reject(reason);
    };
    timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    if (signal !== undefined) {
      onAbort = () => fail(new Error('readiness check aborted'));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  // Whatever loses the race must not become an unhandled rejection.
  work.catch(() => undefined);
  deadline.catch(() => undefined);
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}

function describe(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) {
    // Connecting to "localhost" tries ::1 and 127.0.0.1; both messages say the same.
    return describe(err.errors[0]);
  }
  if (err instanceof Error) return err.message === '' ? err.name : err.message;
  return String(err);
}

const PRIMARY_SQL = `select pg_is_in_recovery() as in_recovery,
  case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as lsn`;
const REPLICA_SQL = `select pg_is_in_recovery() as in_recovery,
  pg_last_wal_replay_lsn()::text as lsn`;

interface ProbeRow extends pg.QueryResultRow {
  in_recovery: boolean;
  lsn: string | null;
}

/**
 * Asks every node, in parallel and each within a deadline, whether it answers, whether it is in
 * recovery and how far its WAL has got. Never throws: an unreachable node is reported as such.
 *
 * The service is ready when the primary answers; a replica that is down makes the status
 * `degraded`, not `unavailable`.
 *
 * ```ts
 * const report = await checkReadiness(pools, { timeoutMs: 1000 });
 * if (!report.ready) console.error(report.nodes[0]?.error);
 * ```
 */
export async function checkReadiness(
  pools: NodePools,
  options: CheckReadinessOptions = {},
): Promise<ReadinessReport> {
  const timeoutMs = options.timeoutMs ?? 1_000;
  const probe = async (
    pool: pg.Pool,
    sql: string,
  ): Promise<{ row: ProbeRow | undefined; error?: string }> => {
    try {
      return { row: await queryWithin<ProbeRow>(pool, sql, timeoutMs, options.signal) };
    } catch (err) {
      return { row: undefined, error: describe(err) };
    }
  };

  const [primary, ...replicas] = await Promise.all([
    probe(pools.primary, PRIMARY_SQL),
    ...pools.replicas.map(({ pool }) => probe(pool, REPLICA_SQL)),
  ]);

  const primaryLsn = primary?.row?.lsn ?? undefined;
  const nodes: NodeReadiness[] = [
    {
      name: 'primary',
      role: 'primary',
      reachable: primary?.row !== undefined,
      inRecovery: primary?.row?.in_recovery ?? null,
      ...(primaryLsn === undefined ? {} : { currentLsn: primaryLsn }),
      ...(primary?.error === undefined ? {} : { error: primary.error }),
    },
    ...pools.replicas.map(({ name }, index): NodeReadiness => {
      const result = replicas[index];
      const replayLsn = result?.row?.lsn ?? undefined;
      const ahead = primaryLsn === undefined ? undefined : parseLsn(primaryLsn);
      const behind = replayLsn === undefined ? undefined : parseLsn(replayLsn);
      const lag = ahead !== undefined && behind !== undefined ? ahead - behind : undefined;
      return {
        name,
        role: 'replica',
        reachable: result?.row !== undefined,
        inRecovery: result?.row?.in_recovery ?? null,
        ...(replayLsn === undefined ? {} : { replayLsn }),
        // Sampled in parallel, the replica may be read after the primary moved on: clamp at 0.
        ...(lag === undefined ? {} : { lagBytes: Number(lag > 0n ? lag : 0n) }),
        ...(result?.error === undefined ? {} : { error: result.error }),
      };
    }),
  ];

  const primaryUp = nodes[0]?.reachable === true;
  const allUp = nodes.every((node) => node.reachable);
  return {
    status: !primaryUp ? 'unavailable' : allUp ? 'ok' : 'degraded',
    ready: primaryUp,
    nodes,
  };
}
