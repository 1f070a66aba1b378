/**
 * The service's entry point (`npm start`):
 *
 * 1. reads the configuration; a bad value ends the process with exit code 2 and one line naming it;
 * 2. unless `REPLIKIT_PRIMARY_URL` and `REPLIKIT_REPLICA_URLS` name existing servers, starts the
 *    local stack and creates `REPLIKIT_DATABASE`, the two ledger databases and the order demo's
 *    four databases on it (existing servers must have them already);
 * 3. applies the schema migrations to each of them, waits for the replicas to replay them;
 * 4. starts the two-phase commit coordinator of the transfers demo, which resolves any
 *    transaction an earlier run left prepared, and the saga engine of the order demo, which
 *    resumes any saga an earlier run left unfinished;
 * 5. serves HTTP on `HOST:PORT` and prints the URLs.
 *
 * SIGINT or SIGTERM — also during start-up — stops accepting requests, lets in-flight ones
 * finish, closes the pools, stops the PostgreSQL servers this process started (never ones it found
 * running), flushes telemetry and exits 0, all within `REPLIKIT_SHUTDOWN_TIMEOUT_MS`; past that it
 * exits 1. A failed start-up undoes the same way, prints one line and exits 1.
 *
 * Tracing needs `node --import ./dist/telemetry/register.js` (see that file).
 *
 * @packageDocumentation
 */
import { bulkhead } from 'cockatiel';

import { type Config, ConfigError, loadConfig, redactUrl } from './config.js';
import { createApp } from './app.js';
import { ledgerMigrations, MIGRATIONS } from './migrations.js';
import { listen } from './server.js';
import { createTransferSaga } from './transfer-saga.js';
import { LEDGERS, ledgerOf, type LedgerName } from './transfers.js';
import { withDatabase } from '../db/database-url.js';
import { ensureDatabase } from '../db/ensure-database.js';
import { migrate, type Migration } from '../db/migrate.js';
import type { NodeUrls } from '../db/pools.js';
import { ReplikitError } from '../errors.js';
import { type Cluster, createCluster } from '../routing/index.js';
import { LocalStack } from '../stack/index.js';
import { createLogger, type Logger } from '../telemetry/logger.js';
import { createMetricsRegistry } from '../telemetry/metrics.js';
import { createRoutingMetrics } from '../telemetry/routing-metrics.js';
import { createTwoPhaseMetrics } from '../telemetry/twopc-metrics.js';
import { shutdownTelemetry, telemetryState } from '../telemetry/otel.js';
import { createCoordinator } from '../twopc/index.js';
import { createSagaEngine, SAGA_MIGRATIONS } from '../saga/index.js';
import { createEventStore } from '../events/index.js';
import { createEventMetrics } from '../telemetry/event-metrics.js';
import { PROFILES_MIGRATIONS, PROFILES_PROJECTION } from './profiles.js';
import { createSagaMetrics } from '../telemetry/saga-metrics.js';
import { createOrderChoreography, ORDERS_FLOW_MIGRATIONS } from './orders/choreography.js';
import { createOrderSaga, ORDERS_MIGRATIONS } from './orders/order-saga.js';
import {
  createPostgresTransport,
  inboxMigrations,
  outboxMigrations,
  postgresTransportMigrations,
  type Transport,
} from '../messaging/index.js';
import { createOutboxMetrics } from '../telemetry/outbox-metrics.js';
import {
  INVENTORY_MIGRATIONS,
  InventoryService,
  PAYMENTS_MIGRATIONS,
  PaymentsService,
  SHIPPING_MIGRATIONS,
  ShippingService,
} from './orders/services.js';

/** Exit codes: 0 stopped on request, 1 failed (start-up, crash, shutdown too slow), 2 bad configuration. */
const EXIT = { ok: 0, failed: 1, config: 2 } as const;

/** Something to undo on the way out, in reverse order of acquisition. */
interface Cleanup {
  readonly what: string;
  readonly run: () => Promise<void>;
}

/** One line on standard error, for the person at the terminal. */
function say(line: string): void {
  process.stderr.write(`replikit: ${line.replace(/\s*\n\s*/g, ' ')}\n`);
}

function messageOf(err: unknown): string {
  // Connecting to "localhost" tries ::1 and 127.0.0.1; Node reports both in an AggregateError
  // whose own message is empty.
  if (err instanceof AggregateError && err.message === '' && err.errors.length > 0) {
    return messageOf(err.errors[0]);
  }
  return err instanceof Error ? err.message : String(err);
}

