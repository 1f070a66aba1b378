import { setTimeout as sleep } from 'node:timers/promises';

import {
  circuitBreaker,
  ConsecutiveBreaker,
  ConstantBackoff,
  handleAll,
  handleWhen,
} from 'cockatiel';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { ORDER_STEPS, type OrderInput } from '../src/app/orders/order-saga.js';
import { InventoryService, PaymentsService } from '../src/app/orders/services.js';
import {
  createSagaEngine,
  defineSaga,
  StepRejected,
  type SagaDefinition,
  type SagaEngine,
  type LocalStep,
  type RemoteStep,
  type SagaEngineOptions,
  type SagaTransaction,
  type StepEvent,
} from '../src/saga/index.js';
import {
  countBooks,
  createOrderDatabases,
  orderSagaOn,
  sampleOrder,
  type OrderDatabases,
} from './support/orders.js';
import { eventually } from './support/stack.js';

let dbs: OrderDatabases;
let saga: SagaDefinition<OrderInput>;
const engines: SagaEngine[] = [];
const events: StepEvent[] = [];

/** An engine on the test's saga log with short timings; closed after each test. */
async function engine(
  overrides: Partial<SagaEngineOptions> = {},
  definition: SagaDefinition<unknown> = saga,
): Promise<SagaEngine> {
  const created = createSagaEngine({
    database: dbs.urls.orders,
    sagas: [definition],
    leaseMs: 2000,
    pollIntervalMs: 100,
    observer: { onStep: (event) => events.push(event) },
    ...overrides,
  });
  engines.push(created);
  await created.start();
  return created;
}

/** The steps of one saga as they ran: `run:<step>` / `compensate:<step>` for each completed attempt. */
function completedOrder(sagaId: string): string[] {
  return events
    .filter((event) => event.sagaId === sagaId && event.outcome === 'completed')
    .map((event) => `${event.phase}:${event.step}`);
}

/** How many attempts of a saga's steps found their service's circuit breaker open. */
function parkedSteps(sagaId: string): number {
  return events.filter((event) => event.sagaId === sagaId && event.outcome === 'parked').length;
}

/** The saga with one remote step's functions replaced (a service made to fail, block or count). */
function withStep(
  base: SagaDefinition<OrderInput>,
  name: string,
  patch: Partial<RemoteStep<OrderInput>>,
): SagaDefinition<OrderInput> {
  return {
    ...base,
    steps: base.steps.map((step) =>
      step.name === name && step.local !== true ? { ...step, ...patch } : step,
    ),
  };
}

beforeAll(async () => {
  dbs = await createOrderDatabases('saga');
  saga = orderSagaOn(dbs.pools);
});

afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close({ timeoutMs: 2000 })));
});

afterAll(async () => {
  await dbs.drop();
});

