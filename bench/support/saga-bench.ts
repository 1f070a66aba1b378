/**
 * What the saga benchmark (`bench/sagas.ts`) and its kill-test worker share: the databases, the
 * order saga's services, the same saga written as a DBOS Transact workflow, order inputs, and the
 * books (the invariants of `test/support/orders.ts`, plus a count of effects applied twice).
 */
import { randomUUID } from 'node:crypto';

import { DBOS, type StepConfig } from '@dbos-inc/dbos-sdk';
import type pg from 'pg';

import { countBooks as countDemoBooks, type OrderPools } from '../../src/app/orders/books.js';
import type { OrderInput, OrderServices } from '../../src/app/orders/order-saga.js';
import { DEMO_CUSTOMERS, DEMO_STOCK } from '../../src/app/orders/services.js';
import { StepRejected } from '../../src/saga/index.js';

/** The bench's databases on the bench stack's primary. The three services are shared by both engines. */
export const DATABASES = {
  /** replikit: the orders table and the saga log, side by side (the local step needs that). */
  orders: 'bench_sagas_orders',
  /** DBOS: the orders table its plain steps write. */
  dbosOrders: 'bench_sagas_dbos_orders',
  /** DBOS: its system database (workflow status, inputs, step outputs). */
  dbosSystem: 'bench_sagas_dbos_system',
  payments: 'bench_sagas_payments',
  inventory: 'bench_sagas_inventory',
  shipping: 'bench_sagas_shipping',
} as const;

export type DatabaseKey = keyof typeof DATABASES;

/** The engines under test; `dbos-fresh` is the control whose service calls get a new key per execution. */
export type EngineKey = 'replikit' | 'dbos' | 'dbos-fresh';

/** How a DBOS step names its service call: stable (`<workflow id>/<step>`) or fresh per execution. */
export type KeyMode = 'stable' | 'fresh';

/** Pools on the four databases a saga touches besides the engine's own. */
export type { OrderPools };

/** A small order every demo customer can pay, of one unit of one product. */
export function sampleOrder(overrides: Partial<OrderInput> = {}): OrderInput {
  const customer = 1 + Math.floor(Math.random() * DEMO_CUSTOMERS.count);
  const sku = 1 + Math.floor(Math.random() * DEMO_STOCK.skus);
  return {
    orderId: randomUUID(),
    customerId: `c${customer}`,
    items: [{ sku: `sku-${sku}`, qty: 1 }],
    amount: 10,
    faults: [],
    ...overrides,
  };
}

/**
 * The kill test's mix: 80 % orders that complete, 10 % that ask for more stock than exists (the
 * saga compensates after `reserve_stock`), 10 % whose shipment is refused (it compensates after
 * `charge_payment`, so a refund is made).
 */
export function killTestOrder(): OrderInput {
  const roll = Math.random();
  if (roll < 0.1) return sampleOrder({ items: [{ sku: 'sku-1', qty: DEMO_STOCK.units + 1 }] });
  if (roll < 0.2)
    return sampleOrder({
      faults: [{ step: 'schedule_shipment', phase: 'run', action: 'reject', ms: 0 }],
    });
  return sampleOrder();
}

/** Puts the services and an orders table back to their opening state. */
export async function resetBooks(
  query: (database: DatabaseKey, sql: string) => Promise<unknown>,
  orders: DatabaseKey,
): Promise<void> {
  await query(
    'payments',
    `truncate payments; update wallets set balance = ${DEMO_CUSTOMERS.openingBalance}`,
  );
  await query(
    'inventory',
    `truncate reservations; update stock set available = ${DEMO_STOCK.units}`,
  );
  await query('shipping', 'truncate shipments');
  await query(orders, 'truncate orders');
}

/** What the books say, counted from the orders table and the three service databases. */
export interface Books {
  readonly confirmed: number;
  readonly rejected: number;
  readonly pending: number;
  /** Every way the books fail to balance (the invariants of `countBooks`); empty when they balance. */
  readonly problems: string[];
  /** Orders whose effect was applied more than once, by kind. */
  readonly duplicates: Duplicates;
}