/** The same nodes, in another database on each. */
function onDatabase(urls: NodeUrls, database: string): NodeUrls {
  return {
    primary: withDatabase(urls.primary, database),
    replicas: urls.replicas.map(({ name, url }) => ({ name, url: withDatabase(url, database) })),
  };
}

/** The ledger databases of the transfers demo, and the variable that names each. */
function ledgerDatabases(
  config: Config,
): readonly { ledger: LedgerName; prefix: 'a' | 'b'; database: string; variable: string }[] {
  return [
    {
      ledger: LEDGERS.a,
      prefix: 'a',
      database: config.REPLIKIT_LEDGER_A_DATABASE,
      variable: 'REPLIKIT_LEDGER_A_DATABASE',
    },
    {
      ledger: LEDGERS.b,
      prefix: 'b',
      database: config.REPLIKIT_LEDGER_B_DATABASE,
      variable: 'REPLIKIT_LEDGER_B_DATABASE',
    },
  ];
}

/**
 * Each order service's outbox and inbox (the choreographed flow). Listed with the service's own
 * migrations so that a restart knows them (the relay and consumer would create them too).
 */
const MESSAGING_MIGRATIONS = [...outboxMigrations, ...inboxMigrations];

/** The order demo's databases: one per service; the orders one also holds the saga log. */
function orderDatabases(config: Config) {
  return {
    orders: {
      database: config.REPLIKIT_ORDERS_DATABASE,
      variable: 'REPLIKIT_ORDERS_DATABASE',
      migrations: [
        ...ORDERS_MIGRATIONS,
        ...SAGA_MIGRATIONS,
        ...ORDERS_FLOW_MIGRATIONS,
        ...MESSAGING_MIGRATIONS,
      ],
    },
    payments: {
      database: config.REPLIKIT_PAYMENTS_DATABASE,
      variable: 'REPLIKIT_PAYMENTS_DATABASE',
      migrations: [...PAYMENTS_MIGRATIONS, ...MESSAGING_MIGRATIONS],
    },
    inventory: {
      database: config.REPLIKIT_INVENTORY_DATABASE,
      variable: 'REPLIKIT_INVENTORY_DATABASE',
      migrations: [...INVENTORY_MIGRATIONS, ...MESSAGING_MIGRATIONS],
    },
    shipping: {
      database: config.REPLIKIT_SHIPPING_DATABASE,
      variable: 'REPLIKIT_SHIPPING_DATABASE',
      migrations: [...SHIPPING_MIGRATIONS, ...MESSAGING_MIGRATIONS],
    },
  } as const;
}

/** Names of the stack's nodes already running before this process touched the stack. */
async function runningNodes(config: Config): Promise<Set<string>> {
  try {
    const stack = await LocalStack.open({
      dir: config.REPLIKIT_STACK_DIR,
      ...(config.REPLIKIT_PG_BIN === undefined ? {} : { pgBin: config.REPLIKIT_PG_BIN }),
    });
    const status = await stack.status();
    return new Set(status.filter((node) => node.running).map((node) => node.name));
  } catch {
    // No stack yet (or unreadable: LocalStack.start will say why).
    return new Set();
  }
}

/** Stops the nodes of the stack in `dir` that are running now but were not in `adopted`. */
async function stopStartedNodes(
  stack: LocalStack,
  adopted: ReadonlySet<string>,
  logger: Logger,
): Promise<void> {
  const ours = stack.nodes.filter((node) => !adopted.has(node.name));
  if (ours.length === 0) {
    logger.info('leaving the local stack running: it was running before');
    return;
  }
  logger.info({ nodes: ours.map((node) => node.name) }, 'stopping PostgreSQL');
  await Promise.all(ours.map((node) => stack.stopNode(node.name)));
}

class Service {
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #cleanups: Cleanup[] = [];
  readonly #abort = new AbortController();
  #startup: Promise<void> = Promise.resolve();
  #stopping = false;

  constructor(config: Config, logger: Logger) {
    this.#config = config;
    this.#logger = logger;
  }

  /** Runs start-up; rejects on failure (resources acquired so far stay registered for {@link stop}). */
  start(): Promise<void> {
    this.#startup = this.#start();
    return this.#startup;
  }

  async #start(): Promise<void> {
    const config = this.#config;
    const logger = this.#logger;
    const signal = this.#abort.signal;