describe('the order saga', () => {
  it('completes: every step runs once, the order is confirmed, the books balance', async () => {
    const e = await engine();
    const order = sampleOrder();
    const { id, created } = await e.run(saga, order);
    expect(created).toBe(true);
    const done = await e.wait(id, { timeoutMs: 10_000 });
    expect(done.state.status).toBe('completed');
    expect(completedOrder(id)).toEqual(ORDER_STEPS.map((step) => `run:${step}`));
    const details = await e.get(id);
    expect(details?.steps.map((s) => [s.name, s.phase, s.status, s.attempts])).toEqual(
      ORDER_STEPS.map((step) => [step, 'run', 'completed', 1]),
    );
    expect(details?.saga.state.outputs['create_order']).toEqual({ orderId: order.orderId });
    const { rows } = await dbs.pools.orders.query('select status from orders where id = $1', [
      order.orderId,
    ]);
    expect(rows).toEqual([{ status: 'confirmed' }]);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });

  it.each(ORDER_STEPS.map((step, index) => [step, index] as const))(
    'a business rejection at %s compensates the completed steps in reverse order',
    async (step, index) => {
      const e = await engine();
      const order = sampleOrder({ faults: [{ step, phase: 'run', action: 'reject', ms: 0 }] });
      const { id } = await e.run(saga, order);
      const done = await e.wait(id, { timeoutMs: 10_000 });
      expect(done.state.status).toBe('compensated');
      expect(done.state.failure).toMatchObject({ step, reason: 'injected' });
      const forward = ORDER_STEPS.slice(0, index);
      expect(completedOrder(id)).toEqual([
        ...forward.map((s) => `run:${s}`),
        ...[...forward].reverse().map((s) => `compensate:${s}`),
      ]);
      const { rows } = await dbs.pools.orders.query<{ status: string; reason: string }>(
        'select status, reason from orders where id = $1',
        [order.orderId],
      );
      // A rejection at the first step means the order was never written.
      expect(rows).toEqual(index === 0 ? [] : [{ status: 'rejected', reason: 'injected' }]);
      expect((await countBooks(dbs.pools)).problems).toEqual([]);
    },
  );

  it('a step that keeps failing is retried durably, then compensated with itself (its outcome is unknown)', async () => {
    const e = await engine();
    const order = sampleOrder({
      faults: [{ step: 'charge_payment', phase: 'run', action: 'fail', ms: 0 }],
    });
    const { id } = await e.run(saga, order);
    const done = await e.wait(id, { timeoutMs: 15_000 });
    expect(done.state.status).toBe('compensated');
    expect(done.state.failure).toMatchObject({
      step: 'charge_payment',
      reason: 'retries_exhausted',
    });
    expect(completedOrder(id)).toEqual([
      'run:create_order',
      'run:reserve_stock',
      'compensate:charge_payment',
      'compensate:reserve_stock',
      'compensate:create_order',
    ]);
    const failed = events.filter(
      (event) => event.sagaId === id && event.step === 'charge_payment' && event.phase === 'run',
    );
    expect(failed.map((event) => [event.attempt, event.outcome])).toEqual([
      [1, 'failed'],
      [2, 'failed'],
      [3, 'failed'],
    ]);
    // The refund of a charge that never happened leaves a tombstone, so a late charge is refused.
    const { rows } = await dbs.pools.payments.query(
      'select status from payments where order_id = $1',
      [order.orderId],
    );
    expect(rows).toEqual([{ status: 'cancelled' }]);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });

  it('a step that fails twice and then succeeds completes the saga, its attempts in the log', async () => {
    const e = await engine();
    const { id } = await e.run(
      saga,
      sampleOrder({
        faults: [{ step: 'reserve_stock', phase: 'run', action: 'fail', times: 2, ms: 0 }],
      }),
    );
    const done = await e.wait(id, { timeoutMs: 15_000 });
    expect(done.state.status).toBe('completed');
    const steps = (await e.get(id))?.steps ?? [];
    expect(steps.find((s) => s.name === 'reserve_stock')).toMatchObject({
      status: 'completed',
      attempts: 3,
    });
  });

  it('a compensation that fails 3 times and then succeeds ends compensated', async () => {
    const e = await engine();
    const { id } = await e.run(
      saga,
      sampleOrder({
        faults: [
          { step: 'schedule_shipment', phase: 'run', action: 'reject', ms: 0 },
          { step: 'reserve_stock', phase: 'compensate', action: 'fail', times: 3, ms: 0 },
        ],
      }),
    );
    const done = await e.wait(id, { timeoutMs: 20_000 });
    expect(done.state.status).toBe('compensated');
    const attempts = events.filter(
      (event) =>
        event.sagaId === id && event.phase === 'compensate' && event.step === 'reserve_stock',
    );
    expect(attempts.map((event) => event.outcome)).toEqual([
      'failed',
      'failed',
      'failed',
      'completed',
    ]);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });

  it('a compensation that always fails moves the saga to needs_attention; a retry finishes it', async () => {
    const finished: string[] = [];
    // The inventory service refuses releases until someone fixes it.
    let broken = true;
    class BrokenInventory extends InventoryService {
      override async release(...args: Parameters<InventoryService['release']>) {
        if (broken) throw new Error('inventory refuses releases');
        return super.release(...args);
      }
    }
    const inventory = new BrokenInventory(dbs.pools.inventory);
    const brokenSaga = withStep(saga, 'reserve_stock', {
      compensate: (ctx) => inventory.release(ctx.forwardKey, ctx.input.orderId, ctx.input.items),
    });
    const e = await engine(
      {
        observer: {
          onStep: (event) => events.push(event),
          onSagaFinished: (event) => finished.push(`${event.sagaId}:${event.outcome}`),
        },
      },
      brokenSaga,
    );
    const order = sampleOrder({
      faults: [{ step: 'charge_payment', phase: 'run', action: 'reject', ms: 0 }],
    });
    const { id } = await e.run(brokenSaga, order);
    const stuck = await e.wait(id, { timeoutMs: 30_000 });
    expect(stuck.state.status).toBe('needs_attention');
    expect(stuck.state.attention).toMatchObject({ phase: 'compensate', step: 'reserve_stock' });
    expect(finished).toContain(`${id}:needs_attention`);
    // Half undone: the order is still pending and its stock still reserved, until a person acts.
    const { rows: pending } = await dbs.pools.orders.query(
      'select status from orders where id = $1',
      [order.orderId],
    );
    expect(pending).toEqual([{ status: 'pending' }]);
    const { rows: reserved } = await dbs.pools.inventory.query(
      'select status from reservations where order_id = $1',
      [order.orderId],
    );
    expect(reserved).toEqual([{ status: 'reserved' }]);
    expect((await e.list({ status: 'needs_attention' })).map((s) => s.id)).toContain(id);

    broken = false;
    await e.retry(id);
    const done = await e.wait(id, { timeoutMs: 10_000 });
    expect(done.state.status).toBe('compensated');
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
    await expect(e.retry(id)).rejects.toMatchObject({ code: 'SAGA_INVALID_STATE' });
  });

  it('starting twice with the same key starts one saga', async () => {
    const e = await engine();
    const order = sampleOrder();
    const first = await e.run(saga, order, { key: `order:${order.orderId}` });
    const second = await e.run(saga, order, { key: `order:${order.orderId}` });
    expect(second).toEqual({ id: first.id, created: false });
    expect((await e.wait(first.id, { timeoutMs: 10_000 })).state.status).toBe('completed');
  });

  it('refuses a key started again with another fingerprint, and starts nothing', async () => {
    const e = await engine();
    const order = sampleOrder();
    const key = `order:${order.orderId}`;
    const first = await e.run(saga, order, { key, fingerprint: 'a' });
    expect(await e.run(saga, order, { key, fingerprint: 'a' })).toEqual({
      id: first.id,
      created: false,
    });
    await expect(
      e.run(saga, { ...order, amount: order.amount + 1 }, { key, fingerprint: 'b' }),
    ).rejects.toMatchObject({ code: 'SAGA_KEY_REUSED', details: { key, id: first.id } });
    // Without a fingerprint, a start asks for whatever the key started.
    expect(await e.run(saga, order, { key })).toEqual({ id: first.id, created: false });
    expect((await e.wait(first.id, { timeoutMs: 10_000 })).state.status).toBe('completed');
  });

  it('refuses input that does not match the saga', async () => {
    const e = await engine();
    await expect(e.run(saga, { ...sampleOrder(), amount: -1 })).rejects.toMatchObject({
      code: 'SAGA_INVALID_INPUT',
    });
  });

  it('compensating a running saga stops it and undoes the step in progress too', async () => {
    const e = await engine();
    const order = sampleOrder({
      faults: [{ step: 'schedule_shipment', phase: 'run', action: 'delay', ms: 30_000 }],
    });
    const { id } = await e.run(saga, order);
    // Its intent is recorded: the saga is at the shipment step, which now waits in its delay.
    await eventually(async () =>
      (await e.get(id))?.saga.state.stepIndex === 3 ? true : undefined,
    );
    await e.compensate(id);
    const done = await e.wait(id, { timeoutMs: 10_000 });
    expect(done.state.status).toBe('compensated');
    expect(done.state.failure).toMatchObject({
      step: 'schedule_shipment',
      reason: 'compensation_requested',
    });
    const compensations = (await e.get(id))?.steps
      .filter((s) => s.phase === 'compensate')
      .map((s) => s.name)
      .sort();
    expect(compensations).toEqual([...ORDER_STEPS].sort());
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
    await expect(e.compensate(id)).rejects.toMatchObject({ code: 'SAGA_INVALID_STATE' });
  });
});

