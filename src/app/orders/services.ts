import type pg from 'pg';

import type { Migration } from '../../db/migrate.js';
import { StepRejected } from '../../saga/index.js';
import { sqlState } from '../../errors.js';

/**
 * The three downstream services of the order demo. Each owns a database of its own and is
 * reached only through its client here, as it would be over the network; every call that
 * changes something takes an idempotency key, and a compensation leaves a tombstone under the
 * same key so that a call arriving after its own compensation (a retry that was still in flight)
 * has no effect. Every call is one statement, so it runs as well on a pool as inside a
 * transaction of the caller's (an event consumer's, whose inbox row commits with it).
 */

/** Something to run SQL on: a pool, or a client inside a transaction. */
type Db = Pick<pg.PoolClient, 'query'>;

const CHECK_VIOLATION = '23514';
const FOREIGN_KEY_VIOLATION = '23503';

/** Demo customers (`c1`…`c20`) and how much each wallet starts with. */
export const DEMO_CUSTOMERS = { count: 20, openingBalance: 10_000 } as const;

/** Demo stock: `sku-1`…`sku-10`, each with this many units. */
export const DEMO_STOCK = { skus: 10, units: 1_000 } as const;

export const PAYMENTS_MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-payments',
    sql: `
      create table wallets (
        customer_id text primary key,
        balance bigint not null check (balance >= 0)
      );
      -- One row per charge key: charged, refunded, or cancelled (refunded before it was charged).
      create table payments (
        key text primary key,
        order_id uuid not null,
        customer_id text not null references wallets (customer_id),
        amount bigint not null check (amount > 0),
        status text not null check (status in ('charged', 'refunded', 'cancelled')),
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
      insert into wallets (customer_id, balance)
      select 'c' || n, ${DEMO_CUSTOMERS.openingBalance} from generate_series(1, ${DEMO_CUSTOMERS.count}) as n;
    `,
  },
];

export const INVENTORY_MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-inventory',
    sql: `
      create table stock (
        sku text primary key,
        available integer not null check (available >= 0)
      );
      create table reservations (
        key text primary key,
        order_id uuid not null,
        items jsonb not null,
        status text not null check (status in ('reserved', 'released', 'cancelled')),
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
      insert into stock (sku, available)
      select 'sku-' || n, ${DEMO_STOCK.units} from generate_series(1, ${DEMO_STOCK.skus}) as n;
    `,
  },
];

export const SHIPPING_MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-shipping',
    sql: `
      create table shipments (
        key text primary key,
        order_id uuid not null,
        status text not null check (status in ('scheduled', 'cancelled')),
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
    `,
  },
];

/** A line of an order. */
export interface OrderItem {
  readonly sku: string;
  readonly qty: number;
}

/** The payments service: wallets and charges. */
export class PaymentsService {
  constructor(private readonly db: Db) {}

  /**
   * Charges a customer once per key. The row and the debit are one statement: a wallet that would
   * go negative fails the check constraint and nothing is written.
   *
   * @throws StepRejected `payment_declined` when the wallet does not hold `amount`,
   *   `unknown_customer` when there is no wallet (the foreign key refuses the row).
   * @returns the payment's status under the key: `charged`, or `cancelled` when it was refunded first.
   */
  async charge(
    key: string,
    orderId: string,
    customerId: string,
    amount: number,
  ): Promise<{ status: string }> {
    try {
      const { rows } = await this.db.query<{ status: string }>(
        `with charge as (
           insert into payments (key, order_id, customer_id, amount, status)
           values ($1, $2, $3, $4, 'charged')
           on conflict (key) do nothing
           returning status
         ), debit as (
           update wallets set balance = balance - $4
           where customer_id = $3 and exists (select 1 from charge)
           returning balance
         )
         select coalesce((select status from charge), (select status from payments where key = $1)) as status,
                (select count(*) from debit) as debited`,
        [key, orderId, customerId, amount],
      );
      return { status: rows[0]?.status ?? 'charged' };
    } catch (err) {
      if (sqlState(err) === FOREIGN_KEY_VIOLATION)
        throw new StepRejected('unknown_customer', `customer ${customerId} has no wallet`, {
          customerId,
        });
      if (sqlState(err) === CHECK_VIOLATION)
        throw new StepRejected(
          'payment_declined',
          `the wallet of ${customerId} does not hold ${amount}`,
          {
            customerId,
            amount,
          },
        );
      throw err;
    }
  }