/** Orders with an effect applied more than once, counted from the service databases. */
export interface Duplicates {
  /** Orders debited more than once: payment rows that were charged (still `charged`, or `refunded` since). */
  readonly charges: number;
  /** Orders credited back more than once (`refunded` rows). */
  readonly refunds: number;
  /** Orders whose stock was taken more than once (`reserved` or `released` reservation rows). */
  readonly stock: number;
  /** Orders released more than once (`released` rows). */
  readonly releases: number;
  /** Orders with more than one scheduled shipment. */
  readonly shipments: number;
}

async function countOf(pool: Pick<pg.Pool, 'query'>, sql: string): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(sql);
  return Number(rows[0]?.n ?? 0);
}

function ordersWithMoreThanOne(table: string, statuses: readonly string[]): string {
  return `select count(*) as n from (select order_id from ${table}
          where status in (${statuses.map((s) => `'${s}'`).join(', ')})
          group by order_id having count(*) > 1) x`;
}

/**
 * Counts the books (the demo's invariants, `src/app/orders/books.ts`), then the effects applied
 * twice.
 */
export async function countBooks(pools: OrderPools): Promise<Books> {
  const books = await countDemoBooks(pools);
  const duplicates: Duplicates = {
    charges: await countOf(
      pools.payments,
      ordersWithMoreThanOne('payments', ['charged', 'refunded']),
    ),
    refunds: await countOf(pools.payments, ordersWithMoreThanOne('payments', ['refunded'])),
    stock: await countOf(
      pools.inventory,
      ordersWithMoreThanOne('reservations', ['reserved', 'released']),
    ),
    releases: await countOf(pools.inventory, ordersWithMoreThanOne('reservations', ['released'])),
    shipments: await countOf(pools.shipping, ordersWithMoreThanOne('shipments', ['scheduled'])),
  };
  return { ...books, duplicates };
}

/** The sum of a {@link Duplicates}. */
export function duplicateTotal(duplicates: Duplicates): number {
  const { charges, refunds, stock, releases, shipments } = duplicates;
  return charges + refunds + stock + releases + shipments;
}

// ---------------------------------------------------------------------------------------------
// The order saga on DBOS Transact

/** What the DBOS workflow works with; set before launch and replaced per session. */
export interface DbosOrderContext {
  /** The pool of the orders table its plain steps write. */
  orders: pg.Pool;
  services: OrderServices;
  keys: KeyMode;
  /** Honour `input.faults` of kind `reject` (the kill test's refused shipments). */
  faults: boolean;
  /** Called after every step body with its duration (for the "where the time goes" table). */
  onStep?: (workflowId: string, step: string, durationMs: number) => void;
}

/** What the DBOS order workflow returns. */
export interface DbosOrderResult {
  readonly status: 'confirmed' | 'rejected';
  readonly reason?: string;
}

function isRejection(err: unknown): boolean {
  // A step's error comes back deserialised on recovery: compare by name, not by class.
  return (err as { name?: unknown } | null)?.name === 'StepRejected';
}

function reasonOf(err: unknown): string {
  const reason = (err as { reason?: unknown } | null)?.reason;
  return typeof reason === 'string' ? reason : 'retries_exhausted';
}

/**
 * Registers the order saga as a DBOS workflow (before `DBOS.launch()`), written the way the DBOS
 * documentation writes a saga: each action a step (`DBOS.runStep`), compensations in a `catch`
 * in reverse order, each a step too. The order row is written by a plain step (DBOS's core has
 * no step that commits with its checkpoint; its transactions need a separate data-source
 * package), made idempotent by the order id (`on conflict do nothing`) so that a step re-run
 * after a crash does not fail. Service calls get the same retry budget as replikit's (3
 * attempts from 100 ms, doubling; rejections not retried; 5 s per attempt), and with `keys:
 * 'stable'` the key `<workflow id>/<step>`, stable across recovery like replikit's
 * `<saga id>/<step>`.
 */