describe('leases', () => {
  it('a process that lost its lease cannot write a checkpoint (fencing)', async () => {
    const fenced: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let calls = 0;
    // Service calls of the zombie block until released; those of the process that takes over do not.
    class HeldPayments extends PaymentsService {
      override async charge(...args: Parameters<PaymentsService['charge']>) {
        calls++;
        if (calls === 1) await held;
        return super.charge(...args);
      }
    }
    const payments = new HeldPayments(dbs.pools.payments);
    const zombieSaga = withStep(saga, 'charge_payment', {
      run: (ctx) =>
        payments.charge(
          ctx.idempotencyKey,
          ctx.input.orderId,
          ctx.input.customerId,
          ctx.input.amount,
        ),
    });
    // A long lease: the zombie's own renewals must not be what saves it.
    const zombie = await engine(
      {
        leaseMs: 60_000,
        observer: { onFenced: (e) => fenced.push(e.saga), onStep: (e) => events.push(e) },
      },
      zombieSaga,
    );
    const { id } = await zombie.run(zombieSaga, sampleOrder());
    await eventually(() => (calls === 1 ? true : undefined));
    // The zombie stalls past its lease (as after a long pause): end the lease in the database.
    await dbs.pools.orders.query(
      `update replikit_sagas set lease_until = now() - interval '1 second' where id = $1`,
      [id],
    );
    const successor = await engine({}, zombieSaga);
    await successor.poll();
    const done = await successor.wait(id, { timeoutMs: 10_000 });
    expect(done.state.status).toBe('completed');
    expect(done.epoch).toBe(2);
    release();
    await eventually(() => (fenced.length === 1 ? true : undefined));
    const after = await successor.get(id);
    expect(after?.saga.state.status).toBe('completed');
    expect(after?.saga.epoch).toBe(2);
    // Its charge ran twice (at least once is the contract for a remote step) but charged once.
    expect(calls).toBe(2);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });
});