  /**
   * Refunds the charge made under `chargeKey`, once. When no charge was made yet, leaves a
   * cancelled row under the key so that a late charge is refused.
   */
  async refund(
    chargeKey: string,
    orderId: string,
    customerId: string,
    amount: number,
  ): Promise<void> {
    await this.db.query(
      `with settled as (
         insert into payments (key, order_id, customer_id, amount, status)
         values ($1, $2, $3, $4, 'cancelled')
         on conflict (key) do update set status = 'refunded', updated_at = now()
           where payments.status = 'charged'
         returning status, customer_id, amount
       )
       update wallets w set balance = w.balance + s.amount
       from settled s
       where s.status = 'refunded' and w.customer_id = s.customer_id`,
      [chargeKey, orderId, customerId, amount],
    );
  }
}

/** One line per product: the stock update joins items to products, and a product twice would be counted once. */
export function mergeItems(items: readonly OrderItem[]): OrderItem[] {
  const bySku = new Map<string, number>();
  for (const item of items) bySku.set(item.sku, (bySku.get(item.sku) ?? 0) + item.qty);
  return [...bySku].map(([sku, qty]) => ({ sku, qty }));
}

/** The inventory service: stock and reservations. */
export class InventoryService {
  constructor(private readonly db: Db) {}

  /**
   * Reserves every item, once per key, in one statement: an unknown product writes nothing, and
   * stock that would go negative fails the check constraint, so nothing is reserved.
   *
   * @throws StepRejected `insufficient_stock` or `unknown_sku`.
   * @returns the reservation's status under the key: `reserved`, or `cancelled` when it was
   *   released first.
   */
  async reserve(
    key: string,
    orderId: string,
    lines: readonly OrderItem[],
  ): Promise<{ status: string }> {
    const items = mergeItems(lines);
    try {
      const { rows } = await this.db.query<{ unknown: string; status: string | null }>(
        `with items as (
           select * from jsonb_to_recordset($3::jsonb) as i(sku text, qty int)
         ), unknown as (
           select count(*) as n from items left join stock s using (sku) where s.sku is null
         ), reserved as (
           insert into reservations (key, order_id, items, status)
           select $1, $2, $3, 'reserved' where (select n from unknown) = 0
           on conflict (key) do nothing
           returning status
         ), taken as (
           update stock s set available = s.available - i.qty
           from items i
           where s.sku = i.sku and exists (select 1 from reserved)
           returning 1
         )
         select (select n from unknown) as unknown,
                coalesce((select status from reserved),
                         (select status from reservations where key = $1)) as status,
                (select count(*) from taken) as taken`,
        [key, orderId, JSON.stringify(items)],
      );
      if (Number(rows[0]?.unknown ?? 0) > 0)
        throw new StepRejected('unknown_sku', 'an item names a product that does not exist', {
          skus: items.map((item) => item.sku),
        });
      return { status: rows[0]?.status ?? 'reserved' };
    } catch (err) {
      if (sqlState(err) === CHECK_VIOLATION)
        throw new StepRejected('insufficient_stock', 'not enough stock for every item', {
          items,
        });
      throw err;
    }
  }

  /** Puts back what the reservation under `reserveKey` took, once; a tombstone when there was none. */
  async release(reserveKey: string, orderId: string, items: readonly OrderItem[]): Promise<void> {
    await this.db.query(
      `with released as (
         insert into reservations (key, order_id, items, status) values ($1, $2, $3, 'cancelled')
         on conflict (key) do update set status = 'released', updated_at = now()
           where reservations.status = 'reserved'
         returning status, items
       )
       update stock s set available = s.available + i.qty
       from released r, jsonb_to_recordset(r.items) as i(sku text, qty int)
       where r.status = 'released' and s.sku = i.sku`,
      [reserveKey, orderId, JSON.stringify(mergeItems(items))],
    );
  }
}

/** The shipping service. */
export class ShippingService {
  constructor(private readonly db: Db) {}

  /** Schedules a shipment once per key; refused when it was cancelled first. */
  async schedule(key: string, orderId: string): Promise<{ status: string }> {
    const { rows } = await this.db.query<{ status: string }>(
      `with scheduled as (
         insert into shipments (key, order_id, status) values ($1, $2, 'scheduled')
         on conflict (key) do nothing returning status
       )
       select coalesce((select status from scheduled), (select status from shipments where key = $1)) as status`,
      [key, orderId],
    );
    return { status: rows[0]?.status ?? 'scheduled' };
  }

  /** Cancels the shipment scheduled under `scheduleKey`, once; a tombstone when there was none. */
  async cancel(scheduleKey: string, orderId: string): Promise<void> {
    await this.db.query(
      `insert into shipments (key, order_id, status) values ($1, $2, 'cancelled')
       on conflict (key) do update set status = 'cancelled', updated_at = now()`,
      [scheduleKey, orderId],
    );
  }
}
