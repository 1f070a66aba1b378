import type pg from 'pg';

import { inTransaction } from '../../db/checkout.js';
import type { Migration } from '../../db/migrate.js';
import {
  createConsumer,
  createRelay,
  enqueue,
  type Consumer,
  type ConsumerObserver,
  type MessageHandler,
  type Relay,
  type RelayObserver,
  type Transport,
} from '../../messaging/index.js';
import { StepRejected } from '../../saga/index.js';
import type { Logger } from '../../telemetry/logger.js';
import { InventoryService, PaymentsService, ShippingService, type OrderItem } from './services.js';

/**
 * The events of the choreographed order flow. Each service reacts to the one before it and
 * publishes the next through its own outbox, in the transaction of its own change:
 *
 * ```text
 * orders.placed ──▶ inventory ──▶ inventory.reserved ──▶ payments ──▶ payments.charged ──▶ shipping ──▶ shipping.scheduled ──▶ orders (confirmed)
 *                        └──▶ inventory.rejected ──▶ orders (rejected)      └──▶ payments.declined ──▶ orders (rejected), inventory (release)
 * ```
 */
export const ORDER_TOPICS = {
  placed: 'orders.placed',
  stockReserved: 'inventory.reserved',
  stockRejected: 'inventory.rejected',
  paymentCharged: 'payments.charged',
  paymentDeclined: 'payments.declined',
  shipmentScheduled: 'shipping.scheduled',
} as const;

/** What every event of the flow carries: the order, and why it was refused when it was. */
export interface OrderEvent {
  readonly orderId: string;
  readonly customerId: string;
  readonly items: readonly OrderItem[];
  readonly amount: number;
  readonly reason?: string;
}

/** The orders table learns which flow placed an order; a choreographed one has no saga. */
export const ORDERS_FLOW_MIGRATIONS: readonly Migration[] = [
  {
    id: '0002-orders-flow',
    sql: `
      alter table orders add column flow text not null default 'orchestration'
        check (flow in ('orchestration', 'choreography'));
      alter table orders alter column saga_id drop not null;
    `,
  },
];

/** Each service's database (pools; the flow's consumers write in transactions of their own). */
export interface OrderDatabases {
  readonly orders: pg.Pool;
  readonly payments: pg.Pool;
  readonly inventory: pg.Pool;
  readonly shipping: pg.Pool;
}

/** Options for {@link createOrderChoreography}. */
export interface OrderChoreographyOptions {
  readonly databases: OrderDatabases;
  readonly transport: Transport;
  readonly logger?: Logger;
  readonly relayObserver?: RelayObserver;
  readonly consumerObserver?: ConsumerObserver;
}

/** The running flow: one relay per service's outbox, one consumer per service. */
export interface OrderChoreography {
  /**
   * Writes a pending order and its `orders.placed` event in one transaction of the orders
   * database: the flow starts if and only if the order exists.
   */
  placeOrder(order: OrderEvent): Promise<void>;
  /** The relays, for their backlog gauges. */
  readonly relays: readonly Relay[];
  start(): Promise<void>;
  close(): Promise<void>;
}

/** Runs `work` under a savepoint: a business refusal undoes only its own writes and is returned. */
async function refusable<T>(tx: pg.PoolClient, work: () => Promise<T>): Promise<T | StepRejected> {
  await tx.query('savepoint refusable');
  try {
    const result = await work();
    await tx.query('release savepoint refusable');
    return result;
  } catch (err) {
    await tx.query('rollback to savepoint refusable');
    if (err instanceof StepRejected) return err;
    throw err;
  }
}

/** The idempotency key of a step of an order, the same as the orchestrated flow's. */
const keyOf = (order: OrderEvent, step: string): string => `${order.orderId}/${step}`;

/**
 * The order flow by events instead of an orchestrator: the same services, the same business
 * outcomes (and the same idempotency keys), no central saga log. Each consumer handles a message
 * in one transaction with its inbox row and the events it publishes, so its effect happens once
 * however often the message is delivered.
 */
