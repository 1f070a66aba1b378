import type { Migration } from '../db/migrate.js';

/** The log, one row per event. */
export const EVENTS_TABLE = 'replikit_events';
/** One row per stream: its version, and the row appends to the stream lock. */
export const STREAMS_TABLE = 'replikit_streams';
/** One row per projection version: its state and checkpoint. */
export const PROJECTIONS_TABLE = 'replikit_projections';
/** Channel a projection notifies after each batch commits (payload: `name:version`). */
export const PROJECTIONS_CHANNEL = 'replikit_projections';
/** Channel appends notify when the store is told to (`notifyOnAppend`). */
export const EVENTS_CHANNEL = 'replikit_events';

/**
 * The event store's schema, oldest first; run with `migrate(pool, EVENT_STORE_MIGRATIONS)`, alone
 * or after an application's own list (ids are prefixed so they never collide with its).
 *
 * `tx_id` is the appending transaction's `pg_current_xact_id()`: readers take only rows below the
 * horizon `pg_snapshot_xmin(pg_current_snapshot())`, in `(tx_id, position)` order, so a
 * transaction still open with an earlier position holds readers back instead of being skipped
 * (docs/events.md). `replikit_append` does a whole append in one statement, so an append without
 * inline projections is one round trip and never sits idle in a transaction.
 */
