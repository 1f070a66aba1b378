import { Router } from 'express';
import { z } from 'zod';

import type { SagaDetails, SagaEngine, SagaRecord, StepRecord } from '../saga/index.js';
import { SagaError } from '../saga/index.js';
import { named, type ApiOperation } from './openapi.js';
import { parseInput } from './validation.js';

/** A saga as the admin API shows it. */
export interface SagaView {
  readonly id: string;
  readonly saga: string;
  readonly version: number;
  readonly status: string;
  /** The step running (or failed) forward, by name; absent once every step completed. */
  readonly step?: string;
  readonly attempt: number;
  readonly failure: SagaRecord['state']['failure'];
  readonly attention: SagaRecord['state']['attention'];
  /** Steps still to compensate, the next one first. */
  readonly pendingCompensations: readonly number[];
  readonly nextAttemptAt: string;
  readonly leaseOwner: string | null;
  readonly epoch: number;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
}

/** A saga with its input, outputs and step log. */
export interface SagaDetailsView extends SagaView {
  readonly input: unknown;
  readonly outputs: Readonly<Record<string, unknown>>;
  readonly steps: readonly StepView[];
}

/** One row of the step log. */
export interface StepView {
  readonly index: number;
  readonly name: string;
  readonly phase: StepRecord['phase'];
  readonly status: StepRecord['status'];
  readonly attempts: number;
  readonly output: unknown;
  readonly error: unknown;
  readonly startedAt: string;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
}

const STATUSES = [
  'running',
  'compensating',
  'completed',
  'compensated',
  'needs_attention',
] as const;

const idParam = z.strictObject({ id: z.uuid('must be a UUID') });
const listQuery = z.strictObject({
  status: z.enum(STATUSES, { error: `must be one of ${STATUSES.join(', ')}` }).optional(),
  saga: z
    .string()
    .regex(/^[a-z][a-z0-9_]{0,62}$/, 'must be a saga name')
    .optional(),
  /** Only sagas not updated for this long: the stuck-saga query. */
  idleForMs: z.coerce.number().int().min(0).max(31_536_000_000).optional(),
  /** Paging: sagas created before this time (the previous page's last `createdAt`). */
  before: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(50),
});

/** A saga's log row as the API shows it; `steps` names its steps by index. */
export function toSagaView(record: SagaRecord, stepNames: readonly string[] = []): SagaView {
  const step = stepNames[record.state.stepIndex];
  return {
    id: record.id,
    saga: record.saga,
    version: record.version,
    status: record.state.status,
    ...(step === undefined ? {} : { step }),
    attempt: record.state.attempt,
    failure: record.state.failure,
    attention: record.state.attention,
    pendingCompensations: record.state.pending,
    nextAttemptAt: record.nextAttemptAt.toISOString(),
    leaseOwner: record.owner,
    epoch: record.epoch,
    createdAt: record.createdAt.toISOString(),
    updatedAt: record.updatedAt.toISOString(),
    finishedAt: record.finishedAt?.toISOString() ?? null,
  };
}

/** Step names by index: the definition's when the engine has it, else those of the step log. */
function stepNamesOf(
  engine: SagaEngine,
  record: SagaRecord,
  steps: readonly StepRecord[] = [],
): string[] {
  const defined = engine.definitionOf(record)?.steps.map((step) => step.name);
  if (defined !== undefined) return defined;
  const names: string[] = [];
  for (const step of steps) names[step.index] = step.name;
  return names;
}

function toDetailsView(engine: SagaEngine, details: SagaDetails): SagaDetailsView {
  return {
    ...toSagaView(details.saga, stepNamesOf(engine, details.saga, details.steps)),
    input: details.saga.input,
    outputs: details.saga.state.outputs,
    steps: details.steps.map((step) => ({
      index: step.index,
      name: step.name,
      phase: step.phase,
      status: step.status,
      attempts: step.attempts,
      output: step.output,
      error: step.error,
      startedAt: step.startedAt.toISOString(),
      updatedAt: step.updatedAt.toISOString(),
      finishedAt: step.finishedAt?.toISOString() ?? null,
    })),
  };
}

/**
 * The saga query and admin API over an engine:
 *
 * - `GET /sagas/:id` → the saga with its input, outputs and step log;
 * - `GET /sagas?status=&saga=&idleForMs=&before=&limit=` → `{ sagas }`, newest first; with
 *   `idleForMs`, the sagas not updated for that long (stuck ones, with `status=running`);
 * - `POST /sagas/:id/retry` → 202, a saga that needs attention runs its failed action again;
 * - `POST /sagas/:id/compensate` → 202, a running saga (before its pivot) is compensated; the
 *   process holding it is fenced first.
 *
 * Errors: 404 `SAGA_NOT_FOUND`, 409 `SAGA_INVALID_STATE` (finished, past the pivot, not needing
 * attention), 409 `SAGA_PIVOT_IN_DOUBT` (compensate: its remote pivot was called and may have gone
 * through; the detail says to wait, or to retry a saga that needs attention). Given several engines (each with a saga log of its own), it serves them all. Mount
 * it behind your own authentication: it changes what sagas do.
 *
 * ```ts
 * app.use(sagaAdminRouter(engine));
 * ```
 */
