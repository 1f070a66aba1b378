import { context, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ConstantBackoff } from 'cockatiel';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  createConsumer,
  createRelay,
  enqueue,
  type Consumer,
  type ConsumerOptions,
  type OutgoingMessage,
  type Relay,
  type Subscription,
  type Transport,
} from '../../src/messaging/index.js';
import { commitTransaction } from '../../src/db/checkout.js';
import { parseLsn } from '../../src/routing/lsn.js';
import { currentSession } from '../../src/routing/session.js';
import { createTestDatabase, eventually, type TestDatabase } from './stack.js';

/** One transport implementation, as the contract drives it. */
export interface TransportFixture {
  /** A new transport on the same broker: another process's view of it. Closed by the contract. */
  transport(): Transport;
  /** Stores `message` once more, past any publish-side deduplication, as a redelivery would. */
  duplicate(message: OutgoingMessage): Promise<void>;
  /** Removes what the fixture created on the broker. */
  cleanup(): Promise<void>;
}

/** Finds per-key losses, duplicates and reorderings in what a consumer saw, against what was sent. */
export function orderViolations(
  sent: ReadonlyMap<string, readonly number[]>,
  seen: readonly { key: string; seq: number }[],
): string[] {
  const byKey = new Map<string, number[]>();
  for (const { key, seq } of seen) {
    const list = byKey.get(key) ?? [];
    list.push(seq);
    byKey.set(key, list);
  }
  const problems: string[] = [];
  for (const [key, expected] of sent) {
    const got = byKey.get(key) ?? [];
    if (got.join(',') !== expected.join(','))
      problems.push(`${key}: expected ${expected.join(',')} got ${got.join(',')}`);
  }
  for (const key of byKey.keys()) if (!sent.has(key)) problems.push(`${key}: never sent`);
  return problems;
}