    const telemetry = telemetryState();
    if (!telemetry.started && config.OTEL_EXPORTER_OTLP_ENDPOINT !== undefined) {
      logger.warn(
        'OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing is off: start with node --import ./dist/telemetry/register.js',
      );
    } else if (telemetry.exporting) {
      logger.info({ url: telemetry.tracesUrl }, 'exporting traces over OTLP');
    }

    let urls: NodeUrls;
    let stack: LocalStack | undefined;
    if (config.REPLIKIT_PRIMARY_URL !== undefined && config.REPLIKIT_REPLICA_URLS !== undefined) {
      urls = { primary: config.REPLIKIT_PRIMARY_URL, replicas: config.REPLIKIT_REPLICA_URLS };
      logger.info(
        {
          primary: redactUrl(urls.primary),
          replicas: urls.replicas.map((r) => ({ name: r.name, url: redactUrl(r.url) })),
        },
        'using existing PostgreSQL servers',
      );
    } else {
      const local = await this.#startStack();
      stack = local;
      signal.throwIfAborted();
      const database = config.REPLIKIT_DATABASE;
      const created = await step('create the database', () =>
        ensureDatabase(local.url('primary', 'postgres'), database),
      );
      if (created) logger.info({ database }, 'created the database');
      const others = [
        ...ledgerDatabases(config).map((ledger) => ledger.database),
        ...Object.values(orderDatabases(config)).map((entry) => entry.database),
      ];
      for (const other of others) {
        const createdOther = await step(`create the database ${other}`, () =>
          ensureDatabase(local.url('primary', 'postgres'), other),
        );
        if (createdOther) logger.info({ database: other }, 'created the database');
      }
      urls = {
        primary: local.url('primary', database),
        replicas: local.replicas.map((replica) => ({
          name: replica.name,
          url: local.url(replica.name, database),
        })),
      };
    }
    signal.throwIfAborted();

    const registry = createMetricsRegistry();
    const routingMetrics = createRoutingMetrics(registry, { logger });
    // One bound for every read of the service that waits, whatever it waits for (a replica of
    // any database, the profiles projection): beyond it reads are refused 503, not queued.
    const waitingReads = bulkhead(config.REPLIKIT_MAX_WAITING_READS);
    const clusterFor = (nodes: NodeUrls, database?: string): Cluster =>
      createCluster({
        primary: nodes.primary,
        replicas: Object.fromEntries(nodes.replicas.map(({ name, url }) => [name, url])),
        logger: logger.child({
          component: 'routing',
          ...(database === undefined ? {} : { database }),
        }),
        // One observer for every cluster: reads of the ledgers count with the others. Its gauges
        // describe the attached cluster only (the replicas are the same servers anyway), since a
        // second RoutingMetrics would register the same metric names twice.
        observer: routingMetrics.observer,
        waitTimeoutMs: config.REPLIKIT_READ_WAIT_TIMEOUT_MS,
        onWaitTimeout: config.REPLIKIT_READ_WAIT_FALLBACK,
        waitBulkhead: waitingReads,
        maxLagMs: config.REPLIKIT_MAX_LAG_MS,
      });
    const cluster = clusterFor(urls);
    routingMetrics.attach(cluster);
    this.#cleanups.push({ what: 'database cluster', run: () => cluster.close() });
    await step('reach the database nodes', () => cluster.ready());

    const migrateOn = async (
      what: string,
      pool: Cluster['primary'],
      migrations: readonly Migration[],
      fields: Record<string, unknown> = {},
    ): Promise<void> => {
      const result = await step(`apply the migrations ${what}`, () =>
        migrate(pool, migrations, {
          signal,
          onApplied: (id, durationMs) =>
            logger.info(
              { ...fields, migration: id, durationMs: Math.round(durationMs) },
              'applied migration',
            ),
        }),
      );
      if (result.unknown.length > 0) {
        logger.warn(
          { ...fields, migrations: result.unknown },
          'the database has migrations this version does not know; a newer version migrated it',
        );
      }
    };
    await migrateOn('on the primary', cluster.primary, [
      ...MIGRATIONS,
      ...PROFILES_MIGRATIONS,
      ...SAGA_MIGRATIONS,
      ...postgresTransportMigrations,
    ]);