export function sagaAdminRouter(engines: SagaEngine | readonly SagaEngine[]): Router {
  const all: readonly SagaEngine[] = Array.isArray(engines) ? engines : [engines as SagaEngine];
  const router = Router();

  /** The saga and the engine whose log holds it (each engine keeps its own). */
  async function find(id: string): Promise<{ engine: SagaEngine; details: SagaDetails }> {
    for (const engine of all) {
      const details = await engine.get(id);
      if (details !== undefined) return { engine, details };
    }
    throw new SagaError('SAGA_NOT_FOUND', `no saga has id ${id}`, { details: { id } });
  }

  router.get('/sagas/:id', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { engine, details } = await find(id);
    res.json(toDetailsView(engine, details));
  });

  router.get('/sagas', async (req, res) => {
    const query = parseInput(listQuery, req.query, 'query');
    const lists = await Promise.all(
      all.map(async (engine) =>
        (
          await engine.list({
            status: query.status,
            saga: query.saga,
            idleForMs: query.idleForMs,
            createdBefore: query.before === undefined ? undefined : new Date(query.before),
            limit: query.limit,
          })
        ).map((record) => ({ record, view: toSagaView(record, stepNamesOf(engine, record)) })),
      ),
    );
    const sagas = lists
      .flat()
      .sort((a, b) => b.record.createdAt.getTime() - a.record.createdAt.getTime())
      .slice(0, query.limit);
    res.json({ sagas: sagas.map((saga) => saga.view) });
  });

  router.post('/sagas/:id/retry', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { engine } = await find(id);
    const record = await engine.retry(id);
    res.status(202).json(toSagaView(record, stepNamesOf(engine, record)));
  });

  router.post('/sagas/:id/compensate', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { engine } = await find(id);
    const record = await engine.compensate(id);
    res.status(202).json(toSagaView(record, stepNamesOf(engine, record)));
  });

  return router;
}

const json = z.unknown().describe('Any JSON value');
const instant = z.iso.datetime();

/** A {@link SagaView} as the API describes it. */
export const sagaViewSchema = z.strictObject({
  id: z.uuid(),
  saga: z.string().describe("The saga definition's name"),
  version: z.number().int(),
  status: z.enum(STATUSES),
  step: z.string().optional().describe('The step running (or failed) forward'),
  attempt: z.number().int().min(0),
  failure: z.strictObject({ step: z.string(), reason: z.string(), message: z.string() }).nullable(),
  attention: z
    .strictObject({
      phase: z.enum(['forward', 'compensate']),
      step: z.string(),
      message: z.string(),
    })
    .nullable(),
  pendingCompensations: z
    .array(z.number().int().min(0))
    .describe('Steps still to compensate, the next one first'),
  nextAttemptAt: instant,
  leaseOwner: z.string().nullable(),
  epoch: z.number().int().min(0),
  createdAt: instant,
  updatedAt: instant,
  finishedAt: instant.nullable(),
}) satisfies z.ZodType<SagaView>;

/** A {@link StepView} as the API describes it. */
export const stepViewSchema = z.strictObject({
  index: z.number().int().min(0),
  name: z.string(),
  phase: z.enum(['run', 'compensate']),
  status: z.enum(['running', 'completed', 'rejected', 'failed', 'retrying', 'parked']),
  attempts: z.number().int().min(0),
  output: json,
  error: json,
  startedAt: instant,
  updatedAt: instant,
  finishedAt: instant.nullable(),
}) satisfies z.ZodType<StepView>;

/** A {@link SagaDetailsView} as the API describes it. */
export const sagaDetailsSchema = sagaViewSchema.extend({
  input: json,
  outputs: z.record(z.string(), json),
  steps: z.array(stepViewSchema),
}) satisfies z.ZodType<SagaDetailsView>;

const sagaView = named('Saga', sagaViewSchema);
const notFound = 'no saga has this id';

/** The routes of {@link sagaAdminRouter}, for an OpenAPI document ({@link openApiDocument}). */
export const SAGA_ADMIN_API: readonly ApiOperation[] = [
  {
    method: 'get',
    path: '/sagas/:id',
    operationId: 'getSaga',
    summary: 'A saga with its input, outputs and step log',
    tags: ['sagas'],
    session: true,
    params: idParam,
    responses: {
      200: { description: 'The saga.', schema: named('SagaDetails', sagaDetailsSchema) },
    },
    problems: { VALIDATION_FAILED: 'the id is not a UUID', SAGA_NOT_FOUND: notFound },
  },
  {
    method: 'get',
    path: '/sagas',
    operationId: 'listSagas',
    summary: 'Sagas, newest first',
    description:
      "With `idleForMs`, the sagas not updated for that long (the stuck ones, with `status=running`). Page with `before`: the previous page's last `createdAt`.",
    tags: ['sagas'],
    session: true,
    query: listQuery,
    responses: {
      200: {
        description: 'A page of sagas.',
        schema: named('SagaPage', z.strictObject({ sagas: z.array(sagaViewSchema) })),
      },
    },
    problems: { VALIDATION_FAILED: 'a query parameter is malformed or unknown' },
  },
  {
    method: 'post',
    path: '/sagas/:id/retry',
    operationId: 'retrySaga',
    summary: 'Run the failed action of a saga that needs attention again',
    tags: ['sagas'],
    session: true,
    params: idParam,
    responses: { 202: { description: 'The saga, running again.', schema: sagaView } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID',
      SAGA_NOT_FOUND: notFound,
      SAGA_INVALID_STATE: 'the saga does not need attention',
    },
  },
  {
    method: 'post',
    path: '/sagas/:id/compensate',
    operationId: 'compensateSaga',
    summary: 'Undo a running saga before its pivot',
    description: 'The process holding the saga is fenced first.',
    tags: ['sagas'],
    session: true,
    params: idParam,
    responses: { 202: { description: 'The saga, compensating.', schema: sagaView } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID',
      SAGA_NOT_FOUND: notFound,
      SAGA_INVALID_STATE: 'the saga has finished, or is past its pivot',
      SAGA_PIVOT_IN_DOUBT:
        'its remote pivot was called and may have gone through: wait, or retry a saga that needs attention',
    },
  },
];
