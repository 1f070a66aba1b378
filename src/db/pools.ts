import pg from 'pg';

/** A replica's name and its connection pool. */
export interface ReplicaPool {
  readonly name: string;
  readonly pool: pg.Pool;
}

/** Connection pools for the primary and each replica. */
export interface NodePools {
  readonly primary: pg.Pool;
  readonly replicas: readonly ReplicaPool[];
}

/** Where each node is: the primary's URL and every replica's name and URL. */
export interface NodeUrls {
  readonly primary: string;
  readonly replicas: readonly { readonly name: string; readonly url: string }[];
}

/** Options for {@link createNodePools}. */
export interface NodePoolOptions {
  /** Connections per node. Default 10. */
  readonly max?: number;
  /** How long to wait for a connection, new or from the pool. Default 5000 ms. */
  readonly connectionTimeoutMillis?: number;
  /** `application_name` shown in `pg_stat_activity`. Default `replikit`. */
  readonly applicationName?: string;
  /**
   * Told when an idle pooled connection fails (a node restarted or went away). The pool drops
   * the connection and opens a fresh one when next needed. Without a listener such an error
   * would crash the process, so one is always installed.
   */
  readonly onIdleError?: (error: Error, node: string) => void;
}

function createPool(url: string, node: string, options: NodePoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5_000,
    idleTimeoutMillis: 30_000,
    application_name: options.applicationName ?? 'replikit',
    // Notice a peer that vanished without closing the connection (a killed VM, a dropped route).
    keepAlive: true,
  });
  pool.on('error', (error) => options.onIdleError?.(error, node));
  return pool;
}

/**
 * Opens one pool per node. Pools connect lazily: creating them never fails for a node that is down.
 *
 * ```ts
 * const pools = createNodePools({
 *   primary: 'postgres://app@db1/app',
 *   replicas: [{ name: 'replica1', url: 'postgres://app@db2/app' }],
 * });
 * ```
 */
export function createNodePools(urls: NodeUrls, options: NodePoolOptions = {}): NodePools {
  return {
    primary: createPool(urls.primary, 'primary', options),
    replicas: urls.replicas.map(({ name, url }) => ({
      name,
      pool: createPool(url, name, options),
    })),
  };
}

/**
 * Closes every pool, waiting for checked-out connections to be returned. Never rejects: failures
 * are returned, one per pool that did not close cleanly.
 */
export async function closeNodePools(pools: NodePools): Promise<Error[]> {
  const all = [
    { name: 'primary', pool: pools.primary },
    ...pools.replicas.map(({ name, pool }) => ({ name, pool })),
  ];
  const results = await Promise.allSettled(
    all.filter(({ pool }) => !pool.ended && !pool.ending).map(({ pool }) => pool.end()),
  );
  return results.flatMap((result) =>
    result.status === 'rejected'
      ? [result.reason instanceof Error ? result.reason : new Error(String(result.reason))]
      : [],
  );
}
