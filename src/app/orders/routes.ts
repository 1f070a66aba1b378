import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { Router } from 'express';
import { z } from 'zod';

import { ReplikitError } from '../../errors.js';
import { locationHeader, named, type ApiOperation } from '../../http/openapi.js';
import { parseInput } from '../../http/validation.js';
import type { Cluster } from '../../routing/index.js';
import {
  SagaError,
  type SagaDefinition,
  type SagaEngine,
  type SagaRecord,
} from '../../saga/index.js';
import type { Logger } from '../../telemetry/logger.js';
import {
  IDEMPOTENCY_HEADERS,
  idempotencyKeyHeader,
  idempotencyKeyReused,
  requestFingerprint,
} from '../idempotency.js';
import type { OrderChoreography } from './choreography.js';
import { faultSchema, type OrderInput } from './order-saga.js';

/** What the order demo needs; see {@link ordersRouter}. */
export interface OrdersOptions {
  readonly engine: Pick<SagaEngine, 'run' | 'wait' | 'get'>;
  readonly saga: SagaDefinition<OrderInput>;
  /** Routed reads of the orders database (which also holds the saga log). */
  readonly orders: Cluster;
  /** How long `POST /orders` waits for the saga before answering 202. Default 1000 ms. */
  readonly waitMs?: number;
  /** Accept `faults` in the body. Default false. */
  readonly faults?: boolean;
  /** The same flow by events (`?flow=choreography`); refused when absent. */
  readonly choreography?: Pick<OrderChoreography, 'placeOrder'>;
}

/** An order as the API shows it. */
export interface Order {
  readonly id: string;
  readonly customerId: string;
  readonly items: readonly { readonly sku: string; readonly qty: number }[];
  readonly amount: number;
  /** `pending` while its saga runs, then `confirmed` or `rejected`. */
  readonly status: 'pending' | 'confirmed' | 'rejected';
  /** Why it was rejected (`insufficient_stock`, `payment_declined`, ...). */
  readonly reason: string | null;
  /** How it was placed: `orchestration` (a saga) or `choreography` (events). */
  readonly flow: 'orchestration' | 'choreography';
  /** The saga of an orchestrated order; null for a choreographed one. */
  readonly sagaId: string | null;
  readonly sagaStatus: string | null;
}

const orderBody = z.strictObject({
  customerId: z.string().trim().min(1, 'must not be empty').max(64),
  items: z
    .array(
      z.strictObject({
        sku: z.string().trim().min(1, 'must not be empty').max(64),
        qty: z.number().int('must be a whole number').min(1).max(1000),
      }),
    )
    .min(1, 'must hold at least one item')
    .max(50, 'must hold at most 50 items'),
  amount: z.number().int('must be a whole number').min(1).max(1_000_000),
  faults: z.array(faultSchema).max(8).optional(),
});

const orderQuery = z.strictObject({
  flow: z
    .enum(['orchestration', 'choreography'], { error: 'must be orchestration or choreography' })
    .default('orchestration'),
});

const idParam = z.strictObject({ id: z.uuid('must be a UUID') });

interface OrderRow {
  id: string;
  customer_id: string;
  items: Order['items'];
  amount: string;
  status: Order['status'];
  reason: string | null;
  flow: Order['flow'];
  saga_id: string | null;
  saga_status: string | null;
}

function toOrder(row: OrderRow): Order {
  return {
    id: row.id,
    customerId: row.customer_id,
    items: row.items,
    amount: Number(row.amount),
    status: row.status,
    reason: row.reason,
    flow: row.flow,
    sagaId: row.saga_id,
    sagaStatus: row.saga_status,
  };
}

/** The order as its saga describes it, when the orders table has no row (yet, or ever). */
function fromSaga(record: SagaRecord): Order {
  const input = record.input as unknown as OrderInput;
  const status = record.state.status;
  return {
    id: input.orderId,
    customerId: input.customerId,
    items: input.items,
    amount: input.amount,
    status:
      status === 'completed' ? 'confirmed' : status === 'compensated' ? 'rejected' : 'pending',
    reason: status === 'compensated' ? (record.state.failure?.reason ?? null) : null,
    flow: 'orchestration',
    sagaId: record.id,
    sagaStatus: status,
  };
}

const ORDER_SQL = `
  select o.id, o.customer_id, o.items, o.amount::text as amount, o.status, o.reason, o.flow,
         o.saga_id, s.status as saga_status
  from orders o left join replikit_sagas s on s.id = o.saga_id
  where o.id = $1`;