describe('a local step with a timeout', () => {
  /** A saga of one local step that times out after 200 ms and may try twice. */
  function slowLocal(name: string, run: LocalStep<{ readonly n: number }>['run']) {
    return defineSaga<{ readonly n: number }>({
      name,
      version: 1,
      steps: [
        {
          name: 'effect',
          local: true,
          timeoutMs: 200,
          retry: { maxAttempts: 2, backoff: new ConstantBackoff(50) },
          run,
          compensate: () => Promise.resolve(),
        },
      ],
    });
  }

  it('has its effect once: the attempt that timed out commits nothing, and its client refuses queries after the timeout', async () => {
    await dbs.pools.orders.query(
      'create table if not exists local_effects (saga_id uuid not null, attempt int not null)',
    );
    let late: { readonly error: unknown; readonly aborted: boolean } | undefined;
    const effect = (tx: SagaTransaction, sagaId: string, attempt: number) =>
      tx.query('insert into local_effects (saga_id, attempt) values ($1, $2)', [sagaId, attempt]);
    const slow = slowLocal('slow_local', async (ctx, tx) => {
      await effect(tx, ctx.sagaId, ctx.attempt);
      if (ctx.attempt > 1) return;
      // The first attempt outlives its timeout without watching its signal (as code that awaits
      // something slow does), then writes again: neither write may survive.
      await sleep(600);
      try {
        await effect(tx, ctx.sagaId, ctx.attempt);
        late = { error: undefined, aborted: ctx.signal.aborted };
      } catch (error) {
        late = { error, aborted: ctx.signal.aborted };
      }
    });
    const e = await engine({}, slow);
    const { id } = await e.run(slow, { n: 1 });
    const done = await e.wait(id, { timeoutMs: 10_000 });
    expect(done.state.status).toBe('completed');
    const settled = await eventually(() => late);
    const { rows } = await dbs.pools.orders.query<{ attempt: number }>(
      'select attempt from local_effects where saga_id = $1 order by attempt',
      [id],
    );
    expect(rows).toEqual([{ attempt: 2 }]);
    expect(settled.aborted).toBe(true);
    expect(settled.error).toMatchObject({ code: 'SAGA_STEP_ABANDONED' });
  });

  it('a statement still running when its attempt is abandoned is stopped by the server within the timeout', async () => {
    const slow = slowLocal('stuck_local', async (ctx, tx) => {
      if (ctx.attempt === 1) await tx.query(`select pg_sleep(30) /* ${ctx.sagaId} */`);
    });
    const e = await engine({}, slow);
    const { id } = await e.run(slow, { n: 1 });
    expect((await e.wait(id, { timeoutMs: 10_000 })).state.status).toBe('completed');
    const running = () =>
      dbs.pools.orders.query(
        `select 1 from pg_stat_activity where query like 'select pg_sleep(30) /* ' || $1 || ' */'`,
        [id],
      );
    // Without a server-side bound the orphaned statement would sleep on for half a minute.
    await eventually(async () => ((await running()).rowCount === 0 ? true : undefined), 5000);
  });
});

