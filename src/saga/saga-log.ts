import type pg from 'pg';

import type { Migration } from '../db/migrate.js';
import type { Json, SagaFailure } from './define-saga.js';
import type {
  SagaAttention,
  SagaState,
  SagaStatus,
  StepLogEntry,
  Transition,
} from './saga-state.js';

/**
 * The saga log's schema. `replikit_sagas` holds each instance's resumable state and its lease;
 * `replikit_saga_steps` one row per step and phase (run, compensate) for people and the admin API.
 */
export const SAGA_MIGRATIONS: readonly Migration[] = [
  {
    id: 'replikit-saga-0001-log',
    sql: `
      create table replikit_sagas (
        id uuid primary key,
        saga text not null,
        version integer not null,
        key text unique,
        status text not null
          check (status in ('running', 'compensating', 'completed', 'compensated', 'needs_attention')),
        step_index integer not null default 0,
        attempt integer not null default 1,
        input jsonb not null,
        outputs jsonb not null default '{}',
        failure jsonb,
        pending integer[] not null default '{}',
        attention jsonb,
        trace jsonb,
        owner text,
        epoch bigint not null default 0,
        lease_until timestamptz,
        next_attempt_at timestamptz not null default now(),
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        finished_at timestamptz
      );
      -- What pollers scan: only sagas that still have work.
      create index replikit_sagas_due on replikit_sagas (next_attempt_at)
        where status in ('running', 'compensating');
      create index replikit_sagas_by_status on replikit_sagas (status, created_at);
      create table replikit_saga_steps (
        saga_id uuid not null references replikit_sagas (id) on delete cascade,
        idx integer not null,
        phase text not null check (phase in ('run', 'compensate')),
        name text not null,
        status text not null
          check (status in ('running', 'completed', 'rejected', 'failed', 'retrying', 'parked')),
        attempts integer not null default 1,
        output jsonb,
        error jsonb,
        started_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        finished_at timestamptz,
        primary key (saga_id, idx, phase)
      );
    `,
  },
  {
    // Set (fenced) before a remote pivot is first called: from then on a forced compensation is
    // refused, since the pivot may have gone through.
    id: 'replikit-saga-0002-pivot-intent',
    sql: `alter table replikit_sagas add column pivot_started boolean not null default false;`,
  },
  {
    // What the request that started a saga under a key asked for: the same key sent with another
    // request is refused instead of answered with this saga. Null for sagas started before, or
    // without a fingerprint: those answer any request under their key, as they always did.
    id: 'replikit-saga-0003-key-fingerprint',
    sql: `alter table replikit_sagas add column key_fingerprint text;`,
  },
];

/** Something to run SQL on: a pool, or a client inside a transaction. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

/** A saga instance as the log holds it. */
export interface SagaRecord {
  readonly id: string;
  readonly saga: string;
  readonly version: number;
  readonly key: string | null;
  readonly input: Json;
  readonly state: SagaState;
  /** W3C trace context of the span that started the saga. */
  readonly trace: Readonly<Record<string, string>> | null;
  readonly owner: string | null;
  readonly epoch: number;
  readonly leaseUntil: Date | null;
  readonly nextAttemptAt: Date;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly finishedAt: Date | null;
}

/** One row of a saga's step log. */
export interface StepRecord {
  readonly index: number;
  readonly phase: 'run' | 'compensate';
  readonly name: string;
  readonly status: StepLogEntry['status'];
  readonly attempts: number;
  readonly output: Json | null;
  readonly error: Json | null;
  readonly startedAt: Date;
  readonly updatedAt: Date;
  readonly finishedAt: Date | null;
}

interface SagaRow {
  id: string;
  saga: string;
  version: number;
  key: string | null;
  status: SagaStatus;
  step_index: number;
  attempt: number;
  input: Json;
  outputs: Record<string, Json>;
  failure: SagaFailure | null;
  pending: number[];
  attention: SagaAttention | null;
  pivot_started: boolean;
  trace: Record<string, string> | null;
  owner: string | null;
  epoch: string;
  lease_until: Date | null;
  next_attempt_at: Date;
  created_at: Date;
  updated_at: Date;
  finished_at: Date | null;
  [column: string]: unknown;
}