    // The transfers demo: two ledger databases on the same servers, read through a routed
    // cluster each, written by the two-phase commit coordinator.
    const ledgers = {} as Record<LedgerName, Cluster>;
    const participants = {} as Record<LedgerName, string>;
    for (const { ledger, prefix, database, variable } of ledgerDatabases(config)) {
      const nodes = onDatabase(urls, database);
      const ledgerCluster = clusterFor(nodes, database);
      ledgers[ledger] = ledgerCluster;
      participants[ledger] = nodes.primary;
      this.#cleanups.push({ what: `${ledger} cluster`, run: () => ledgerCluster.close() });
      await step(`reach the nodes of ${ledger}`, () => ledgerCluster.ready());
      signal.throwIfAborted();
      await migrateOn(`of ${ledger}`, ledgerCluster.primary, ledgerMigrations(prefix), {
        database,
      }).catch((err: unknown) => {
        if (databaseMissing(err)) {
          throw new ReplikitError(
            'STARTUP_FAILED',
            `the ledger database ${database} does not exist on the primary; create it (create database ${database}) or name another one with ${variable}`,
            { cause: err, details: { database, variable } },
          );
        }
        throw err;
      });
    }
    // The order demo: four services, a database each. The orders one is read through a routed
    // cluster and holds the saga log; the others are reached only through their service clients.
    const orderDbs = orderDatabases(config);
    const orderPools = {} as Record<keyof typeof orderDbs, Cluster['primary']>;
    let ordersCluster: Cluster | undefined;
    for (const [service, { database, variable, migrations }] of Object.entries(orderDbs) as [
      keyof typeof orderDbs,
      (typeof orderDbs)[keyof typeof orderDbs],
    ][]) {
      const serviceCluster = clusterFor(onDatabase(urls, database), database);
      this.#cleanups.push({ what: `${service} cluster`, run: () => serviceCluster.close() });
      if (service === 'orders') ordersCluster = serviceCluster;
      orderPools[service] = serviceCluster.primary;
      await step(`reach the nodes of ${database}`, () => serviceCluster.ready());
      signal.throwIfAborted();
      await migrateOn(`of ${database}`, serviceCluster.primary, migrations, { database }).catch(
        (err: unknown) => {
          if (databaseMissing(err)) {
            throw new ReplikitError(
              'STARTUP_FAILED',
              `the database ${database} does not exist on the primary; create it (create database ${database}) or name another one with ${variable}`,
              { cause: err, details: { database, variable } },
            );
          }
          throw err;
        },
      );
    }
    if (ordersCluster === undefined) throw new Error('the orders database has no cluster');
    if (stack !== undefined) {
      const local = stack;
      // So that a read on a replica right after start-up finds the tables.
      await step('wait for the replicas to replay the migrations', () =>
        local.waitForReplicas({ signal }),
      );
    }
    signal.throwIfAborted();

    const twoPhaseMetrics = createTwoPhaseMetrics(registry, { logger });
    const coordinator = createCoordinator({
      name: 'replikit-app',
      // Decisions are recorded in the service's own database: its commit is the commit point.
      coordinator: urls.primary,
      participants,
      logger: logger.child({ component: 'twopc' }),
      observer: twoPhaseMetrics.observer,
    });
    twoPhaseMetrics.attach(coordinator);
    this.#cleanups.push({ what: 'two-phase commit coordinator', run: () => coordinator.close() });
    await step('start the two-phase commit coordinator', () => coordinator.start());
    signal.throwIfAborted();

    // The CQRS demo: an event store in the service's own database, and the profiles projection.
    const eventMetrics = createEventMetrics(registry, { logger });
    const store = createEventStore({
      connection: urls.primary,
      observer: eventMetrics.observer,
      logger: logger.child({ component: 'events' }),
    });
    eventMetrics.attach(store);
    this.#cleanups.push({ what: 'event store', run: () => store.close() });
    await step(
      'start the profiles projection',
      () => store.startProjection(PROFILES_PROJECTION).activated,
    );
    signal.throwIfAborted();

