/**
 * An orchestrator process for the saga benchmark's kill test (`bench/sagas.ts`), on replikit or
 * on DBOS Transact. It resumes what a killed predecessor left (replikit: by claiming sagas whose
 * lease ran out; DBOS: by recovering its pending workflows on launch), then, with MODE=run,
 * starts orders of the kill-test mix at CONCURRENCY until it is killed.
 *
 * Before every service call it prints `C <method> <order id> <key>` (stdout to a pipe is
 * synchronous on Linux, so the line survives a SIGKILL right after), so the parent can count
 * calls made more than once. It prints `ready` once it works and `.` per finished saga.
 */
import { DBOS } from '@dbos-inc/dbos-sdk';
import pg from 'pg';

import { createOrderSaga, type OrderServices } from '../../src/app/orders/order-saga.js';
import {
  InventoryService,
  PaymentsService,
  ShippingService,
} from '../../src/app/orders/services.js';
import { createSagaEngine } from '../../src/saga/index.js';
import { killTestOrder, registerDbosOrderWorkflow, type KeyMode } from './saga-bench.js';

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const engineName = env('ENGINE');
const mode = env('MODE');
const concurrency = Number(process.env['CONCURRENCY'] ?? '16');

/** Prints each call before it is made: the method, the order and the idempotency key. */
function logged<T extends object>(service: T): T {
  return new Proxy(service, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        process.stdout.write(`\nC ${String(property)} ${String(args[1])} ${String(args[0])}\n`);
        return (value as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      };
    },
  });
}

const pool = (url: string) => {
  const created = new pg.Pool({ connectionString: url, max: 16 });
  created.on('error', () => undefined);
  return created;
};
const services: OrderServices = {
  payments: logged(new PaymentsService(pool(env('PAYMENTS_URL')))),
  inventory: logged(new InventoryService(pool(env('INVENTORY_URL')))),
  shipping: logged(new ShippingService(pool(env('SHIPPING_URL')))),
};

let runOne: () => Promise<void>;
if (engineName === 'replikit') {
  const saga = createOrderSaga(services, { faults: true });
  const engine = createSagaEngine({
    database: env('ORDERS_URL'),
    sagas: [saga],
    // Short leases so that a restarted process takes the dead one's sagas over quickly.
    leaseMs: 2000,
    pollIntervalMs: 100,
    concurrency: 64,
  });
  await engine.start();
  runOne = async () => {
    const { id } = await engine.run(saga, killTestOrder());
    await engine.wait(id, { timeoutMs: 60_000 });
  };
} else {
  const workflow = registerDbosOrderWorkflow({
    orders: pool(env('ORDERS_URL')),
    services,
    keys: env('KEYS') as KeyMode,
    faults: true,
  });
  DBOS.setConfig({
    name: 'replikit-bench-sagas',
    systemDatabaseUrl: env('DBOS_SYSTEM_URL'),
    logLevel: 'error',
  });
  // Recovers the workflows the killed process left pending (same executor id, `local`).
  await DBOS.launch();
  runOne = async () => {
    await workflow(killTestOrder());
  };
}
process.stdout.write('\nready\n');

if (mode === 'run') {
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (;;) {
        await runOne().catch((err: unknown) =>
          process.stdout.write(`\nE ${err instanceof Error ? err.message : String(err)}\n`),
        );
        process.stdout.write('.');
      }
    }),
  );
}
// MODE=drain: only resume what is left; the parent stops this process when nothing is.
await new Promise(() => undefined);