describe('circuit breaker', () => {
  /**
   * The order saga with a payments service that fails while `outage.down` (it starts down), its
   * charge tried `maxAttempts` times `backoffMs` apart.
   */
  function flakyPayments(maxAttempts: number, backoffMs: number) {
    const outage = { down: true };
    class FlakyPayments extends PaymentsService {
      override async charge(...args: Parameters<PaymentsService['charge']>) {
        if (outage.down) throw new Error('payments unavailable');
        return super.charge(...args);
      }
    }
    const flaky = new FlakyPayments(dbs.pools.payments);
    const definition = withStep(saga, 'charge_payment', {
      retry: { maxAttempts, backoff: new ConstantBackoff(backoffMs) },
      run: (ctx) =>
        flaky.charge(ctx.idempotencyKey, ctx.input.orderId, ctx.input.customerId, ctx.input.amount),
    });
    return { outage, saga: definition };
  }

  /** Six orders while payments is down for two seconds; the charge step may try 5 times, 100 ms apart. */
  async function ordersDuringOutage(services: SagaEngineOptions['services']) {
    const { outage, saga: flakySaga } = flakyPayments(5, 100);
    const e = await engine({ services }, flakySaga);
    const ids = await Promise.all(
      Array.from({ length: 6 }, () => e.run(flakySaga, sampleOrder()).then((r) => r.id)),
    );
    await sleep(2000);
    outage.down = false;
    const done = await Promise.all(ids.map((id) => e.wait(id, { timeoutMs: 20_000 })));
    const mine = events.filter(
      (event) => ids.includes(event.sagaId) && event.step === 'charge_payment',
    );
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
    return {
      statuses: done.map((saga) => saga.state.status),
      parked: mine.filter((event) => event.outcome === 'parked').length,
    };
  }

  it('parks steps while the breaker is open instead of burning their retries', async () => {
    const { statuses, parked } = await ordersDuringOutage({
      payments: {
        breaker: circuitBreaker(handleAll, {
          halfOpenAfter: 500,
          breaker: new ConsecutiveBreaker(2),
        }),
        parkMs: 500,
      },
    });
    expect(parked).toBeGreaterThan(0);
    expect(statuses).toEqual(statuses.map(() => 'completed'));
  });

  it('control: with a breaker that never opens, the same outage exhausts the retries and compensates', async () => {
    const { statuses, parked } = await ordersDuringOutage({
      payments: {
        breaker: circuitBreaker(handleAll, {
          halfOpenAfter: 500,
          breaker: new ConsecutiveBreaker(1_000_000),
        }),
      },
    });
    expect(parked).toBe(0);
    expect(statuses).toEqual(statuses.map(() => 'compensated'));
  });

  it('a refusal is an answer: five declined orders in a row leave the default breaker closed, and the next order is not parked', async () => {
    const e = await engine();
    for (let i = 0; i < 5; i++) {
      const { id } = await e.run(saga, sampleOrder({ customerId: 'nobody' }));
      const refused = await e.wait(id, { timeoutMs: 10_000 });
      expect(refused.state.failure).toMatchObject({
        step: 'charge_payment',
        reason: 'unknown_customer',
      });
    }
    const { id } = await e.run(saga, sampleOrder());
    const done = await e.wait(id, { timeoutMs: 10_000 });
    expect(parkedSteps(id)).toBe(0);
    expect(done.state.status).toBe('completed');
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });

  it('control: five real failures in a row open the same default breaker, and the next order parks until a trial succeeds', async () => {
    const { outage, saga: flakySaga } = flakyPayments(6, 20);
    const e = await engine({}, flakySaga);
    // Five failed attempts of one order open the breaker; its sixth attempt is parked.
    const first = await e.run(flakySaga, sampleOrder());
    await eventually(() => (parkedSteps(first.id) > 0 ? true : undefined));
    outage.down = false;
    const next = await e.run(flakySaga, sampleOrder());
    await eventually(() => (parkedSteps(next.id) > 0 ? true : undefined));
    const done = await Promise.all(
      [first.id, next.id].map((id) => e.wait(id, { timeoutMs: 20_000 })),
    );
    expect(done.map((s) => s.state.status)).toEqual(['completed', 'completed']);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });

  it('a half-open trial that the service answers, even with a refusal, resumes every step parked on it at once', async () => {
    const { outage, saga: flakySaga } = flakyPayments(3, 20);
    // Parked steps would sleep a minute: only the breaker closing can wake them within the test.
    const e = await engine(
      {
        services: {
          payments: {
            breaker: circuitBreaker(
              handleWhen((err) => !(err instanceof StepRejected)),
              { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(1) },
            ),
            parkMs: 60_000,
          },
        },
      },
      flakySaga,
    );
    const failing = await e.run(flakySaga, sampleOrder());
    await eventually(() => (parkedSteps(failing.id) > 0 ? true : undefined));
    outage.down = false;
    // Mostly refusals waiting, as when declines dominate the load, and two orders that can pay.
    const waiting = await Promise.all(
      [
        sampleOrder({ customerId: 'nobody' }),
        sampleOrder({ customerId: 'nobody' }),
        sampleOrder({ customerId: 'nobody' }),
        sampleOrder(),
        sampleOrder(),
      ].map((order) => e.run(flakySaga, order).then((r) => r.id)),
    );
    // Each waits on the open breaker, unless on a slow machine it came after halfOpenAfter and
    // was itself the trial the service answered.
    const answered = (id: string): boolean =>
      events.some(
        (event) =>
          event.sagaId === id && event.step === 'charge_payment' && event.outcome !== 'parked',
      );
    await eventually(() =>
      waiting.every((id) => parkedSteps(id) > 0 || answered(id)) ? true : undefined,
    );
    await sleep(1100);
    // The trial after halfOpenAfter is a refusal: the service answered, so the breaker closes.
    const trial = await e.run(flakySaga, sampleOrder({ customerId: 'nobody' }));
    expect((await e.wait(trial.id, { timeoutMs: 10_000 })).state.status).toBe('compensated');
    const done = await Promise.all(
      [failing.id, ...waiting].map((id) => e.wait(id, { timeoutMs: 10_000 })),
    );
    expect(done.map((s) => s.state.status)).toEqual([
      'completed',
      'compensated',
      'compensated',
      'compensated',
      'completed',
      'completed',
    ]);
    expect((await countBooks(dbs.pools)).problems).toEqual([]);
  });
});