    const sagaMetrics = createSagaMetrics(registry, { logger });
    const orderSaga = createOrderSaga(
      {
        payments: new PaymentsService(orderPools.payments),
        inventory: new InventoryService(orderPools.inventory),
        shipping: new ShippingService(orderPools.shipping),
      },
      { faults: config.REPLIKIT_DEMO_FAULTS },
    );
    const engine = createSagaEngine({
      database: orderPools.orders,
      sagas: [orderSaga],
      leaseMs: config.REPLIKIT_SAGA_LEASE_MS,
      observer: sagaMetrics.observer,
      logger: logger.child({ component: 'saga' }),
    });
    sagaMetrics.attach(engine);
    // The transfers demo's saga mode keeps its saga log in the service's own database.
    const transferSaga = createTransferSaga((account) => ledgers[ledgerOf(account)].primary);
    const transferEngine = createSagaEngine({
      database: cluster.primary,
      sagas: [transferSaga],
      leaseMs: config.REPLIKIT_SAGA_LEASE_MS,
      observer: sagaMetrics.observer,
      logger: logger.child({ component: 'saga' }),
    });
    sagaMetrics.attach(transferEngine);
    this.#cleanups.push({ what: 'transfer saga engine', run: () => transferEngine.close() });
    await step('start the transfer saga engine', () => transferEngine.start());
    // Closed before the orders cluster (cleanups run in reverse): it hands its leases back first.
    this.#cleanups.push({ what: 'saga engine', run: () => engine.close() });
    await step('start the saga engine', () => engine.start());
    if (config.REPLIKIT_DEMO_FAULTS) logger.warn('fault injection is on (REPLIKIT_DEMO_FAULTS)');
    signal.throwIfAborted();

    // The same order flow by events: each service's outbox, a relay each, a consumer each.
    let transport: Transport;
    if (config.REPLIKIT_NATS_URL === undefined) {
      transport = createPostgresTransport({ database: cluster.primary });
    } else {
      // Only a service that uses NATS loads its client.
      const { createNatsTransport } = await import('../messaging/nats-transport.js');
      transport = createNatsTransport({
        servers: config.REPLIKIT_NATS_URL.split(',').map((server) => server.trim()),
        stream: 'replikit_orders',
        logger: logger.child({ component: 'nats' }),
      });
    }
    this.#cleanups.push({ what: 'message transport', run: () => transport.close() });
    const outboxMetrics = createOutboxMetrics(registry, { logger });
    const choreography = createOrderChoreography({
      databases: orderPools,
      transport,
      logger: logger.child({ component: 'choreography' }),
      relayObserver: outboxMetrics.relayObserver,
      consumerObserver: outboxMetrics.consumerObserver,
    });
    for (const relay of choreography.relays) outboxMetrics.attach(relay);
    this.#cleanups.push({ what: 'order choreography', run: () => choreography.close() });
    await step('start the choreographed order flow', () => choreography.start());
    signal.throwIfAborted();

