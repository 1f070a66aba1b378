/**
 * An orchestrator process for the saga crash test. Starts COUNT order sagas (a tenth of them
 * asking for more stock than exists, so they compensate) at CONCURRENCY, and works on any saga
 * it can claim. With probability CRASH_P before and after every service call and inside the
 * local step's transaction, it kills itself with SIGKILL, printing K first. Prints "+" per
 * saga started (stdout to a pipe is synchronous on Linux, so the count survives the kill).
 */
import pg from 'pg';

import { createOrderSaga } from '../../src/app/orders/order-saga.js';
import {
  InventoryService,
  PaymentsService,
  ShippingService,
} from '../../src/app/orders/services.js';
import { createSagaEngine } from '../../src/saga/index.js';
import { sampleOrder } from './orders.js';

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const crashP = Number(process.env['CRASH_P'] ?? '0');
const maybeCrash = (): void => {
  if (Math.random() >= crashP) return;
  process.stdout.write('K');
  process.kill(process.pid, 'SIGKILL');
};

/** Wraps every method of a service so the process may die just before or just after the call. */
function crashing<T extends object>(service: T): T {
  return new Proxy(service, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        maybeCrash();
        const result: unknown = await (value as (...a: unknown[]) => Promise<unknown>).apply(
          target,
          args,
        );
        maybeCrash();
        return result;
      };
    },
  });
}

const pool = (url: string) => new pg.Pool({ connectionString: url, max: 8 });
const saga = createOrderSaga({
  payments: crashing(new PaymentsService(pool(env('PAYMENTS_URL')))),
  inventory: crashing(new InventoryService(pool(env('INVENTORY_URL')))),
  shipping: crashing(new ShippingService(pool(env('SHIPPING_URL')))),
});
// Die inside the local step too: after the order row is written, before the checkpoint commits.
const first = saga.steps[0];
if (first?.local === true) {
  const run = first.run.bind(first);
  Object.assign(first, {
    run: async (...args: Parameters<typeof run>) => {
      const output = await run(...args);
      maybeCrash();
      return output;
    },
  });
}

const engine = createSagaEngine({
  database: env('ORDERS_URL'),
  sagas: [saga],
  leaseMs: 1000,
  pollIntervalMs: 100,
  concurrency: 64,
});
await engine.start();

let remaining = Number(env('COUNT'));
await Promise.all(
  Array.from({ length: Number(process.env['CONCURRENCY'] ?? '16') }, async () => {
    while (remaining > 0) {
      remaining--;
      const order =
        Math.random() < 0.1
          ? sampleOrder({
              items: [
                { sku: 'sku-1', qty: 1000 },
                { sku: 'sku-1', qty: 1000 },
              ],
            })
          : sampleOrder();
      const { id } = await engine.run(saga, order);
      process.stdout.write('+');
      await engine.wait(id, { timeoutMs: 30_000 });
    }
  }),
);
process.stdout.write('\nstarted all\n');
// Keep resuming others' sagas until the test stops this process.
await new Promise(() => undefined);