/**
 * The order demo: an order runs a saga across four services (orders, inventory, payments,
 * shipping), each with a database of its own.
 *
 * - `POST /orders` `{ customerId, items: [{ sku, qty }], amount }` starts the saga. When it
 *   finishes within the wait: 201 with the {@link Order} (`confirmed`, or `rejected` with a
 *   `reason` such as `insufficient_stock` or `payment_declined`); else 202 with the order as
 *   `pending` and `Location: /sagas/<id>`. An `Idempotency-Key` header makes a retried request
 *   return the first one's order (`Idempotent-Replayed: true`) instead of placing a second; the
 *   key is the order saga's key, with a fingerprint of the request, and the same key with a
 *   different order answers 422 `IDEMPOTENCY_KEY_REUSED`. With faults enabled,
 *   `faults: [{ step, phase, action, times, ms }]` injects a failure or delay at a step.
 * - `POST /orders?flow=choreography` runs the same business flow by events: each service reacts to
 *   the previous one's event, published through its transactional outbox; 201 once the order is
 *   confirmed or rejected within the wait, else 202 (`Location: /orders/<id>`).
 * - `GET /orders/:id` → 200 {@link Order}, read through the router (read-your-writes by default).
 *
 * Demo customers are `c1`…`c20` (10,000 each); products `sku-1`…`sku-10` (1,000 units each).
 */
export function ordersRouter(options: OrdersOptions & { readonly logger: Logger }): Router {
  const { engine, saga, orders, logger } = options;
  const waitMs = options.waitMs ?? 1000;
  const router = Router();

  /** Reads the order on the primary until it settles or `waitMs` passes. */
  async function settledOrder(id: string): Promise<Order | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const { rows } = await orders.read<OrderRow & Record<string, unknown>>(ORDER_SQL, [id], {
        consistency: { level: 'strong' },
      });
      const order = rows[0] === undefined ? undefined : toOrder(rows[0]);
      if (order === undefined || order.status !== 'pending' || Date.now() >= deadline) return order;
      await sleep(Math.min(25, deadline - Date.now()));
    }
  }

  router.post('/orders', async (req, res) => {
    const { flow } = parseInput(orderQuery, req.query, 'query');
    const body = parseInput(orderBody, req.body, 'body');
    const key = parseInput(idempotencyKeyHeader, req.get(IDEMPOTENCY_HEADERS.key), 'header');
    if (body.faults !== undefined && options.faults !== true) {
      throw new ReplikitError(
        'VALIDATION_FAILED',
        'invalid body: faults: fault injection is off (start the service with REPLIKIT_DEMO_FAULTS=true)',
        { details: { issues: [{ path: 'faults', message: 'fault injection is off' }] } },
      );
    }
    const input: OrderInput = {
      orderId: randomUUID(),
      customerId: body.customerId,
      items: body.items,
      amount: body.amount,
      faults: body.faults ?? [],
    };
    if (flow === 'choreography') {
      if (options.choreography === undefined)
        throw new ReplikitError(
          'VALIDATION_FAILED',
          'invalid query: flow: choreography is not set up here',
          {
            details: { issues: [{ path: 'flow', message: 'not available' }] },
          },
        );
      if (key !== undefined || body.faults !== undefined)
        throw new ReplikitError(
          'VALIDATION_FAILED',
          'invalid request: Idempotency-Key and faults apply to the orchestrated flow only',
          { details: { issues: [{ path: 'flow', message: 'orchestration only' }] } },
        );
      await options.choreography.placeOrder({
        orderId: input.orderId,
        customerId: input.customerId,
        items: input.items,
        amount: input.amount,
      });
      const order = await settledOrder(input.orderId);
      await orders
        .write('select 1')
        .catch((err: unknown) =>
          logger.warn({ err, order: input.orderId }, 'no consistency token after placing an order'),
        );
      const settled = order !== undefined && order.status !== 'pending';
      res
        .status(settled ? 201 : 202)
        .location(`/orders/${input.orderId}`)
        .json(order);
      return;
    }
    const started =
      key === undefined
        ? await engine.run(saga, input)
        : await engine
            .run(saga, input, {
              key: `order:${key}`,
              // The parsed fields: the same order sent with other spacing or field order is the same request.
              fingerprint: requestFingerprint({
                customerId: input.customerId,
                items: JSON.stringify(input.items),
                amount: input.amount,
                faults: JSON.stringify(input.faults),
              }),
            })
            .catch((err: unknown) => {
              throw err instanceof SagaError && err.code === 'SAGA_KEY_REUSED'
                ? idempotencyKeyReused(key)
                : err;
            });
    if (!started.created) res.set(IDEMPOTENCY_HEADERS.replayed, 'true');
    const record = await engine.wait(started.id, { timeoutMs: waitMs });
    // The saga's checkpoints went through the engine's own pool, so the session has no token for
    // them: a write through the cluster takes one at or past them (one WAL for all databases).
    await orders
      .write('select 1')
      .catch((err: unknown) =>
        logger.warn({ err, saga: started.id }, 'no consistency token after placing an order'),
      );
    const settled = record.state.status === 'completed' || record.state.status === 'compensated';
    let order = fromSaga(record);
    if (settled) {
      const { rows } = await orders.read<OrderRow & Record<string, unknown>>(
        ORDER_SQL,
        [order.id],
        {
          consistency: { level: 'strong' },
        },
      );
      if (rows[0] !== undefined) order = toOrder(rows[0]);
    }
    res
      .status(settled ? 201 : 202)
      .location(settled ? `/orders/${order.id}` : `/sagas/${record.id}`)
      .json(order);
  });

  router.get('/orders/:id', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { rows } = await orders.read<OrderRow & Record<string, unknown>>(ORDER_SQL, [id]);
    const row = rows[0];
    if (row === undefined)
      throw new ReplikitError('NOT_FOUND', `no order ${id}`, { details: { id } });
    res.json(toOrder(row));
  });

  return router;
}