export function registerDbosOrderWorkflow(
  context: DbosOrderContext,
): (input: OrderInput) => Promise<DbosOrderResult> {
  const retried: StepConfig = {
    retriesAllowed: true,
    maxAttempts: 3,
    intervalSeconds: 0.1,
    backoffRate: 2,
    timeoutMS: 5000,
    shouldRetry: (err) => !isRejection(err),
  };
  const compensation: StepConfig = {
    retriesAllowed: true,
    maxAttempts: 5,
    intervalSeconds: 0.1,
    backoffRate: 2,
    timeoutMS: 5000,
  };
  const timed = async <T>(step: string, body: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await body();
    } finally {
      context.onStep?.(DBOS.workflowID ?? '', step, performance.now() - started);
    }
  };
  /** A service call as a step; returns the key it used (with fresh keys, a new one per execution). */
  const remote = async <T>(
    input: OrderInput,
    step: string,
    call: (key: string) => Promise<T>,
  ): Promise<{ key: string; output: T }> => {
    const workflowId = DBOS.workflowID ?? '';
    return DBOS.runStep(
      () =>
        timed(step, async () => {
          const key = context.keys === 'stable' ? `${workflowId}/${step}` : randomUUID();
          if (
            context.faults &&
            input.faults.some((f) => f.step === step && f.phase === 'run' && f.action === 'reject')
          ) {
            throw new StepRejected('injected', `injected rejection at ${step}`);
          }
          return { key, output: await call(key) };
        }),
      { ...retried, name: step },
    );
  };
  const orderSql = async (sql: string, params: unknown[]): Promise<void> => {
    await context.orders.query(sql, params);
  };

  async function order(input: OrderInput): Promise<DbosOrderResult> {
    const workflowId = DBOS.workflowID ?? '';
    const { orderId, customerId, items, amount } = input;
    await DBOS.runStep(
      () =>
        timed('create_order', () =>
          orderSql(
            `insert into orders (id, customer_id, items, amount, status, saga_id)
             values ($1, $2, $3, $4, 'pending', $5) on conflict (id) do nothing`,
            [orderId, customerId, JSON.stringify(items), amount, workflowId],
          ),
        ),
      { name: 'create_order' },
    );
    const undo: { step: string; run: () => Promise<void> }[] = [];
    try {
      const reserve = await remote(input, 'reserve_stock', (key) =>
        context.services.inventory.reserve(key, orderId, items),
      );
      undo.push({
        step: 'reserve_stock',
        run: () => context.services.inventory.release(reserve.key, orderId, items),
      });
      const charge = await remote(input, 'charge_payment', (key) =>
        context.services.payments.charge(key, orderId, customerId, amount),
      );
      undo.push({
        step: 'charge_payment',
        run: () => context.services.payments.refund(charge.key, orderId, customerId, amount),
      });
      await remote(input, 'schedule_shipment', (key) =>
        context.services.shipping.schedule(key, orderId),
      );
      await DBOS.runStep(
        () =>
          timed('confirm_order', () =>
            orderSql(
              `update orders set status = 'confirmed', updated_at = now() where id = $1 and status = 'pending'`,
              [orderId],
            ),
          ),
        { name: 'confirm_order' },
      );
      return { status: 'confirmed' };
    } catch (err) {
      // A step that failed without a rejection may have had its effect: with stable keys its
      // compensation is named by the same key, as replikit compensates an unknown outcome.
      if (!isRejection(err) && context.keys === 'stable') {
        const failed = ['reserve_stock', 'charge_payment', 'schedule_shipment'][undo.length];
        const key = `${workflowId}/${failed}`;
        if (failed === 'reserve_stock')
          undo.push({
            step: failed,
            run: () => context.services.inventory.release(key, orderId, items),
          });
        else if (failed === 'charge_payment')
          undo.push({
            step: failed,
            run: () => context.services.payments.refund(key, orderId, customerId, amount),
          });
        else if (failed === 'schedule_shipment')
          undo.push({ step: failed, run: () => context.services.shipping.cancel(key, orderId) });
      }
      for (const action of [...undo].reverse()) {
        await DBOS.runStep(() => timed(`${action.step}_compensate`, action.run), {
          ...compensation,
          name: `${action.step}_compensate`,
        });
      }
      const reason = reasonOf(err);
      await DBOS.runStep(
        () =>
          timed('reject_order', () =>
            orderSql(
              `update orders set status = 'rejected', reason = $2, updated_at = now() where id = $1 and status = 'pending'`,
              [orderId, reason],
            ),
          ),
        { name: 'reject_order' },
      );
      return { status: 'rejected', reason };
    }
  }

  return DBOS.registerWorkflow(order, { name: 'order' });
}
