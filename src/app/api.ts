import { readFileSync } from 'node:fs';

import { z } from 'zod';

import {
  named,
  openApiDocument,
  type ApiOperation,
  type OpenApiDocument,
} from '../http/openapi.js';
import { SAGA_ADMIN_API } from '../http/sagas.js';
import { ORDERS_API } from './orders/routes.js';
import { PROFILES_API } from './profiles.js';
import { TRANSFERS_API } from './transfers.js';
import { USERS_API } from './users.js';

const nodeSchema = z.strictObject({
  name: z.string(),
  role: z.enum(['primary', 'replica']),
  reachable: z.boolean(),
  inRecovery: z.boolean().nullable().describe('A replica showing false was promoted'),
  currentLsn: z.string().optional().describe("The primary's WAL position"),
  replayLsn: z.string().optional().describe("A replica's replay position"),
  lagBytes: z.number().int().min(0).optional(),
  error: z.string().optional().describe('Why the node is unreachable'),
});

const readiness = named(
  'Readiness',
  z.strictObject({
    status: z.enum(['ok', 'degraded', 'unavailable']),
    nodes: z.array(nodeSchema).describe('The primary first, then the replicas'),
  }),
);

/** The service's own routes: probes, metrics, and this description. */
export const SERVICE_API: readonly ApiOperation[] = [
  {
    method: 'get',
    path: '/healthz',
    operationId: 'health',
    summary: 'Liveness: 200 while the process runs',
    tags: ['service'],
    responses: {
      200: {
        description: 'The process runs.',
        schema: z.strictObject({ status: z.literal('ok') }),
      },
    },
  },
  {
    method: 'get',
    path: '/readyz',
    operationId: 'readiness',
    summary: 'Readiness: 200 when the primary answers within the deadline',
    description: '`degraded` when a replica does not answer; every node is listed either way.',
    tags: ['service'],
    responses: {
      200: { description: 'The primary answers.', schema: readiness },
      503: { description: 'The primary does not answer.', schema: readiness },
    },
  },
  {
    method: 'get',
    path: '/metrics',
    operationId: 'metrics',
    summary: 'Prometheus metrics',
    description:
      'OpenMetrics (with exemplars) when `Accept` prefers `application/openmetrics-text`, the classic text format otherwise.',
    tags: ['service'],
    responses: {
      200: {
        description: 'The metrics.',
        contentType: 'text/plain',
        schema: z.string(),
      },
    },
  },
  {
    method: 'get',
    path: '/openapi.json',
    operationId: 'openApi',
    summary: 'This description of the API (OpenAPI 3.1)',
    tags: ['service'],
    responses: {
      200: {
        description: 'The OpenAPI document.',
        schema: z.record(z.string(), z.unknown()),
      },
    },
  },
];

/** Which of the demo's parts a service mounts; see `createApp`. */
export interface ServiceParts {
  readonly profiles: boolean;
  readonly transfers: boolean;
  readonly orders: boolean;
  readonly sagas: boolean;
}

/** The routes a service with `parts` serves, in mounting order. */
export function serviceOperations(parts: ServiceParts): readonly ApiOperation[] {
  return [
    ...SERVICE_API,
    ...USERS_API,
    ...(parts.profiles ? PROFILES_API : []),
    ...(parts.transfers ? TRANSFERS_API : []),
    ...(parts.orders ? ORDERS_API : []),
    ...(parts.sagas ? SAGA_ADMIN_API : []),
  ];
}

const DESCRIPTION = `The replikit demo service: read routing with consistency tokens (\`/users\`), event sourcing and CQRS (\`/users/{id}/profile\`), two-phase commit (\`/transfers\`), sagas and choreography (\`/orders\`) and the saga admin API (\`/sagas\`, to mount behind authentication).

Every refusal and failure is \`application/problem+json\` (RFC 9457) with a \`code\`: the statuses below list the codes each operation answers with. A route that does not exist answers 404.

Reads are routed by \`X-Consistency\` (read-your-writes by default). Every response of a consistency session carries the merged \`X-Consistency-Token\`: send it with the next request to read your own writes from a replica.`;

/** The package's version, from its package.json (two folders up, from `src/app` as from `dist/app`). */
function packageVersion(): string {
  const text = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  return (JSON.parse(text) as { version: string }).version;
}

/** The OpenAPI 3.1 document of a service with `parts`, as `GET /openapi.json` serves it. */
export function serviceDocument(parts: ServiceParts): OpenApiDocument {
  return openApiDocument(
    { title: 'replikit demo service', version: packageVersion(), description: DESCRIPTION },
    serviceOperations(parts),
  );
}