/** An {@link Order} as the API describes it. */
export const orderSchema = z.strictObject({
  id: z.uuid(),
  customerId: z.string(),
  items: z.array(z.strictObject({ sku: z.string(), qty: z.number().int().min(1) })),
  amount: z.number().int().min(1),
  status: z.enum(['pending', 'confirmed', 'rejected']),
  reason: z
    .string()
    .nullable()
    .describe('Why it was rejected: `insufficient_stock`, `payment_declined`, …'),
  flow: z.enum(['orchestration', 'choreography']),
  sagaId: z.uuid().nullable().describe('The saga of an orchestrated order'),
  sagaStatus: z.string().nullable(),
}) satisfies z.ZodType<Order>;

const order = named('Order', orderSchema);

/** The routes of {@link ordersRouter}, for the service's OpenAPI document. */
export const ORDERS_API: readonly ApiOperation[] = [
  {
    method: 'post',
    path: '/orders',
    operationId: 'placeOrder',
    summary: 'Place an order',
    description:
      'Runs a saga across the orders, inventory, payments and shipping services (`flow=orchestration`, the default), or the same flow by events through transactional outboxes (`flow=choreography`). A refusal (stock, payment, unknown customer or product) is an order `rejected` with its `reason`, not an error.',
    tags: ['orders'],
    session: true,
    query: orderQuery,
    headers: [
      {
        name: IDEMPOTENCY_HEADERS.key,
        description:
          "Orchestrated flow: the client's name for this order (1–200 characters); a retry answers the first order instead of placing a second.",
        schema: idempotencyKeyHeader,
      },
    ],
    body: named('OrderRequest', orderBody),
    responses: {
      201: {
        description: 'The order, settled: `confirmed` or `rejected`.',
        schema: order,
        headers: [locationHeader('`/orders/<id>`')],
      },
      202: {
        description: 'The order, still `pending` when the wait ran out.',
        schema: order,
        headers: [locationHeader('`/sagas/<id>` (orchestrated) or `/orders/<id>` (choreographed)')],
      },
    },
    problems: {
      VALIDATION_FAILED:
        'a field is missing or malformed, the flow is unknown, `faults` while fault injection is off, or `Idempotency-Key` or `faults` with the choreographed flow',
      SAGA_CLOSED: 'the service is shutting down',
    },
  },
  {
    method: 'get',
    path: '/orders/:id',
    operationId: 'getOrder',
    summary: 'Read an order',
    description: 'Routed by `X-Consistency` (read-your-writes by default).',
    tags: ['orders'],
    session: true,
    params: idParam,
    responses: { 200: { description: 'The order.', schema: order } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID',
      NOT_FOUND: 'no order has this id',
    },
  },
];