export function createOrderChoreography(options: OrderChoreographyOptions): OrderChoreography {
  const { databases, transport } = options;
  const publish = (tx: pg.PoolClient, topic: string, order: OrderEvent): Promise<string[]> =>
    enqueue(tx, { topic, key: order.orderId, payload: order });

  const inventory: MessageHandler<OrderEvent> = async (message, tx) => {
    const order = message.payload;
    const service = new InventoryService(tx);
    if (message.topic === ORDER_TOPICS.paymentDeclined) {
      await service.release(keyOf(order, 'reserve_stock'), order.orderId, order.items);
      return;
    }
    const reserved = await refusable(tx, () =>
      service.reserve(keyOf(order, 'reserve_stock'), order.orderId, order.items),
    );
    if (reserved instanceof StepRejected)
      await publish(tx, ORDER_TOPICS.stockRejected, { ...order, reason: reserved.reason });
    else await publish(tx, ORDER_TOPICS.stockReserved, order);
  };

  const payments: MessageHandler<OrderEvent> = async (message, tx) => {
    const order = message.payload;
    const charged = await refusable(tx, () =>
      new PaymentsService(tx).charge(
        keyOf(order, 'charge_payment'),
        order.orderId,
        order.customerId,
        order.amount,
      ),
    );
    if (charged instanceof StepRejected)
      await publish(tx, ORDER_TOPICS.paymentDeclined, { ...order, reason: charged.reason });
    else await publish(tx, ORDER_TOPICS.paymentCharged, order);
  };

  const shipping: MessageHandler<OrderEvent> = async (message, tx) => {
    const order = message.payload;
    await new ShippingService(tx).schedule(keyOf(order, 'schedule_shipment'), order.orderId);
    await publish(tx, ORDER_TOPICS.shipmentScheduled, order);
  };

  const orders: MessageHandler<OrderEvent> = async (message, tx) => {
    const order = message.payload;
    const confirmed = message.topic === ORDER_TOPICS.shipmentScheduled;
    await tx.query(
      `update orders set status = $2, reason = $3, updated_at = now()
       where id = $1 and status = 'pending'`,
      [
        order.orderId,
        confirmed ? 'confirmed' : 'rejected',
        confirmed ? null : (order.reason ?? null),
      ],
    );
  };

  const common = {
    transport,
    ...(options.logger === undefined ? {} : { logger: options.logger }),
    ...(options.consumerObserver === undefined ? {} : { observer: options.consumerObserver }),
  };
  const consumers: Consumer<OrderEvent>[] = [
    createConsumer<OrderEvent>({
      ...common,
      database: databases.inventory,
      group: 'inventory',
      topics: [ORDER_TOPICS.placed, ORDER_TOPICS.paymentDeclined],
      handler: inventory,
    }),
    createConsumer<OrderEvent>({
      ...common,
      database: databases.payments,
      group: 'payments',
      topics: [ORDER_TOPICS.stockReserved],
      handler: payments,
    }),
    createConsumer<OrderEvent>({
      ...common,
      database: databases.shipping,
      group: 'shipping',
      topics: [ORDER_TOPICS.paymentCharged],
      handler: shipping,
    }),
    createConsumer<OrderEvent>({
      ...common,
      database: databases.orders,
      group: 'orders',
      topics: [
        ORDER_TOPICS.stockRejected,
        ORDER_TOPICS.paymentDeclined,
        ORDER_TOPICS.shipmentScheduled,
      ],
      handler: orders,
    }),
  ];
  const relays = (Object.entries(databases) as [keyof OrderDatabases, pg.Pool][]).map(
    ([name, database]) =>
      createRelay({
        database,
        transport,
        name,
        ...(options.logger === undefined ? {} : { logger: options.logger }),
        ...(options.relayObserver === undefined ? {} : { observer: options.relayObserver }),
      }),
  );

  return {
    relays,
    async placeOrder(order) {
      await inTransaction(databases.orders, async (client) => {
        await client.query(
          `insert into orders (id, customer_id, items, amount, status, flow)
           values ($1, $2, $3, $4, 'pending', 'choreography')`,
          [order.orderId, order.customerId, JSON.stringify(order.items), order.amount],
        );
        await publish(client, ORDER_TOPICS.placed, order);
      });
    },
    async start() {
      // Consumers first: a group receives the messages published after it first subscribed.
      for (const consumer of consumers) await consumer.start();
      for (const relay of relays) await relay.start();
    },
    async close() {
      await Promise.all(relays.map((relay) => relay.close()));
      await Promise.all(consumers.map((consumer) => consumer.close()));
    },
  };
}
