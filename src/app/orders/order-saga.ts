import { setTimeout as sleep } from 'node:timers/promises';

import { z } from 'zod';

import type { Migration } from '../../db/migrate.js';
import {
  defineSaga,
  StepRejected,
  type SagaDefinition,
  type SagaTransaction,
  type StepContext,
} from '../../saga/index.js';
import type { InventoryService, PaymentsService, ShippingService } from './services.js';

/** The order saga's steps, in order. */
export const ORDER_STEPS = [
  'create_order',
  'reserve_stock',
  'charge_payment',
  'schedule_shipment',
] as const;

/** A step of the order saga. */
export type OrderStep = (typeof ORDER_STEPS)[number];

/**
 * A failure or delay injected at a named step, for tests and demos. Honoured only when the saga
 * was created with `faults: true`; kept in the saga's input, so it survives a crash like the rest.
 */
export const faultSchema = z.strictObject({
  step: z.enum(ORDER_STEPS),
  phase: z.enum(['run', 'compensate']).default('run'),
  /** `fail`: an error of unknown outcome (retried); `reject`: a business refusal; `delay`: a pause. */
  action: z.enum(['fail', 'reject', 'delay']),
  /** Attempts affected, from the first; default every attempt. */
  times: z.number().int().min(1).max(100).optional(),
  /** For `delay`. */
  ms: z.number().int().min(0).max(60_000).default(0),
});

export type Fault = z.infer<typeof faultSchema>;

export const orderInputSchema = z.strictObject({
  orderId: z.uuid(),
  customerId: z.string().min(1).max(64),
  items: z
    .array(
      z.strictObject({
        sku: z.string().min(1).max(64),
        qty: z.number().int().min(1).max(1000),
      }),
    )
    .min(1)
    .max(50),
  amount: z.number().int().min(1).max(1_000_000),
  faults: z.array(faultSchema).max(8).default([]),
});

/** What the order saga is started with. */
export type OrderInput = z.infer<typeof orderInputSchema>;

/** The orders service's own schema, in the database that also holds the saga log. */
export const ORDERS_MIGRATIONS: readonly Migration[] = [
  {
    id: '0001-orders',
    sql: `
      create table orders (
        id uuid primary key,
        customer_id text not null,
        items jsonb not null,
        amount bigint not null,
        status text not null check (status in ('pending', 'confirmed', 'rejected')),
        reason text,
        saga_id uuid not null,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
    `,
  },
];

/** The services the saga calls. */
export interface OrderServices {
  readonly payments: PaymentsService;
  readonly inventory: InventoryService;
  readonly shipping: ShippingService;
}

/** Options for {@link createOrderSaga}. */
export interface OrderSagaOptions {
  /** Honour the `faults` of a saga's input. Off by default: only tests and demos turn it on. */
  readonly faults?: boolean;
  /** Bound on each call to a service. Default 5000 ms. */
  readonly stepTimeoutMs?: number;
}

async function injectFault(
  enabled: boolean,
  context: StepContext<OrderInput>,
  phase: 'run' | 'compensate',
): Promise<void> {
  if (!enabled) return;
  for (const fault of context.input.faults) {
    if (fault.step !== context.step || fault.phase !== phase) continue;
    if (fault.times !== undefined && context.attempt > fault.times) continue;
    if (fault.action === 'delay') await sleep(fault.ms, undefined, { signal: context.signal });
    else if (fault.action === 'reject')
      throw new StepRejected('injected', `injected rejection at ${context.step}`);
    else
      throw new Error(`injected failure at ${context.step} (${phase}, attempt ${context.attempt})`);
  }
}

/**
 * The order fulfilment saga: create the order (a local step: the orders table shares the saga
 * log's database, so it is written exactly once with its checkpoint), reserve stock, charge the
 * payment, schedule the shipment; the order is confirmed in the transaction that completes the
 * saga. Insufficient stock or a declined payment end it compensated, the order rejected with the
 * reason.
 */
export function createOrderSaga(
  services: OrderServices,
  options: OrderSagaOptions = {},
): SagaDefinition<OrderInput> {
  const faults = options.faults ?? false;
  const timeoutMs = options.stepTimeoutMs ?? 5000;
  return defineSaga<OrderInput>({
    name: 'order',
    version: 1,
    input: orderInputSchema,
    steps: [
      {
        name: 'create_order',
        local: true,
        async run(ctx, tx) {
          await injectFault(faults, ctx, 'run');
          const { orderId, customerId, items, amount } = ctx.input;
          await tx.query(
            `insert into orders (id, customer_id, items, amount, status, saga_id)
             values ($1, $2, $3, $4, 'pending', $5)`,
            [orderId, customerId, JSON.stringify(items), amount, ctx.sagaId],
          );
          return { orderId };
        },
        async compensate(ctx, tx) {
          await injectFault(faults, ctx, 'compensate');
          await rejectOrder(tx, ctx.input.orderId, ctx.failure.reason);
        },
      },
      {
        name: 'reserve_stock',
        service: 'inventory',
        timeoutMs,
        async run(ctx) {
          await injectFault(faults, ctx, 'run');
          return services.inventory.reserve(ctx.idempotencyKey, ctx.input.orderId, ctx.input.items);
        },
        async compensate(ctx) {
          await injectFault(faults, ctx, 'compensate');
          await services.inventory.release(ctx.forwardKey, ctx.input.orderId, ctx.input.items);
        },
      },
      {
        name: 'charge_payment',
        service: 'payments',
        timeoutMs,
        async run(ctx) {
          await injectFault(faults, ctx, 'run');
          const { orderId, customerId, amount } = ctx.input;
          return services.payments.charge(ctx.idempotencyKey, orderId, customerId, amount);
        },
        async compensate(ctx) {
          await injectFault(faults, ctx, 'compensate');
          const { orderId, customerId, amount } = ctx.input;
          await services.payments.refund(ctx.forwardKey, orderId, customerId, amount);
        },
      },
      {
        name: 'schedule_shipment',
        service: 'shipping',
        timeoutMs,
        async run(ctx) {
          await injectFault(faults, ctx, 'run');
          return services.shipping.schedule(ctx.idempotencyKey, ctx.input.orderId);
        },
        async compensate(ctx) {
          await injectFault(faults, ctx, 'compensate');
          await services.shipping.cancel(ctx.forwardKey, ctx.input.orderId);
        },
      },
    ],
    async onCompleted(ctx, tx) {
      await tx.query(
        `update orders set status = 'confirmed', updated_at = now() where id = $1 and status = 'pending'`,
        [ctx.input.orderId],
      );
    },
  });
}

async function rejectOrder(tx: SagaTransaction, orderId: string, reason: string): Promise<void> {
  await tx.query(
    `update orders set status = 'rejected', reason = $2, updated_at = now() where id = $1 and status = 'pending'`,
    [orderId, reason],
  );
}
