import type pg from 'pg';

import { DEMO_CUSTOMERS, DEMO_STOCK } from './services.js';

/** The order demo's four databases; `countBooks` reads each. */
export interface OrderPools {
  readonly orders: Pick<pg.Pool, 'query'>;
  readonly payments: Pick<pg.Pool, 'query'>;
  readonly inventory: Pick<pg.Pool, 'query'>;
  readonly shipping: Pick<pg.Pool, 'query'>;
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
 * Counts the demo's books, for tests and benchmarks: money (wallets + charges = opening balances), stock (available + reserved =
 * opening stock), and per order: a confirmed order has exactly one charge, reservation and
 * shipment; a rejected one has none left standing.
 */
export async function countBooks(pools: OrderPools): Promise<Books> {
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
  const standing = async (pool: Pick<pg.Pool, 'query'>, sql: string) => {
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