function toRecord(row: SagaRow): SagaRecord {
  return {
    id: row.id,
    saga: row.saga,
    version: row.version,
    key: row.key,
    input: row.input,
    state: {
      status: row.status,
      stepIndex: row.step_index,
      attempt: row.attempt,
      outputs: row.outputs,
      failure: row.failure,
      pending: row.pending,
      attention: row.attention,
      pivotStarted: row.pivot_started,
    },
    trace: row.trace,
    owner: row.owner,
    epoch: Number(row.epoch),
    leaseUntil: row.lease_until,
    nextAttemptAt: row.next_attempt_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}

/** A new saga to insert (about to run its first step). */
export interface NewSaga {
  readonly id: string;
  readonly saga: string;
  readonly version: number;
  readonly key: string | null;
  /** What the request under `key` asked for (see `StartSagaOptions.fingerprint`). */
  readonly keyFingerprint: string | null;
  readonly input: Json;
  readonly trace: Readonly<Record<string, string>> | null;
  /** Insert it already leased to the caller (epoch 1), or unowned for any poller to claim. */
  readonly owned: boolean;
  readonly first: Transition;
}

/** A checkpoint: the transition to write, fenced by the epoch of the caller's lease. */
export interface Checkpoint {
  readonly id: string;
  readonly epoch: number;
  readonly transition: Transition;
  /** Give up the lease with this write (the saga waits for a person, or this process stops). */
  readonly release: boolean;
}

function logRows(id: string, log: readonly StepLogEntry[]): object[] {
  return log.map((entry) => ({
    saga_id: id,
    idx: entry.index,
    phase: entry.phase,
    name: entry.name,
    status: entry.status,
    attempts: entry.attempts,
    output: entry.output ?? null,
    error: entry.error ?? null,
    finished: entry.finished,
  }));
}

const LOG_UPSERT = `
  insert into replikit_saga_steps as l (saga_id, idx, phase, name, status, attempts, output, error, finished_at)
  select e.saga_id, e.idx, e.phase, e.name, e.status, e.attempts, e.output, e.error,
         case when e.finished then now() end
  from jsonb_to_recordset($LOG::jsonb) as e(saga_id uuid, idx int, phase text, name text, status text,
                                            attempts int, output jsonb, error jsonb, finished boolean)
  where e.saga_id in (select id from written)
  on conflict (saga_id, idx, phase) do update set
    status = excluded.status,
    attempts = excluded.attempts,
    output = coalesce(excluded.output, l.output),
    error = coalesce(excluded.error, l.error),
    updated_at = now(),
    finished_at = excluded.finished_at`;

/**
 * Inserts new sagas with the intent of their first step, in one statement.
 *
 * @returns for each item, whether it was inserted (false: its id or key existed already).
 */
export async function insertSagas(
  db: Queryable,
  items: readonly NewSaga[],
  owner: string,
  leaseMs: number,
): Promise<boolean[]> {
  const sagas = items.map((item) => ({
    id: item.id,
    saga: item.saga,
    version: item.version,
    key: item.key,
    key_fingerprint: item.keyFingerprint,
    input: item.input,
    trace: item.trace,
    owned: item.owned,
    attempt: item.first.state.attempt,
  }));
  const log = items.flatMap((item) => logRows(item.id, item.first.log));
  const { rows } = await db.query<{ id: string }>({
    // Named: prepared once per connection, since the statement is the same every time.
    name: 'replikit_saga_insert',
    text: `with input as (
       select * from jsonb_to_recordset($1::jsonb)
         as r(id uuid, saga text, version int, key text, key_fingerprint text, input jsonb,
              trace jsonb, owned boolean, attempt int)
     ), written as (
       insert into replikit_sagas (id, saga, version, key, key_fingerprint, status, step_index,
                                   attempt, input, trace, owner, epoch, lease_until)
       select id, saga, version, key, key_fingerprint, 'running', 0, attempt, input, trace,
              case when owned then $3 end, case when owned then 1 else 0 end,
              case when owned then now() + $4 * interval '1 millisecond' end
       from input
       on conflict do nothing
       returning id
     ), logged as (${LOG_UPSERT.replace('$LOG', '$2')})
     select id from written`,
    values: [JSON.stringify(sagas), JSON.stringify(log), owner, leaseMs],
  });
  const inserted = new Set(rows.map((row) => row.id));
  return items.map((item) => inserted.has(item.id));
}

/**
 * Writes checkpoints in one statement. Each is applied only if the saga's epoch is still the one
 * the writer's lease carries: a process that lost its lease (paused past it, cut off) cannot
 * overwrite the progress of the process that took the saga over.
 *
 * @returns for each checkpoint, whether it was written (false: fenced).
 */
export async function writeCheckpoints(
  db: Queryable,
  checkpoints: readonly Checkpoint[],
  leaseMs: number,
): Promise<boolean[]> {
  const states = checkpoints.map(({ id, epoch, transition, release }) => ({
    id,
    epoch,
    status: transition.state.status,
    step_index: transition.state.stepIndex,
    attempt: transition.state.attempt,
    outputs: transition.state.outputs,
    failure: transition.state.failure,
    pending: transition.state.pending,
    attention: transition.state.attention,
    pivot_started: transition.state.pivotStarted,
    delay_ms: transition.delayMs,
    finished: transition.state.status === 'completed' || transition.state.status === 'compensated',
    release: release || transition.state.status === 'needs_attention',
  }));
  const log = checkpoints.flatMap(({ id, transition }) => logRows(id, transition.log));
  const { rows } = await db.query<{ id: string }>({
    name: 'replikit_saga_checkpoint',
    text: `with t as (
       select * from jsonb_to_recordset($1::jsonb)
         as t(id uuid, epoch bigint, status text, step_index int, attempt int, outputs jsonb, failure jsonb,
              pending int[], attention jsonb, pivot_started boolean, delay_ms double precision,
              finished boolean, release boolean)
     ), written as (
       update replikit_sagas s set
         status = t.status,
         step_index = t.step_index,
         attempt = t.attempt,
         outputs = t.outputs,
         failure = t.failure,
         pending = t.pending,
         attention = t.attention,
         pivot_started = t.pivot_started,
         -- Left alone when there is no delay (it is in the past already): the update then changes
         -- no indexed column and stays a heap-only tuple update.
         next_attempt_at = case when t.delay_ms > 0
                                then now() + t.delay_ms * interval '1 millisecond'
                                else s.next_attempt_at end,
         owner = case when t.finished or t.release then null else s.owner end,
         lease_until = case when t.finished or t.release then null
                            else now() + ($3 + t.delay_ms) * interval '1 millisecond' end,
         updated_at = now(),
         finished_at = case when t.finished then now() end
       from t
       where s.id = t.id and s.epoch = t.epoch
       returning s.id
     ), logged as (${LOG_UPSERT.replace('$LOG', '$2')})
     select id from written`,
    values: [JSON.stringify(states), JSON.stringify(log), leaseMs],
  });
  const written = new Set(rows.map((row) => row.id));
  return checkpoints.map((checkpoint) => written.has(checkpoint.id));
}

/** A saga a claim handed to this process, and whether it took it from another owner. */
export interface ClaimedSaga {
  readonly record: SagaRecord;
  /** The saga had an owner whose lease ran out: that process died or stalled. */
  readonly takeover: boolean;
}

/**
 * Leases up to `limit` sagas that are due and not leased (or whose lease ran out) to `owner`,
 * raising each one's epoch. `FOR UPDATE SKIP LOCKED` lets pollers in many processes claim at
 * once without waiting on each other or claiming the same saga.
 */
export async function claimSagas(
  db: Queryable,
  options: {
    readonly owner: string;
    readonly leaseMs: number;
    readonly limit: number;
    /** `<name>@<version>` of the sagas this process can run. */
    readonly keys: readonly string[];
    /** Only these sagas. */
    readonly ids?: readonly string[];
  },
): Promise<ClaimedSaga[]> {
  const { rows } = await db.query<SagaRow & { previous_owner: string | null }>(
    `with c as (
       select id, owner as previous_owner from replikit_sagas
       where status in ('running', 'compensating')
         and next_attempt_at <= now()
         and (lease_until is null or lease_until < now())
         and saga || '@' || version = any($4::text[])
         and ($5::uuid[] is null or id = any($5::uuid[]))
       order by next_attempt_at
       limit $3
       for update skip locked
     )
     update replikit_sagas s set
       owner = $1,
       epoch = s.epoch + 1,
       lease_until = now() + $2 * interval '1 millisecond',
       updated_at = now()
     from c
     where s.id = c.id
     returning s.*, c.previous_owner`,
    [options.owner, options.leaseMs, options.limit, options.keys, options.ids ?? null],
  );
  return rows.map((row) => ({ record: toRecord(row), takeover: row.previous_owner !== null }));
}

/** A lease this process holds. */
export interface Lease {
  readonly id: string;
  readonly epoch: number;
}

/**
 * Extends leases. A saga whose epoch moved on is not extended: its lease was lost. Nor is one
 * whose lease its holder's own last checkpoint gave up (it finished, or waits for a person): that
 * renewal lost a race with the checkpoint, not the lease, and the lease stays given up.
 *
 * @returns for each saga still at its lease's epoch, whether the lease was extended (false: given
 *   up by its own checkpoint); a saga missing from the map is fenced.
 */
export async function renewLeases(
  db: Queryable,
  leases: readonly Lease[],
  leaseMs: number,
): Promise<Map<string, boolean>> {
  if (leases.length === 0) return new Map();
  // Rows are matched by epoch alone, so that the answer tells a given-up lease from a lost one;
  // the epoch is compared on the row as it is after any concurrent writer commits.
  const { rows } = await db.query<{ id: string; renewed: boolean }>(
    `update replikit_sagas s set lease_until = case when s.lease_until is not null
       then greatest(s.next_attempt_at, now()) + $3 * interval '1 millisecond' end
     from unnest($1::uuid[], $2::bigint[]) as o(id, epoch)
     where s.id = o.id and s.epoch = o.epoch
     returning s.id, s.lease_until is not null as renewed`,
    [leases.map((lease) => lease.id), leases.map((lease) => lease.epoch), leaseMs],
  );
  return new Map(rows.map((row) => [row.id, row.renewed]));
}

/** Gives leases up so that any process may claim the sagas at once. */
export async function releaseLeases(db: Queryable, leases: readonly Lease[]): Promise<void> {
  if (leases.length === 0) return;
  await db.query(
    `update replikit_sagas s set owner = null, lease_until = null
     from unnest($1::uuid[], $2::bigint[]) as o(id, epoch)
     where s.id = o.id and s.epoch = o.epoch`,
    [leases.map((lease) => lease.id), leases.map((lease) => lease.epoch)],
  );
}

/**
 * Reads one saga, or undefined. With `forUpdate` (inside a transaction) the row stays locked until
 * it ends: checkpoints and claims of the saga wait, so a decision taken from it holds when written.
 */
export async function readSaga(
  db: Queryable,
  id: string,
  options: { readonly forUpdate?: boolean } = {},
): Promise<SagaRecord | undefined> {
  const { rows } = await db.query<SagaRow>(
    `select * from replikit_sagas where id = $1${options.forUpdate === true ? ' for update' : ''}`,
    [id],
  );
  return rows[0] === undefined ? undefined : toRecord(rows[0]);
}

/** The saga started under a key, and the fingerprint of the request that started it. */
export async function readSagaKey(
  db: Queryable,
  key: string,
): Promise<{ readonly id: string; readonly fingerprint: string | null } | undefined> {
  const { rows } = await db.query<{ id: string; key_fingerprint: string | null }>(
    'select id, key_fingerprint from replikit_sagas where key = $1',
    [key],
  );
  const row = rows[0];
  return row === undefined ? undefined : { id: row.id, fingerprint: row.key_fingerprint };
}

/** Reads a saga's step log, in step order (each step's run before its compensation). */
export async function readSteps(db: Queryable, id: string): Promise<StepRecord[]> {
  const { rows } = await db.query<{
    idx: number;
    phase: 'run' | 'compensate';
    name: string;
    status: StepLogEntry['status'];
    attempts: number;
    output: Json | null;
    error: Json | null;
    started_at: Date;
    updated_at: Date;
    finished_at: Date | null;
  }>(
    `select idx, phase, name, status, attempts, output, error, started_at, updated_at, finished_at
     from replikit_saga_steps where saga_id = $1 order by idx, phase desc`,
    [id],
  );
  return rows.map((row) => ({
    index: row.idx,
    phase: row.phase,
    name: row.name,
    status: row.status,
    attempts: row.attempts,
    output: row.output,
    error: row.error,
    startedAt: row.started_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  }));
}

/** Filters for {@link listSagas}. */
export interface SagaListFilter {
  readonly status?: SagaStatus | undefined;
  readonly saga?: string | undefined;
  /** Only sagas not updated for at least this long: the stuck-saga query. */
  readonly idleForMs?: number | undefined;
  /** Only sagas created before this time (for paging: pass the last one's `createdAt`). */
  readonly createdBefore?: Date | undefined;
  /** Default 50, at most 1000. */
  readonly limit?: number | undefined;
}

/** Lists sagas, newest first. */
export async function listSagas(db: Queryable, filter: SagaListFilter): Promise<SagaRecord[]> {
  const { rows } = await db.query<SagaRow>(
    `select * from replikit_sagas
     where ($1::text is null or status = $1)
       and ($2::text is null or saga = $2)
       and ($3::double precision is null or updated_at < now() - $3 * interval '1 millisecond')
       and ($4::timestamptz is null or created_at < $4)
     order by created_at desc
     limit $5`,
    [
      filter.status ?? null,
      filter.saga ?? null,
      filter.idleForMs ?? null,
      filter.createdBefore ?? null,
      Math.min(Math.max(filter.limit ?? 50, 1), 1000),
    ],
  );
  return rows.map(toRecord);
}

/**
 * Applies a person's decision (retry, compensate) to a saga: writes the transition, raises the
 * epoch so that a process still working on the saga cannot write over it, and frees it for claiming.
 *
 * @returns false when the saga changed since `epoch` was read.
 */
export async function overrideSaga(
  db: Queryable,
  id: string,
  epoch: number,
  transition: Transition,
): Promise<boolean> {
  const state = transition.state;
  const { rows } = await db.query<{ id: string }>(
    `with written as (
       update replikit_sagas set
         status = $3, step_index = $4, attempt = $5, outputs = $6, failure = $7, pending = $8,
         attention = $9, pivot_started = $11, epoch = epoch + 1, owner = null, lease_until = null,
         next_attempt_at = now(), updated_at = now()
       where id = $1 and epoch = $2
       returning id
     ), logged as (${LOG_UPSERT.replace('$LOG', '$10')})
     select id from written`,
    [
      id,
      epoch,
      state.status,
      state.stepIndex,
      state.attempt,
      JSON.stringify(state.outputs),
      state.failure === null ? null : JSON.stringify(state.failure),
      state.pending,
      state.attention === null ? null : JSON.stringify(state.attention),
      JSON.stringify(logRows(id, transition.log)),
      state.pivotStarted,
    ],
  );
  return rows.length === 1;
}

/** Sagas per name and status that are not finished, with the oldest update among them. */
export interface SagaCounts {
  readonly saga: string;
  readonly status: SagaStatus;
  readonly count: number;
  readonly oldestUpdate: Date;
}

/** Counts unfinished sagas for gauges; served by the status index. */
export async function countUnfinished(db: Queryable): Promise<SagaCounts[]> {
  const { rows } = await db.query<{
    saga: string;
    status: SagaStatus;
    count: string;
    oldest_update: Date;
  }>(
    `select saga, status, count(*) as count, min(updated_at) as oldest_update
     from replikit_sagas
     where status in ('running', 'compensating', 'needs_attention')
     group by saga, status`,
  );
  return rows.map((row) => ({
    saga: row.saga,
    status: row.status,
    count: Number(row.count),
    oldestUpdate: row.oldest_update,
  }));
}
