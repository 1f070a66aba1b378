/**
 * `--local`: the demo service started in this process on the bench stack (`.replikit/bench`, a
 * primary and two streaming replicas), listening on a free port of 127.0.0.1. Each run gets fresh
 * databases (`replikit_load`, and `replikit_load_{orders,payments,inventory,shipping}` for the
 * sagas scenario), so the demo's stock and wallets start full; they are dropped at the end, and
 * the nodes this run started are stopped (nodes found running are left running).
 */
import pg from 'pg';

import { createApp } from '../../src/app/app.js';
import { loadConfig } from '../../src/app/config.js';
import { MIGRATIONS } from '../../src/app/migrations.js';
import { ORDERS_FLOW_MIGRATIONS } from '../../src/app/orders/choreography.js';
import { createOrderSaga, ORDERS_MIGRATIONS } from '../../src/app/orders/order-saga.js';
import type { OrdersOptions } from '../../src/app/orders/routes.js';
import {
  INVENTORY_MIGRATIONS,
  InventoryService,
  PAYMENTS_MIGRATIONS,
  PaymentsService,
  SHIPPING_MIGRATIONS,
  ShippingService,
} from '../../src/app/orders/services.js';
import { listen } from '../../src/app/server.js';
import { quoteIdentifier } from '../../src/db/ensure-database.js';
import { migrate } from '../../src/db/migrate.js';
import { createCluster, type Cluster } from '../../src/routing/index.js';
import { createSagaEngine, SAGA_MIGRATIONS, type SagaEngine } from '../../src/saga/index.js';
import { LocalStack } from '../../src/stack/index.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { createMetricsRegistry } from '../../src/telemetry/metrics.js';

export interface LocalServiceOptions {
  /** The stack's folder. */
  readonly dir: string;
  /** Mount `/orders` (and start a saga engine) too. */
  readonly orders: boolean;
  readonly log: (line: string) => void;
}

export interface LocalService {
  readonly url: string;
  /** PostgreSQL's version, for the report. */
  readonly postgres: string;
  close(): Promise<void>;
}

const DATABASE = 'replikit_load';
const ORDER_DATABASES = ['orders', 'payments', 'inventory', 'shipping'] as const;

async function recreate(adminUrl: string, names: readonly string[]): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl, application_name: 'replikit-load' });
  await client.connect();
  try {
    for (const name of names) {
      await client.query(`drop database if exists ${quoteIdentifier(name)} with (force)`);
      await client.query(`create database ${quoteIdentifier(name)}`);
    }
  } finally {
    await client.end();
  }
}

async function drop(adminUrl: string, names: readonly string[]): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl, application_name: 'replikit-load' });
  await client.connect();
  try {
    for (const name of names) {
      await client.query(`drop database if exists ${quoteIdentifier(name)} with (force)`);
    }
  } finally {
    await client.end();
  }
}

/** Starts the stack (or adopts its running nodes) and the service on it. */
export async function startLocalService(options: LocalServiceOptions): Promise<LocalService> {
  const running = await LocalStack.open({ dir: options.dir })
    .then((stack) => stack.status())
    .then((nodes) => new Set(nodes.filter((node) => node.running).map((node) => node.name)))
    .catch(() => new Set<string>());
  const stack = await LocalStack.start({ dir: options.dir, log: options.log });
  const undo: (() => Promise<unknown>)[] = [
    () =>
      Promise.all(
        stack.nodes
          .filter((node) => !running.has(node.name))
          .map((node) => stack.stopNode(node.name)),
      ),
  ];
  const close = async (): Promise<void> => {
    for (const step of undo.reverse()) {
      await step().catch((err: unknown) => options.log(`cleanup: ${String(err)}`));
    }
  };
  try {
    const admin = stack.url('primary', 'postgres');
    const names = [
      DATABASE,
      ...(options.orders ? ORDER_DATABASES.map((service) => `${DATABASE}_${service}`) : []),
    ];
    await recreate(admin, names);
    undo.push(() => drop(admin, names));
    const clusterOn = (database: string): Cluster => {
      const cluster = createCluster({
        primary: stack.url('primary', database),
        replicas: Object.fromEntries(
          stack.replicas.map((replica) => [replica.name, stack.url(replica.name, database)]),
        ),
      });
      undo.push(() => cluster.close());
      return cluster;
    };
    const cluster = clusterOn(DATABASE);
    await cluster.ready();
    await migrate(cluster.primary, MIGRATIONS);

    let orders: OrdersOptions | undefined;
    let engine: SagaEngine | undefined;
    if (options.orders) {
      const pools = Object.fromEntries(
        ORDER_DATABASES.map((service) => {
          const pool = new pg.Pool({
            connectionString: stack.url('primary', `${DATABASE}_${service}`),
            max: 20,
          });
          undo.push(() => pool.end());
          return [service, pool];
        }),
      ) as Record<(typeof ORDER_DATABASES)[number], pg.Pool>;
      await migrate(pools.orders, [
        ...ORDERS_MIGRATIONS,
        ...SAGA_MIGRATIONS,
        ...ORDERS_FLOW_MIGRATIONS,
      ]);
      await migrate(pools.payments, PAYMENTS_MIGRATIONS);
      await migrate(pools.inventory, INVENTORY_MIGRATIONS);
      await migrate(pools.shipping, SHIPPING_MIGRATIONS);
      const saga = createOrderSaga({
        payments: new PaymentsService(pools.payments),
        inventory: new InventoryService(pools.inventory),
        shipping: new ShippingService(pools.shipping),
      });
      const started = createSagaEngine({ database: pools.orders, sagas: [saga] });
      engine = started;
      undo.push(() => started.close());
      await started.start();
      const ordersCluster = clusterOn(`${DATABASE}_orders`);
      await ordersCluster.ready();
      orders = { engine: started, saga, orders: ordersCluster, waitMs: 1000 };
    }
    // So that the first reads on a replica find the tables.
    await stack.waitForReplicas();

    const app = createApp({
      config: loadConfig({}),
      // stdout carries the JSON summary: the service logs to stderr.
      logger: createLogger({
        level: 'warn',
        service: 'replikit-load',
        destination: process.stderr,
      }),
      cluster,
      registry: createMetricsRegistry(),
      ...(orders === undefined ? {} : { orders }),
      ...(engine === undefined ? {} : { sagaEngines: [engine] }),
    });
    const server = await listen(app, { port: 0, host: '127.0.0.1' });
    undo.push(() => server.close({ graceMs: 2000 }));
    return { url: server.url, postgres: stack.binaries.version, close };
  } catch (err) {
    await close();
    throw err;
  }
}
