/**
 * One service process of the torture run: the demo's HTTP app (the `/users` resource and its
 * consistency middleware) over a routed cluster, without the other demos, so that it starts in
 * about a second and can be killed and restarted often.
 *
 * Environment: `TORTURE_PRIMARY_URL`, `TORTURE_REPLICA_URLS` (`name=url,…`). Prints
 * `listening <url>` once it serves; stops on SIGTERM.
 */
import { createApp } from '../../../src/app/app.js';
import { loadConfig } from '../../../src/app/config.js';
import { listen } from '../../../src/app/server.js';
import { createCluster } from '../../../src/routing/index.js';
import { createLogger } from '../../../src/telemetry/logger.js';
import { createMetricsRegistry } from '../../../src/telemetry/metrics.js';

const primary = process.env.TORTURE_PRIMARY_URL;
const replicaList = process.env.TORTURE_REPLICA_URLS;
if (primary === undefined || replicaList === undefined) {
  process.stderr.write('set TORTURE_PRIMARY_URL and TORTURE_REPLICA_URLS\n');
  process.exit(2);
}
const replicas = Object.fromEntries(
  replicaList.split(',').map((entry) => {
    const eq = entry.indexOf('=');
    return [entry.slice(0, eq), entry.slice(eq + 1)];
  }),
);

const logger = createLogger({ level: 'warn', service: 'torture' });
const cluster = createCluster({ primary, replicas, waitTimeoutMs: 1000, logger });
await cluster.ready();
const app = createApp({
  config: loadConfig({}),
  logger,
  cluster,
  registry: createMetricsRegistry(),
});
const running = await listen(app, { port: 0, host: '127.0.0.1' });
process.stdout.write(`listening ${running.url}\n`);

process.once('SIGTERM', () => {
  void running
    .close({ graceMs: 1000 })
    .then(() => cluster.close())
    .finally(() => process.exit(0));
});