export const EVENT_STORE_MIGRATIONS: readonly Migration[] = [
  {
    id: 'replikit-events-0001-log',
    sql: `
      create table ${EVENTS_TABLE} (
        position bigint generated always as identity primary key,
        tx_id xid8 not null default pg_current_xact_id(),
        stream_id text not null,
        stream_version bigint not null,
        event_id uuid not null,
        type text not null,
        schema_version int not null default 1 check (schema_version >= 1),
        data jsonb not null,
        metadata jsonb not null default '{}',
        created_at timestamptz not null default now(),
        constraint ${EVENTS_TABLE}_event_id_key unique (event_id),
        constraint ${EVENTS_TABLE}_stream_key unique (stream_id, stream_version)
      );
      create index ${EVENTS_TABLE}_order on ${EVENTS_TABLE} (tx_id, position);

      create table ${STREAMS_TABLE} (
        stream_id text primary key,
        version bigint not null
      );

      create table ${PROJECTIONS_TABLE} (
        name text not null,
        version int not null check (version >= 1),
        status text not null check (status in ('active', 'building', 'retired')),
        tx_id xid8 not null default '0',
        position bigint not null default 0,
        events_applied bigint not null default 0,
        last_event_at timestamptz,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        activated_at timestamptz,
        primary key (name, version)
      );
      create unique index ${PROJECTIONS_TABLE}_one_active on ${PROJECTIONS_TABLE} (name)
        where status = 'active';

      -- p_expected: 'any', 'no_stream', 'stream_exists' or a version in decimal.
      -- p_events: [{id, type, schemaVersion, data, metadata}, ...].
      create function replikit_append(p_stream text, p_expected text, p_events jsonb, p_notify boolean)
      returns table (outcome text, stream_version bigint, tx_id text, positions bigint[], recorded_at timestamptz)
      language plpgsql as $fn$
      declare
        v_count int := jsonb_array_length(p_events);
        v_ids uuid[];
        v_current bigint;
        v_found int;
        v_found_here int;
        v_positions bigint[];
      begin
        select array_agg((e->>'id')::uuid) into v_ids from jsonb_array_elements(p_events) e;
        -- The stream row is the append lock: appends to one stream take turns, so the version
        -- check below and the insert see the same version.
        select s.version into v_current from ${STREAMS_TABLE} s where s.stream_id = p_stream for update;
        if not found then
          v_current := 0;
          if p_expected in ('any', 'no_stream', '0') then
            -- A concurrent first append may have created the row meanwhile: this waits for it to
            -- commit, and the second look sees its version.
            insert into ${STREAMS_TABLE} (stream_id, version) values (p_stream, 0)
              on conflict (stream_id) do nothing;
            select s.version into v_current from ${STREAMS_TABLE} s where s.stream_id = p_stream for update;
          end if;
        end if;

        -- Idempotency, after the lock: a concurrent append of the same events has committed by now.
        select count(*), count(*) filter (where e.stream_id = p_stream)
          into v_found, v_found_here
          from ${EVENTS_TABLE} e where e.event_id = any(v_ids);
        if v_found > 0 then
          if v_found = v_count and v_found_here = v_count then
            return query
              select 'duplicate'::text, max(e.stream_version), min(e.tx_id::text), array_agg(e.position order by e.position), min(e.created_at)
              from ${EVENTS_TABLE} e where e.event_id = any(v_ids);
          else
            return query select 'id_conflict'::text, v_current, null::text, null::bigint[], null::timestamptz;
          end if;
          return;
        end if;

        if (p_expected = 'no_stream' and v_current <> 0)
           or (p_expected = 'stream_exists' and v_current = 0)
           or (p_expected not in ('any', 'no_stream', 'stream_exists') and v_current <> p_expected::bigint) then
          return query select 'conflict'::text, v_current, null::text, null::bigint[], null::timestamptz;
          return;
        end if;

        with inserted as (
          insert into ${EVENTS_TABLE} (stream_id, stream_version, event_id, type, schema_version, data, metadata)
          select p_stream, v_current + e.ord, (e.value->>'id')::uuid, e.value->>'type',
                 coalesce((e.value->>'schemaVersion')::int, 1), e.value->'data',
                 coalesce(e.value->'metadata', '{}'::jsonb)
          from jsonb_array_elements(p_events) with ordinality as e(value, ord)
          order by e.ord
          returning ${EVENTS_TABLE}.position
        )
        select array_agg(i.position order by i.position) into v_positions from inserted i;
        update ${STREAMS_TABLE} set version = v_current + v_count where stream_id = p_stream;
        if p_notify then
          perform pg_notify('${EVENTS_CHANNEL}', '');
        end if;
        return query select 'appended'::text, v_current + v_count, pg_current_xact_id()::text, v_positions, now();
      end
      $fn$;
    `,
  },
  {
    id: 'replikit-events-0002-append-batch',
    sql: `
      -- Several standalone appends in one transaction (the store batches concurrent ones, so they
      -- share one commit). p_items: [{stream, expected, events}, ...]; one row per item, \`ord\`
      -- being its 1-based place in p_items. Each item's outcome is its own: a conflict writes
      -- nothing for that item and the others go on; a later item sees what an earlier one on the
      -- same stream wrote.
      --
      -- The batch never waits for a stream another transaction holds: it locks its existing
      -- streams at once, in stream order, skipping those locked elsewhere, and answers 'busy' for
      -- their items, which the store then appends on their own. So one slow transaction cannot
      -- hold up appends to other streams that happen to share its batch.
      create function replikit_append_batch(p_items jsonb, p_notify boolean)
      returns table (ord int, outcome text, stream_version bigint, tx_id text, positions bigint[], recorded_at timestamptz)
      language plpgsql as $fn$
      declare
        v_streams text[];
        v_locked text[];
        v_busy text[];
        v_item record;
      begin
        -- A batch never waits long on someone else's open transaction (a stream it created, an
        -- event id it stored and has not committed): past this, the statement fails, nothing of
        -- the batch commits, and the store appends each item on its own, so only the one in
        -- conflict waits.
        perform set_config('lock_timeout', '200ms', true);
        select array_agg(distinct i.value->>'stream') into v_streams from jsonb_array_elements(p_items) i;
        select coalesce(array_agg(l.stream_id), '{}') into v_locked from (
          select s.stream_id from ${STREAMS_TABLE} s where s.stream_id = any(v_streams)
          order by s.stream_id collate "C" for update skip locked
        ) l;
        select coalesce(array_agg(s.stream_id), '{}') into v_busy from ${STREAMS_TABLE} s
          where s.stream_id = any(v_streams) and not (s.stream_id = any(v_locked));
        for v_item in
          select i.value, i.n::int as n
          from jsonb_array_elements(p_items) with ordinality as i(value, n)
          order by i.value->>'stream' collate "C", i.n
        loop
          if (v_item.value->>'stream') = any(v_busy) then
            return query select v_item.n, 'busy'::text, null::bigint, null::text, null::bigint[], null::timestamptz;
          else
            return query
              select v_item.n, a.outcome, a.stream_version, a.tx_id, a.positions, a.recorded_at
              from replikit_append(v_item.value->>'stream', v_item.value->>'expected',
                                   v_item.value->'events', p_notify) a;
          end if;
        end loop;
      end
      $fn$;
    `,
  },
];