let counter = 0;
/** A name unique to this run, for topics and groups. */
export function unique(prefix: string): string {
  counter++;
  return `${prefix}${counter}x${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * The behaviour every transport must show with the outbox, relay and inbox: run it inside a
 * `describe` of each transport's test file.
 */
export function messagingContract(
  makeFixture: (producer: TestDatabase) => Promise<TransportFixture>,
): void {
  let producer: TestDatabase;
  let consumerDb: TestDatabase;
  let producerPool: pg.Pool;
  let consumerPool: pg.Pool;
  let fixture: TransportFixture;
  const closers: (() => Promise<void>)[] = [];
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = provider.getTracer('messaging-contract');

  const transport = (): Transport => {
    const created = fixture.transport();
    closers.push(() => created.close());
    return created;
  };
  const relay = (name: string, t: Transport, batchSize = 50): Relay => {
    const created = createRelay({
      database: producer.primaryUrl,
      transport: t,
      name,
      batchSize,
      pollIntervalMs: 100,
      tracer,
    });
    closers.push(() => created.close());
    return created;
  };
  const consumer = <P>(options: Omit<ConsumerOptions<P>, 'database'>): Consumer<P> => {
    const created = createConsumer<P>({ database: consumerDb.primaryUrl, tracer, ...options });
    closers.push(() => created.close());
    return created;
  };
  /** A raw subscriber without an inbox: counts every delivery it gets. */
  const rawSubscriber = async (
    t: Transport,
    group: string,
    topics: string[],
  ): Promise<{ deliveries: OutgoingMessage[]; subscription: Subscription }> => {
    const deliveries: OutgoingMessage[] = [];
    const subscription = await t.subscribe({
      group,
      topics,
      handle: async ({ message }) => {
        deliveries.push(message);
        // The effect a consumer without an inbox would apply on every delivery.
        await consumerPool.query('insert into control_effects (message_id) values ($1)', [
          message.id,
        ]);
        return { action: 'ack' };
      },
    });
    closers.push(() => subscription.close());
    return { deliveries, subscription };
  };
  /** Writes a business row and its message in one transaction of the producer. */
  const placeOrder = async (
    key: string,
    seq: number,
    topic: string,
    commit = true,
  ): Promise<{ id: string; lsnBeforeCommit: bigint }> => {
    const client = await producerPool.connect();
    try {
      await client.query('begin');
      await client.query('insert into orders (key, seq) values ($1, $2)', [key, seq]);
      const [id] = await enqueue(client, { topic, key, payload: { key, seq } });
      const { rows } = await client.query<{ lsn: string }>(
        'select pg_current_wal_insert_lsn()::text as lsn',
      );
      await (commit ? commitTransaction(client) : client.query('rollback'));
      return { id: id!, lsnBeforeCommit: parseLsn(rows[0]!.lsn)! };
    } finally {
      client.release();
    }
  };

  beforeAll(async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    [producer, consumerDb] = await Promise.all([
      createTestDatabase('msg_producer'),
      createTestDatabase('msg_consumer'),
    ]);
    producerPool = new pg.Pool({ connectionString: producer.primaryUrl, max: 20 });
    consumerPool = new pg.Pool({ connectionString: consumerDb.primaryUrl, max: 10 });
    await producerPool.query(
      'create table orders (id bigint generated always as identity primary key, key text, seq int)',
    );
    await consumerPool.query(
      `create table effects (id bigint generated always as identity primary key, message_id uuid, key text, seq int);
       create table control_effects (id bigint generated always as identity primary key, message_id uuid)`,
    );
    fixture = await makeFixture(producer);
  });

  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    // Each test drains its own messages; what one left behind must not reach the next.
    await producerPool.query('delete from replikit_outbox').catch(() => undefined);
    exporter.reset();
  });

  afterAll(async () => {
    await fixture?.cleanup();
    await producerPool?.end();
    await consumerPool?.end();
    await Promise.all([producer?.drop(), consumerDb?.drop()]);
    propagation.disable();
    context.disable();
    await provider.shutdown();
  });

  describe('contract', () => {
    it('writes the message if and only if the business transaction commits', async () => {
      const topic = unique('orders.placed');
      const t = transport();
      const raw = await rawSubscriber(t, unique('g'), [topic]);
      const r = relay('iff', t);
      await r.start();
      const rolledBack = await placeOrder('k-rollback', 1, topic, false);
      expect(
        (await producerPool.query('select 1 from replikit_outbox where id = $1', [rolledBack.id]))
          .rowCount,
      ).toBe(0);
      const committed = await placeOrder('k-commit', 1, topic, true);
      // Control: the harness sees a committed message arrive, so it would see the other one too.
      await eventually(() =>
        raw.deliveries.some((m) => m.id === committed.id) ? true : undefined,
      );
      await r.flush();
      expect(raw.deliveries.map((m) => m.id)).toEqual([committed.id]);
      expect((await producerPool.query('select key from orders')).rows).toContainEqual({
        key: 'k-commit',
      });
      expect(
        (await producerPool.query("select 1 from orders where key = 'k-rollback'")).rowCount,
      ).toBe(0);
      await eventually(async () => ((await r.refreshStats()).pending === 0 ? true : undefined));
    });

    it('deduplicates a second delivery of a message in the inbox; without it the effect happens twice', async () => {
      const topic = unique('orders.placed');
      const t = transport();
      const group = unique('inbox');
      const duplicates: string[] = [];
      const c = consumer<{ key: string; seq: number }>({
        transport: t,
        group,
        topics: [topic],
        handler: async (message, tx) => {
          await tx.query('insert into effects (message_id, key, seq) values ($1, $2, $3)', [
            message.id,
            message.payload.key,
            message.payload.seq,
          ]);
        },
        observer: { onDuplicate: (event) => duplicates.push(event.messageId) },
      });
      await c.start();
      const raw = await rawSubscriber(t, unique('noinbox'), [topic]);
      await relay('dup', t).start();
      const { id } = await placeOrder('k-dup', 1, topic);
      const effects = async (): Promise<number> =>
        (await consumerPool.query('select 1 from effects where message_id = $1', [id])).rowCount ??
        0;
      await eventually(async () =>
        (await effects()) === 1 && raw.deliveries.length === 1 ? true : undefined,
      );

      await fixture.duplicate(raw.deliveries[0]!);
      await eventually(() =>
        raw.deliveries.length === 2 && duplicates.length === 1 ? true : undefined,
      );
      expect(duplicates).toEqual([id]);
      expect(await effects()).toBe(1);
      // The control: the same two deliveries, applied without an inbox, took effect twice.
      const control = await consumerPool.query(
        'select 1 from control_effects where message_id = $1',
        [id],
      );
      expect(control.rowCount).toBe(2);
    });

    it('loses and reorders no key’s messages when the relay is killed and restarted, with two relays and two consumers', async () => {
      const topic = unique('orders.placed');
      const group = unique('order');
      const keys = 12;
      const perKey = 15;
      const sent = new Map<string, number[]>();
      const seen: { key: string; seq: number }[] = [];
      const handler: ConsumerOptions<{ key: string; seq: number }>['handler'] = async (
        message,
        tx,
      ) => {
        await tx.query('insert into effects (message_id, key, seq) values ($1, $2, $3)', [
          message.id,
          message.payload.key,
          message.payload.seq,
        ]);
        seen.push(message.payload);
      };
      // Two consumer processes of one group, each with a transport of its own.
      for (let i = 0; i < 2; i++)
        await consumer({ transport: transport(), group, topics: [topic], handler }).start();

      let batches = 0;
      let killed = false;
      const inner = transport();
      // Kills the first relay's connection while it is publishing its third batch: the transport
      // stores the batch, the relay cannot delete it, and the next relay publishes it again.
      const killing: Transport = {
        kind: inner.kind,
        publish: async (messages, signal) => {
          batches++;
          if (batches === 3 && !killed) {
            killed = true;
            await producerPool.query(
              "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'replikit-relay-first' and datname = current_database()",
            );
          }
          return inner.publish(messages, signal);
        },
        subscribe: (options) => inner.subscribe(options),
        close: () => inner.close(),
      };
      const first = relay('first', killing, 5);
      await first.start();

      const produce = async (from: number, to: number): Promise<void> => {
        // One writer per key (so each key's order is defined), keys written concurrently.
        await Promise.all(
          Array.from({ length: keys }, async (_, k) => {
            const key = `key-${k}`;
            for (let seq = from; seq <= to; seq++) {
              await placeOrder(key, seq, topic);
              sent.set(key, [...(sent.get(key) ?? []), seq]);
            }
          }),
        );
      };
      await produce(1, 8);
      await eventually(() => (killed ? true : undefined));
      await first.close();
      const publishedBeforeRestart = seen.length;
      // Two relays on one outbox from now on.
      await relay('second', transport(), 7).start();
      await relay('third', transport(), 7).start();
      await produce(9, perKey);

      await eventually(() => (seen.length >= keys * perKey ? true : undefined), 30_000);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(publishedBeforeRestart).toBeLessThan(keys * perKey);
      expect(orderViolations(sent, seen)).toEqual([]);
      const effects = await consumerPool.query<{ key: string; seq: number }>(
        'select key, seq from effects where key like $1 order by id',
        ['key-%'],
      );
      expect(orderViolations(sent, effects.rows)).toEqual([]);
      // The check would catch a swap, a loss and a duplicate.
      const swapped = [...seen];
      const a = swapped.findIndex((s) => s.key === 'key-0' && s.seq === 1);
      const b = swapped.findIndex((s) => s.key === 'key-0' && s.seq === 2);
      [swapped[a], swapped[b]] = [swapped[b]!, swapped[a]!];
      expect(orderViolations(sent, swapped)).toHaveLength(1);
      expect(orderViolations(sent, seen.slice(1))).not.toEqual([]);
      expect(orderViolations(sent, [...seen, seen[0]!])).not.toEqual([]);
    }, 60_000);

    it('retries a failing handler with backoff, holding back its key, then succeeds; parks one that always fails', async () => {
      const topic = unique('orders.placed');
      const attempts = new Map<number, number[]>();
      const order: number[] = [];
      const retries: number[] = [];
      const dead: string[] = [];
      const c = consumer<{ key: string; seq: number }>({
        transport: transport(),
        group: unique('retry'),
        topics: [topic],
        maxAttempts: 4,
        backoff: new ConstantBackoff(30),
        handler: async (message, tx) => {
          const { seq, key } = message.payload;
          attempts.set(seq, [...(attempts.get(seq) ?? []), message.attempt]);
          await tx.query('insert into effects (message_id, key, seq) values ($1, $2, $3)', [
            message.id,
            key,
            seq,
          ]);
          if (seq === 1 && message.attempt < 3) throw new Error(`flaky ${message.attempt}`);
          if (seq === 3) throw new Error('always fails');
          order.push(seq);
        },
        observer: {
          onRetry: (event) => retries.push(event.attempt),
          onDeadLetter: (event) => dead.push(event.messageId),
        },
      });
      await c.start();
      await relay('retry', transport()).start();
      await placeOrder('k-retry', 1, topic);
      await placeOrder('k-retry', 2, topic);
      const poisoned = await placeOrder('k-retry', 3, topic);
      await placeOrder('k-retry', 4, topic);
      await eventually(() => (order.length === 3 && dead.length === 1 ? true : undefined), 20_000);
      expect(order).toEqual([1, 2, 4]);
      expect(attempts.get(1)).toEqual([1, 2, 3]);
      expect(attempts.get(3)).toEqual([1, 2, 3, 4]);
      expect(retries).toEqual([1, 2, 1, 2, 3]);
      expect(dead).toEqual([poisoned.id]);
      const letters = await c.deadLetters();
      expect(letters.map((l) => [l.messageId, l.attempts, l.payload])).toEqual([
        [poisoned.id, 4, { key: 'k-retry', seq: 3 }],
      ]);
      expect(letters[0]!.error).toContain('always fails');
      // Failed attempts rolled back their effects: one row per handled message, none for the dead one.
      const effects = await consumerPool.query<{ seq: number }>(
        "select seq from effects where key = 'k-retry' order by id",
      );
      expect(effects.rows.map((r) => r.seq)).toEqual([1, 2, 4]);
    });

    it('retries a handler that caught a failed statement, whose transaction PostgreSQL rolled back', async () => {
      const topic = unique('orders.placed');
      const attempts: number[] = [];
      const c = consumer<{ key: string; seq: number }>({
        transport: transport(),
        group: unique('swallow'),
        topics: [topic],
        maxAttempts: 3,
        backoff: new ConstantBackoff(30),
        handler: async (message, tx) => {
          const { seq, key } = message.payload;
          attempts.push(message.attempt);
          await tx.query('insert into effects (message_id, key, seq) values ($1, $2, $3)', [
            message.id,
            key,
            seq,
          ]);
          // The first attempt "handles" the error of a statement: its whole transaction is aborted.
          if (message.attempt === 1) await tx.query('select 1 / 0').catch(() => undefined);
        },
      });
      await c.start();
      await relay('swallow', transport()).start();
      await placeOrder('k-swallow', 1, topic);
      const effects = await eventually(async () => {
        const { rows } = await consumerPool.query<{ seq: number }>(
          "select seq from effects where key = 'k-swallow'",
        );
        return rows.length > 0 ? rows : undefined;
      }, 10_000);
      // Acknowledged after the first attempt, the message would be gone and its effect with it.
      expect(effects.map((r) => r.seq)).toEqual([1]);
      expect(attempts).toEqual([1, 2]);
    });

    it('runs the handler in the producer’s trace, with the producer’s consistency token in its session', async () => {
      const topic = unique('orders.placed');
      const got: { token: unknown; sessionToken: unknown; traceId: string | undefined }[] = [];
      await consumer<{ key: string; seq: number }>({
        transport: transport(),
        group: unique('trace'),
        topics: [topic],
        handler: (message) => {
          got.push({
            token: message.token,
            sessionToken: currentSession()?.token,
            traceId: trace.getActiveSpan()?.spanContext().traceId,
          });
          return Promise.resolve();
        },
      }).start();
      await relay('trace', transport()).start();
      const producerSpan = tracer.startSpan('place order');
      const placed = await context.with(trace.setSpan(context.active(), producerSpan), () =>
        placeOrder('k-trace', 1, topic),
      );
      producerSpan.end();
      await eventually(() => (got.length === 1 ? true : undefined));
      const spans = await eventually(() => {
        const found = exporter
          .getFinishedSpans()
          .filter((s) => s.name === 'replikit.message.process');
        return found.length === 1 ? found : undefined;
      });
      const processed = spans[0]!;
      expect(processed.spanContext().traceId).toBe(producerSpan.spanContext().traceId);
      expect(processed.parentSpanContext?.spanId).toBe(producerSpan.spanContext().spanId);
      expect(got[0]!.traceId).toBe(producerSpan.spanContext().traceId);
      // The relay's publish span links to the producer's context.
      const publish = exporter.getFinishedSpans().find((s) => s.name === 'replikit.outbox.publish');
      expect(publish?.links.map((l) => l.context.traceId)).toContain(
        producerSpan.spanContext().traceId,
      );

      const token = got[0]!.token as { systemId: string; written: bigint } | undefined;
      expect(token).toBeDefined();
      expect(got[0]!.sessionToken).toEqual(token);
      const { rows } = await producerPool.query<{ id: string }>(
        'select system_identifier::text as id from pg_control_system()',
      );
      expect(token!.systemId).toBe(rows[0]!.id);
      // At or past the commit of the business write: beyond any position read before it committed.
      expect(token!.written).toBeGreaterThan(placed.lsnBeforeCommit);
    });
  });
}