    const app = createApp({
      config,
      logger,
      cluster,
      registry,
      transfers: {
        coordinator,
        ledgers,
        saga: { engine: transferEngine, definition: transferSaga },
      },
      profiles: { store, cluster, waitBulkhead: waitingReads },
      orders: {
        engine,
        saga: orderSaga,
        orders: ordersCluster,
        waitMs: config.REPLIKIT_ORDER_WAIT_MS,
        faults: config.REPLIKIT_DEMO_FAULTS,
        choreography,
      },
      sagaEngines: [engine, transferEngine],
    });
    const server = await listen(app, {
      port: config.PORT,
      host: config.HOST,
      headersTimeoutMs: config.REPLIKIT_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: config.REPLIKIT_REQUEST_TIMEOUT_MS,
    });
    this.#cleanups.push({
      what: 'HTTP server',
      run: () => server.close({ graceMs: Math.floor(config.REPLIKIT_SHUTDOWN_TIMEOUT_MS / 2) }),
    });

    const nodes = [
      { name: 'primary', url: urls.primary },
      ...urls.replicas.map(({ name, url }) => ({ name, url })),
      ...Object.entries(participants).map(([name, url]) => ({ name, url })),
    ].map(({ name, url }) => ({ name, url: redactUrl(url) }));
    logger.info({ url: server.url, metrics: `${server.url}/metrics`, nodes }, 'replikit is ready');
    const width = Math.max(8, ...nodes.map((node) => node.name.length));
    const row = (label: string, value: string): string => `  ${label.padEnd(width)}  ${value}\n`;
    process.stderr.write(
      `\nreplikit is ready\n` +
        row('service', server.url) +
        row('healthz', `${server.url}/healthz`) +
        row('readyz', `${server.url}/readyz`) +
        row('metrics', `${server.url}/metrics`) +
        nodes.map((node) => row(node.name, node.url)).join('') +
        `\nPress Ctrl-C to stop.\n\n`,
    );
  }

  async #startStack(): Promise<LocalStack> {
    const config = this.#config;
    const logger = this.#logger.child({ component: 'stack' });
    const adopted = await runningNodes(config);
    const options = {
      dir: config.REPLIKIT_STACK_DIR,
      log: (line: string) => logger.info(line),
      signal: this.#abort.signal,
      ...(config.REPLIKIT_PG_BIN === undefined ? {} : { pgBin: config.REPLIKIT_PG_BIN }),
      ...(config.REPLIKIT_STACK_PORT === undefined ? {} : { basePort: config.REPLIKIT_STACK_PORT }),
    };
    try {
      const stack = await LocalStack.start(options);
      this.#cleanups.push({
        what: 'local stack',
        run: () => stopStartedNodes(stack, adopted, logger),
      });
      return stack;
    } catch (err) {
      // LocalStack.start may have started some nodes before it failed (or was interrupted):
      // stop those, so that no PostgreSQL outlives this process.
      const opened = await LocalStack.open(options).catch(() => undefined);
      if (opened !== undefined) {
        await stopStartedNodes(opened, adopted, logger).catch((stopError: unknown) =>
          logger.error({ err: stopError }, 'could not stop the nodes started so far'),
        );
      }
      throw err;
    }
  }

  /**
   * Undoes everything, in reverse order, within the shutdown timeout; then exits with `code`.
   * Called on a signal, after a failed start-up, or on a crash. Later calls are ignored.
   */
  async stop(code: number, reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    const logger = this.#logger;
    const timeoutMs = this.#config.REPLIKIT_SHUTDOWN_TIMEOUT_MS;
    const deadline = setTimeout(() => {
      logger.error({ timeoutMs }, 'shutdown took too long; exiting anyway');
      say(
        `shutdown took longer than ${timeoutMs} ms (REPLIKIT_SHUTDOWN_TIMEOUT_MS); exiting anyway`,
      );
      process.exit(EXIT.failed);
    }, timeoutMs);
    deadline.unref();

    logger.info({ reason }, 'shutting down');
    this.#abort.abort(new Error(reason));
    // Start-up notices the abort between steps; what it acquired is registered by then.
    await this.#startup.catch(() => undefined);
    for (const cleanup of this.#cleanups.reverse()) {
      try {
        await cleanup.run();
        logger.debug({ what: cleanup.what }, 'closed');
      } catch (err) {
        logger.error({ err, what: cleanup.what }, 'could not close cleanly');
      }
    }
    await shutdownTelemetry({ timeoutMs: Math.max(1, timeoutMs / 4) });
    logger.info({ code }, 'stopped');
    clearTimeout(deadline);
    process.exit(code);
  }

  /** Whether a stop was requested, so that start-up errors caused by the abort are not reported. */
  get stopping(): boolean {
    return this.#stopping;
  }
}

/** Whether `err` says the database connected to does not exist (SQLSTATE 3D000), perhaps wrapped by {@link step}. */
function databaseMissing(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if ((e as { code?: unknown }).code === '3D000') return true;
  }
  return false;
}

/** Runs `work`, giving its failure a one-line message that says what start-up was doing. */
async function step<T>(what: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof ReplikitError || (err instanceof Error && err.name === 'AbortError'))
      throw err;
    throw new ReplikitError('STARTUP_FAILED', `could not ${what}: ${messageOf(err)}`, {
      cause: err,
    });
  }
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      say(err.message);
      process.exit(EXIT.config);
    }
    throw err;
  }

  const logger = createLogger({ level: config.LOG_LEVEL, service: config.OTEL_SERVICE_NAME });
  const service = new Service(config, logger);

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (service.stopping) {
        logger.warn({ signal }, 'already shutting down');
        return;
      }
      void service.stop(EXIT.ok, signal);
    });
  }
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    void service.stop(EXIT.failed, 'uncaught exception');
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err }, 'unhandled promise rejection');
    void service.stop(EXIT.failed, 'unhandled promise rejection');
  });

  try {
    await service.start();
  } catch (err) {
    if (service.stopping) return; // interrupted by a signal: stop() is already undoing start-up
    if (err instanceof ReplikitError) {
      logger.error({ err }, 'start-up failed');
      say(err.message);
    } else {
      logger.fatal({ err }, 'start-up failed');
      say(`start-up failed: ${messageOf(err)}`);
    }
    await service.stop(EXIT.failed, 'start-up failed');
  }
}

await main();
