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

/** What the books say, counted from the four service databases. */
export interface Books {
  readonly confirmed: number;
  readonly rejected: number;
  readonly pending: number;
  /** Every way the books can fail to balance, as sentences; empty when they balance. */
  readonly problems: string[];
}

/**
 * Counts the books: money (wallets + charges = opening balances), stock (available + reserved =
 * opening stock), and per order: a confirmed order has exactly one charge, reservation and
 * shipment; a rejected one has none left standing.
 */
export async function countBooks(pools: OrderDatabases['pools']): Promise<Books> {
  const problems: string[] = [];
  const { rows: orders } = await pools.orders.query<{ id: string; status: string; amount: string }>(
    'select id, status, amount from orders',
  );
  const { rows: money } = await pools.payments.query<{ wallets: string; charged: string }>(
    `select (select coalesce(sum(balance), 0) from wallets) as wallets,
            (select coalesce(sum(amount), 0) from payments where status = 'charged') as charged`,
  );
  const expectedMoney = DEMO_CUSTOMERS.count * DEMO_CUSTOMERS.openingBalance;
  const walletSum = Number(money[0]?.wallets);
  const chargedSum = Number(money[0]?.charged);
  if (walletSum + chargedSum !== expectedMoney)
    problems.push(`wallets ${walletSum} + charges ${chargedSum} != ${expectedMoney}`);
  const { rows: stock } = await pools.inventory.query<{
    sku: string;
    available: number;
    reserved: string;
  }>(
    `select s.sku, s.available,
            coalesce((select sum((i->>'qty')::int) from reservations r, jsonb_array_elements(r.items) i
                      where r.status = 'reserved' and i->>'sku' = s.sku), 0) as reserved
     from stock s`,
  );
  for (const row of stock) {
    if (row.available + Number(row.reserved) !== DEMO_STOCK.units)
      problems.push(
        `${row.sku}: available ${row.available} + reserved ${row.reserved} != ${DEMO_STOCK.units}`,
      );
  }
  const standing = async (pool: pg.Pool, sql: string) => {
    const { rows } = await pool.query<{ order_id: string; n: string }>(sql);
    return new Map(rows.map((row) => [row.order_id, Number(row.n)]));
  };
  const charges = await standing(
    pools.payments,
    `select order_id, count(*) as n from payments where status = 'charged' group by order_id`,
  );
  const reservations = await standing(
    pools.inventory,
    `select order_id, count(*) as n from reservations where status = 'reserved' group by order_id`,
  );
  const shipments = await standing(
    pools.shipping,
    `select order_id, count(*) as n from shipments where status = 'scheduled' group by order_id`,
  );
  const byId = new Map(orders.map((order) => [order.id, order]));
  for (const [name, map] of [
    ['charge', charges],
    ['reservation', reservations],
    ['shipment', shipments],
  ] as const) {
    for (const [orderId, n] of map) {
      const order = byId.get(orderId);
      if (order === undefined)
        problems.push(`${name} standing for order ${orderId}, which does not exist`);
      else if (order.status === 'rejected')
        problems.push(`${name} standing for rejected order ${orderId}`);
      if (n > 1) problems.push(`${n} ${name}s for order ${orderId}`);
    }
  }
  for (const order of orders) {
    if (order.status !== 'confirmed') continue;
    for (const [name, map] of [
      ['charge', charges],
      ['reservation', reservations],
      ['shipment', shipments],
    ] as const) {
      if (map.get(order.id) !== 1) problems.push(`confirmed order ${order.id} has no ${name}`);
    }
  }
  return {
    confirmed: orders.filter((o) => o.status === 'confirmed').length,
    rejected: orders.filter((o) => o.status === 'rejected').length,
    pending: orders.filter((o) => o.status === 'pending').length,
    problems,
  };
}
