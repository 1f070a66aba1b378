import { randomUUID } from 'node:crypto';

import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createEventStore,
  EventStoreError,
  START,
  type AppendResult,
  type EventStore,
  type RecordedEvent,
} from '../src/events/index.js';
import { countsProjection, migrateEvents } from './support/events.js';
import { createTestDatabase, eventually, type TestDatabase } from './support/stack.js';

let db: TestDatabase;
let store: EventStore;
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(async () => {
  context.setGlobalContextManager(contextManager.enable());
  db = await createTestDatabase('events');
  await migrateEvents(db.primaryUrl);
  store = createEventStore({ connection: db.primaryUrl, tracer: provider.getTracer('test') });
});

afterAll(async () => {
  await store?.close();
  await db?.drop();
  context.disable();
  await provider.shutdown();
});

const followed = (userId: string, targetId: string) => ({
  type: 'UserFollowed',
  data: { userId, targetId },
});

async function rejection(promise: Promise<unknown>): Promise<EventStoreError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EventStoreError);
  return err as EventStoreError;
}

describe('event store: appends', () => {
  it('checks all four expectations and says which version it found', async () => {
    const stream = `s-${randomUUID()}`;
    const first = await store.append(stream, [followed('a', 'b')], {
      expectedVersion: 'no_stream',
    });
    expect(first.nextExpectedVersion).toBe(1);
    const noStream = await rejection(
      store.append(stream, [followed('a', 'c')], { expectedVersion: 'no_stream' }),
    );
    expect(noStream.code).toBe('EVENTSTORE_CONCURRENCY');
    expect(noStream.details).toMatchObject({ streamId: stream, expected: 'no_stream', actual: 1 });

    const exists = await rejection(
      store.append(`s-${randomUUID()}`, [followed('a', 'c')], { expectedVersion: 'stream_exists' }),
    );
    expect(exists.details).toMatchObject({ expected: 'stream_exists', actual: 0 });
    await store.append(stream, [followed('a', 'c')], { expectedVersion: 'stream_exists' });

    const exact = await rejection(
      store.append(stream, [followed('a', 'd')], { expectedVersion: 1 }),
    );
    expect(exact.details).toMatchObject({ expected: 1, actual: 2 });
    expect(exact.message).toContain('version 2');
    const third = await store.append(stream, [followed('a', 'd'), followed('a', 'e')], {
      expectedVersion: 2,
    });
    expect(third.nextExpectedVersion).toBe(4);
    expect((await store.append(stream, [followed('a', 'f')])).nextExpectedVersion).toBe(5);

    const events = await store.readStream(stream);
    expect(events.map((e) => e.streamVersion)).toEqual([1, 2, 3, 4, 5]);
    expect(events.map((e) => (e.data as { targetId: string }).targetId)).toEqual([
      'b',
      'c',
      'd',
      'e',
      'f',
    ]);
  });

  it('lets exactly one of two writers with the same expected version win', async () => {
    for (let round = 0; round < 20; round++) {
      const stream = `race-${randomUUID()}`;
      await store.append(stream, [followed('x', 'y')]);
      const outcomes = await Promise.allSettled(
        ['p', 'q'].map((target) =>
          store.append(stream, [followed('x', target)], { expectedVersion: 1 }),
        ),
      );
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      const lost = outcomes.filter((o) => o.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      const err = (lost[0] as PromiseRejectedResult).reason as EventStoreError;
      expect(err.code).toBe('EVENTSTORE_CONCURRENCY');
      expect(err.details).toMatchObject({ expected: 1, actual: 2 });
      expect(await store.readStream(stream)).toHaveLength(2);
    }
  });

  it('also for two writers creating the same stream', async () => {
    for (let round = 0; round < 20; round++) {
      const stream = `create-${randomUUID()}`;
      const outcomes = await Promise.allSettled(
        ['p', 'q'].map((target) =>
          store.append(stream, [followed('x', target)], { expectedVersion: 'no_stream' }),
        ),
      );
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      expect(await store.readStream(stream)).toHaveLength(1);
    }
  });

  it('is idempotent by event id: re-appending returns the first result and writes nothing', async () => {
    const stream = `idem-${randomUUID()}`;
    const events = [
      { ...followed('a', 'b'), id: randomUUID() },
      { ...followed('a', 'c'), id: randomUUID() },
    ];
    const first = await store.append(stream, events, { expectedVersion: 'no_stream' });
    // Even with an expectation that no longer holds: a retried command must not fail.
    const again = await store.append(stream, events, { expectedVersion: 'no_stream' });
    expect(again.duplicate).toBe(true);
    expect(again.positions).toEqual(first.positions);
    expect(again.nextExpectedVersion).toBe(first.nextExpectedVersion);
    expect(await store.readStream(stream)).toHaveLength(2);

    // Concurrent retries of one command: one writes, the others get the same result.
    const retried = [{ ...followed('a', 'd'), id: randomUUID() }];
    const results = await Promise.all(
      Array.from({ length: 5 }, () => store.append(stream, retried, { expectedVersion: 2 })),
    );
    expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
    expect(new Set(results.map((r) => r.position.position))).toHaveProperty('size', 1);
    expect(await store.readStream(stream)).toHaveLength(3);

    const partial = await rejection(
      store.append(stream, [events[0]!, { ...followed('a', 'z'), id: randomUUID() }]),
    );
    expect(partial.code).toBe('EVENTSTORE_EVENT_ID_CONFLICT');
    const elsewhere = await rejection(store.append(`other-${randomUUID()}`, events));
    expect(elsewhere.code).toBe('EVENTSTORE_EVENT_ID_CONFLICT');
  });

  it('writes concurrent appends together, each with its own expectation, outcome and error', async () => {
    const stored = `stored-${randomUUID()}`;
    const storedEvents = [{ ...followed('s', 't'), id: randomUUID() }];
    const first = await store.append(stored, storedEvents);
    const chain = `chain-${randomUUID()}`;
    const twice = [{ ...followed('t', 'u'), id: randomUUID() }];
    const twiceStream = `twice-${randomUUID()}`;
    // Issued together: the first ones are written at once, the rest queue and go in one batch.
    const calls: Promise<unknown>[] = [
      ...Array.from({ length: 20 }, (_, i) =>
        store.append(`many-${i}-${randomUUID()}`, [followed('m', String(i))], {
          expectedVersion: 'no_stream',
        }),
      ),
      store.append(chain, [followed('c', '1')], { expectedVersion: 'no_stream' }),
      store.append(chain, [followed('c', '2')], { expectedVersion: 1 }),
      store.append(chain, [followed('c', '3'), followed('c', '4')], { expectedVersion: 2 }),
      store.append(`conflict-${randomUUID()}`, [followed('x', 'y')], { expectedVersion: 5 }),
      store.append(stored, storedEvents, { expectedVersion: 'no_stream' }),
      store.append(`elsewhere-${randomUUID()}`, storedEvents),
      store.append(twiceStream, twice),
      store.append(twiceStream, twice),
    ];
    const outcomes = await Promise.allSettled(calls);
    const value = (i: number) => (outcomes[i] as PromiseFulfilledResult<AppendResult>).value;
    const reason = (i: number) => (outcomes[i] as PromiseRejectedResult).reason as EventStoreError;
    for (let i = 0; i < 23; i++) expect(outcomes[i]!.status).toBe('fulfilled');
    expect(value(22).nextExpectedVersion).toBe(4);
    expect(
      (await store.readStream(chain)).map((e) => (e.data as { targetId: string }).targetId),
    ).toEqual(['1', '2', '3', '4']);
    expect(reason(23).code).toBe('EVENTSTORE_CONCURRENCY');
    expect(reason(23).details).toMatchObject({ expected: 5, actual: 0 });
    expect(value(24)).toMatchObject({ duplicate: true, positions: first.positions });
    expect(reason(25).code).toBe('EVENTSTORE_EVENT_ID_CONFLICT');
    expect([value(26).duplicate, value(27).duplicate].sort()).toEqual([false, true]);
    expect(value(26).position).toEqual(value(27).position);
    // Batched appends share their transaction.
    const transactions = new Set(
      Array.from({ length: 23 }, (_, i) => value(i).position.transactionId),
    );
    expect(transactions.size).toBeLessThan(23);

    // A statement error (a NUL character jsonb refuses) fails that append alone.
    const mixed = await Promise.allSettled([
      ...Array.from({ length: 5 }, (_, i) =>
        store.append(`ok-${i}-${randomUUID()}`, [followed('o', String(i))]),
      ),
      store.append(`bad-${randomUUID()}`, [{ type: 'Bad', data: { text: 'a\u0000b' } }]),
      ...Array.from({ length: 5 }, (_, i) =>
        store.append(`ok-${i}-${randomUUID()}`, [followed('o', String(i))]),
      ),
    ]);
    expect(mixed.map((o) => o.status)).toEqual([
      ...Array<string>(5).fill('fulfilled'),
      'rejected',
      ...Array<string>(5).fill('fulfilled'),
    ]);
  });

  it.each([0, 6])(
    'does not hold appends to other streams behind a transaction that holds one stream (its append issued %i-th)',
    async (place) => {
      const held = `held-${randomUUID()}`;
      await store.append(held, [followed('h', '0')]);
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let locked!: () => void;
      const isLocked = new Promise<void>((resolve) => (locked = resolve));
      const holder = store.transaction(async (tx) => {
        await tx.append(held, [followed('h', '1')], { expectedVersion: 1 });
        locked();
        await released;
      });
      await isLocked;
      let heldDone = false;
      const calls = Array.from({ length: 12 }, (_, i) =>
        i === place
          ? store.append(held, [followed('h', '2')], { expectedVersion: 2 }).finally(() => {
              heldDone = true;
            })
          : store.append(`free-${i}-${randomUUID()}`, [followed('f', String(i))]),
      );
      const others = await Promise.all(calls.filter((_, i) => i !== place));
      expect(others).toHaveLength(11);
      expect(heldDone).toBe(false);
      release();
      await holder;
      expect((await calls[place]!).nextExpectedVersion).toBe(3);
      expect(await store.readStream(held)).toHaveLength(3);
    },
  );

  it('does not hold appends to other streams behind a transaction that created a stream and has not committed', async () => {
    const fresh = `fresh-${randomUUID()}`;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let created!: () => void;
    const isCreated = new Promise<void>((resolve) => (created = resolve));
    const holder = store.transaction(async (tx) => {
      await tx.append(fresh, [followed('n', '0')], { expectedVersion: 'no_stream' });
      created();
      await released;
    });
    await isCreated;
    let freshDone = false;
    const calls = Array.from({ length: 12 }, (_, i) =>
      i === 3
        ? store.append(fresh, [followed('n', '1')]).finally(() => {
            freshDone = true;
          })
        : store.append(`free-${i}-${randomUUID()}`, [followed('f', String(i))]),
    );
    const others = await Promise.all(calls.filter((_, i) => i !== 3));
    expect(others).toHaveLength(11);
    expect(freshDone).toBe(false);
    release();
    await holder;
    await calls[3];
    expect(await store.readStream(fresh)).toHaveLength(2);
  });

  it('stores type, schema version, data, metadata with trace context, causation and correlation, and time', async () => {
    const stream = `meta-${randomUUID()}`;
    const tracer = provider.getTracer('test');
    const before = new Date(Date.now() - 60_000);
    await tracer.startActiveSpan('command', async (span) => {
      await store.append(
        stream,
        [
          {
            type: 'UserProfileUpdated',
            schemaVersion: 2,
            data: { name: 'Ada' },
            metadata: { actor: 'u1' },
          },
        ],
        { correlationId: 'corr-1', causationId: 'cmd-1' },
      );
      span.end();
    });
    const [event] = await store.readStream(stream);
    expect(event).toMatchObject({
      type: 'UserProfileUpdated',
      schemaVersion: 2,
      data: { name: 'Ada' },
      metadata: { actor: 'u1', correlationId: 'corr-1', causationId: 'cmd-1' },
    });
    expect(event!.recordedAt.getTime()).toBeGreaterThan(before.getTime());
    const appendSpan = exporter
      .getFinishedSpans()
      .find(
        (s) =>
          s.name === 'replikit.eventstore.append' && s.attributes['replikit.stream.id'] === stream,
      )!;
    expect(event!.metadata.traceparent).toBe(
      `00-${appendSpan.spanContext().traceId}-${appendSpan.spanContext().spanId}-01`,
    );
    expect(appendSpan.attributes['replikit.append.outcome']).toBe('appended');
  });

  it('reads the whole log in (transaction, position) order from any place', async () => {
    const all: RecordedEvent[] = [];
    let after = START;
    for (;;) {
      const page = await store.readAll({ after, limit: 7 });
      all.push(...page.events);
      if (page.events.length === 0) break;
      after = page.next;
    }
    expect(all.length).toBeGreaterThan(20);
    const keys = all.map((e) => e.globalPosition);
    const sorted = [...keys].sort((a, b) =>
      a.transactionId === b.transactionId
        ? Number(a.position - b.position)
        : a.transactionId < b.transactionId
          ? -1
          : 1,
    );
    expect(keys).toEqual(sorted);
    expect(new Set(keys.map((k) => k.position)).size).toBe(keys.length);
  });
});

describe('event store: inline projections', () => {
  it('updates the read model in the append transaction, and not at all when the append fails', async () => {
    const inlineDb = await createTestDatabase('events_inline');
    try {
      await migrateEvents(inlineDb.primaryUrl);
      const projection = countsProjection('inline_counts');
      const inline = createEventStore({
        connection: inlineDb.primaryUrl,
        inlineProjections: [
          {
            name: 'inline_counts',
            handles: ['UserFollowed'],
            apply: (events, client) =>
              projection.apply(events, client, {
                name: 'inline_counts',
                version: 1,
                table: (m) => m,
              }),
          },
        ],
      });
      try {
        await inline.transaction((tx) =>
          projection.setup!(tx, { name: 'inline_counts', version: 1, table: (m) => m }),
        );
        await inline.append('u-1', [followed('u1', 'u2')], { expectedVersion: 'no_stream' });
        await rejection(
          inline.append('u-1', [followed('u1', 'u3')], { expectedVersion: 'no_stream' }),
        );
        const { rows } = await inline.pool.query<{ user_id: string; followers: number }>(
          'select user_id, followers from inline_counts_counts order by user_id',
        );
        expect(rows).toEqual([
          { user_id: 'u1', followers: 0 },
          { user_id: 'u2', followers: 1 },
        ]);
      } finally {
        await inline.close();
      }
    } finally {
      await inlineDb.drop();
    }
  });
});

describe('event store: asynchronous projections', () => {
  it('projects every event once, links each batch span to the appending traces, and reports lag', async () => {
    const statuses: number[] = [];
    const observed = createEventStore({
      connection: db.primaryUrl,
      tracer: provider.getTracer('test'),
      observer: { onProjectionStatus: (s) => statuses.push(s.lagEvents) },
    });
    try {
      const runner = observed.startProjection(countsProjection('async_counts'), {
        batchSize: 10,
        statusIntervalMs: 0,
      });
      await runner.activated;
      const tracer = provider.getTracer('test');
      const traceId = await tracer.startActiveSpan('follow', async (span) => {
        await observed.append(`f-${randomUUID()}`, [followed('linker', 'linked')]);
        span.end();
        return span.spanContext().traceId;
      });
      const { position } = await observed.append(`f-${randomUUID()}`, [followed('z', 'linked')]);
      const waited = await observed.waitForProjection('async_counts', position, {
        timeoutMs: 15_000,
      });
      expect(waited.reached).toBe(true);
      const { rows } = await observed.pool.query<{ n: string; distinct: string; total: string }>(
        `select count(*)::text as n, count(distinct position)::text as distinct,
                (select count(*) from replikit_events where type = 'UserFollowed')::text as total
         from async_counts_applied`,
      );
      expect(rows[0]!.n).toBe(rows[0]!.distinct);
      expect(rows[0]!.n).toBe(rows[0]!.total);
      const batch = await eventually(() =>
        exporter
          .getFinishedSpans()
          .find(
            (s) =>
              s.name === 'replikit.projection.batch' &&
              s.links.some((link) => link.context.traceId === traceId),
          ),
      );
      expect(batch.attributes['replikit.projection.name']).toBe('async_counts');
      expect(statuses.length).toBeGreaterThan(0);
      await runner.stop();
      expect(runner.state.state).toBe('stopped');
    } finally {
      await observed.close();
    }
  });
});

describe('event versioning', () => {
  it('reads events written with schema v1 back as v2, in streams, the log and projections', async () => {
    const stream = `profile-${randomUUID()}`;
    await store.append(stream, [
      { type: 'UserProfileUpdated', schemaVersion: 1, data: { name: 'Grace Brewster Hopper' } },
    ]);
    const upcasting = createEventStore({
      connection: db.primaryUrl,
      upcasters: [
        {
          type: 'UserProfileUpdated',
          fromSchemaVersion: 1,
          upcast: ({ data }) => {
            const [first = '', ...rest] = (data as { name: string }).name.split(' ');
            return { data: { firstName: first, lastName: rest.join(' ') } };
          },
        },
      ],
    });
    try {
      await upcasting.append(stream, [
        {
          type: 'UserProfileUpdated',
          schemaVersion: 2,
          data: { firstName: 'Grace', lastName: 'Hopper' },
        },
      ]);
      const events = await upcasting.readStream(stream);
      expect(events.map((e) => [e.schemaVersion, e.storedSchemaVersion, e.data])).toEqual([
        [2, 1, { firstName: 'Grace', lastName: 'Brewster Hopper' }],
        [2, 2, { firstName: 'Grace', lastName: 'Hopper' }],
      ]);
      // The stored row is untouched: the store without upcasters still reads v1.
      expect((await store.readStream(stream))[0]).toMatchObject({
        schemaVersion: 1,
        data: { name: 'Grace Brewster Hopper' },
      });
      const seen: unknown[] = [];
      const runner = upcasting.startProjection({
        name: 'upcast_seen',
        handles: ['UserProfileUpdated'],
        apply: (batch) => {
          for (const event of batch) if (event.streamId === stream) seen.push(event.data);
          return Promise.resolve();
        },
      });
      await runner.activated;
      expect(
        (await upcasting.waitForProjection('upcast_seen', 'latest', { timeoutMs: 15_000 })).reached,
      ).toBe(true);
      expect(seen).toEqual(events.map((e) => e.data));
      await runner.stop();
    } finally {
      await upcasting.close();
    }
  });
});
