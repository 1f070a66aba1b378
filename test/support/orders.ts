import { randomUUID } from 'node:crypto';

import pg from 'pg';

import { migrate } from '../../src/db/migrate.js';
import {
  createOrderSaga,
  ORDERS_MIGRATIONS,
  type OrderInput,
  type OrderSagaOptions,
} from '../../src/app/orders/order-saga.js';
import {
  DEMO_CUSTOMERS,
  DEMO_STOCK,
  INVENTORY_MIGRATIONS,
  InventoryService,
  PAYMENTS_MIGRATIONS,
  PaymentsService,
  SHIPPING_MIGRATIONS,
  ShippingService,
} from '../../src/app/orders/services.js';
import { ORDERS_FLOW_MIGRATIONS } from '../../src/app/orders/choreography.js';
import { SAGA_MIGRATIONS } from '../../src/saga/index.js';
import { createTestDatabase, type TestDatabase } from './stack.js';

/** The four databases of the order demo, migrated, with a pool on each. */
export interface OrderDatabases {
  readonly orders: TestDatabase;
  readonly payments: TestDatabase;
  readonly inventory: TestDatabase;
  readonly shipping: TestDatabase;
  readonly pools: {
    readonly orders: pg.Pool;
    readonly payments: pg.Pool;
    readonly inventory: pg.Pool;
    readonly shipping: pg.Pool;
  };
  readonly urls: Readonly<Record<'orders' | 'payments' | 'inventory' | 'shipping', string>>;
  drop(): Promise<void>;
}

export async function createOrderDatabases(prefix: string): Promise<OrderDatabases> {
  const [orders, payments, inventory, shipping] = await Promise.all(
    ['orders', 'payments', 'inventory', 'shipping'].map((name) =>
      createTestDatabase(`${prefix}_${name}`),
    ),
  );
  if (!orders || !payments || !inventory || !shipping) throw new Error('databases missing');
  const pool = (db: TestDatabase) => new pg.Pool({ connectionString: db.primaryUrl, max: 20 });
  const pools = {
    orders: pool(orders),
    payments: pool(payments),
    inventory: pool(inventory),
    shipping: pool(shipping),
  };
  await migrate(pools.orders, [
    ...ORDERS_MIGRATIONS,
    ...SAGA_MIGRATIONS,
    ...ORDERS_FLOW_MIGRATIONS,
  ]);
  await migrate(pools.payments, PAYMENTS_MIGRATIONS);
  await migrate(pools.inventory, INVENTORY_MIGRATIONS);
  await migrate(pools.shipping, SHIPPING_MIGRATIONS);
  return {
    orders,
    payments,
    inventory,
    shipping,
    pools,
    urls: {
      orders: orders.primaryUrl,
      payments: payments.primaryUrl,
      inventory: inventory.primaryUrl,
      shipping: shipping.primaryUrl,
    },
    drop: async () => {
      await Promise.all(Object.values(pools).map((p) => p.end()));
      await Promise.all([orders, payments, inventory, shipping].map((db) => db.drop()));
    },
  };
}

/** The order saga over services on these databases. */
export function orderSagaOn(
  pools: OrderDatabases['pools'],
  options: OrderSagaOptions = { faults: true },
) {
  return createOrderSaga(
    {
      payments: new PaymentsService(pools.payments),
      inventory: new InventoryService(pools.inventory),
      shipping: new ShippingService(pools.shipping),
    },
    options,
  );
}

/** A small order that every demo customer can pay and the stock can serve many times over. */
export function sampleOrder(overrides: Partial<OrderInput> = {}): OrderInput {
  const n = 1 + Math.floor(Math.random() * DEMO_CUSTOMERS.count);
  const sku = 1 + Math.floor(Math.random() * DEMO_STOCK.skus);
  return {
    orderId: randomUUID(),
    customerId: `c${n}`,
    items: [{ sku: `sku-${sku}`, qty: 1 }],
    amount: 10,
    faults: [],
    ...overrides,
  };
}

export { countBooks, type Books } from '../../src/app/orders/books.js';
