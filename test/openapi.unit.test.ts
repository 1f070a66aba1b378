import { describe, expect, it } from 'vitest';
import { z } from 'zod';

import { serviceDocument, type ServiceParts } from '../src/app/api.js';
import { createApp, type AppOptions } from '../src/app/app.js';
import { loadConfig } from '../src/app/config.js';
import { named, openApiDocument, openApiPath, type ApiOperation } from '../src/http/openapi.js';
import { expressRoutes, openApiProblems } from './support/openapi.js';

/** Stands in for the app's collaborators: building the app calls none of them. */
const stub = new Proxy({}, { get: (_target, key) => (key === 'then' ? undefined : () => ({})) });

function appWith(parts: ServiceParts) {
  const options = {
    config: loadConfig({}),
    logger: stub,
    cluster: stub,
    registry: stub,
    ...(parts.profiles ? { profiles: stub } : {}),
    ...(parts.transfers ? { transfers: stub } : {}),
    ...(parts.orders ? { orders: stub } : {}),
    ...(parts.sagas ? { sagaEngines: [stub] } : {}),
  } as unknown as AppOptions;
  return createApp(options);
}

/** `GET /users/{id}`, sorted: the routes a document describes. */
function documented(document: Readonly<Record<string, unknown>>): string[] {
  const paths = document.paths as Record<string, Record<string, unknown>>;
  return Object.entries(paths)
    .flatMap(([path, item]) => Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`))
    .sort();
}

function served(app: ReturnType<typeof createApp>): string[] {
  return expressRoutes(app)
    .map((route) => `${route.method.toUpperCase()} ${openApiPath(route.path)}`)
    .sort();
}

const ALL: ServiceParts = { profiles: true, transfers: true, orders: true, sagas: true };
const NONE: ServiceParts = { profiles: false, transfers: false, orders: false, sagas: false };

describe('the OpenAPI document', () => {
  it.each([
    ['every part', ALL],
    ['no demo part', NONE],
    ['transfers and sagas only', { ...NONE, transfers: true, sagas: true }],
  ])(
    'describes exactly the routes the app serves, with %s mounted',
    (_what, parts: ServiceParts) => {
      const app = appWith(parts);
      expect(served(app).length).toBeGreaterThan(4);
      expect(documented(serviceDocument(parts))).toEqual(served(app));
    },
  );

  it('the comparison sees a route added without a description, and a description without a route', () => {
    const app = appWith(ALL);
    app.get('/undocumented', (_req, res) => res.end());
    expect(documented(serviceDocument(ALL))).not.toEqual(served(app));
    expect(documented(serviceDocument(ALL))).not.toEqual(
      served(appWith({ ...ALL, orders: false })),
    );
  });

  it('is served at GET /openapi.json by the app it describes', async () => {
    const app = appWith(ALL);
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    try {
      const { port } = server.address() as { port: number };
      const response = await fetch(`http://127.0.0.1:${port}/openapi.json`);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toMatch(/^application\/json/);
      expect(await response.json()).toEqual(serviceDocument(ALL));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('is a valid OpenAPI 3.1 document', () => {
    for (const parts of [ALL, NONE]) expect(openApiProblems(serviceDocument(parts))).toEqual([]);
  });

  it('answers every refusal as problem+json with a code, and lists the codes of each status', () => {
    const document = serviceDocument(ALL) as {
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
    };
    const getUser = document.paths['/users/{id}']!['get']!.responses;
    expect(getUser['404']).toMatchObject({
      content: {
        'application/problem+json': {
          schema: {
            allOf: [
              { $ref: '#/components/schemas/Problem' },
              { properties: { code: { enum: ['NOT_FOUND'] } } },
            ],
          },
        },
      },
    });
    for (const [path, item] of Object.entries(document.paths)) {
      // A readiness probe's 503 is its answer (which nodes answer), not a refusal.
      if (path === '/readyz') continue;
      for (const [method, operation] of Object.entries(item)) {
        for (const [status, response] of Object.entries(operation.responses)) {
          if (Number(status) < 400) continue;
          const content = (response as { content?: Record<string, unknown> }).content ?? {};
          expect(Object.keys(content), `${method} ${path} ${status}`).toEqual([
            'application/problem+json',
          ]);
        }
      }
    }
    const problem = (serviceDocument(ALL).components as { schemas: Record<string, unknown> })
      .schemas['Problem'] as { required: string[] };
    expect(problem.required).toEqual(expect.arrayContaining(['type', 'title', 'status', 'code']));
  });
});

describe('openApiProblems', () => {
  const operation: ApiOperation = {
    method: 'get',
    path: '/things/:id',
    operationId: 'getThing',
    summary: 'A thing',
    tags: ['things'],
    params: z.object({ id: z.uuid() }),
    responses: { 200: { description: 'The thing.', schema: z.object({ id: z.string() }) } },
    problems: { NOT_FOUND: 'no such thing' },
  };

  it('finds nothing wrong with a small valid document', () => {
    expect(openApiProblems(openApiDocument({ title: 't', version: '1' }, [operation]))).toEqual([]);
  });

  it('finds a missing path parameter, a dangling reference, a bad status, a bad schema and a 3.0 version', () => {
    const document = JSON.parse(
      JSON.stringify(openApiDocument({ title: 't', version: '1' }, [operation])),
    ) as {
      openapi: string;
      paths: Record<string, { get: Record<string, unknown> }>;
    };
    document.openapi = '3.0.3';
    const get = document.paths['/things/{id}']!.get;
    get['parameters'] = [];
    (get['responses'] as Record<string, unknown>)['20x'] = {
      description: 'no',
      content: { 'application/json': { schema: { $ref: '#/components/schemas/Nothing' } } },
    };
    (get['responses'] as Record<string, unknown>)['201'] = {
      description: 'bad',
      content: { 'application/json': { schema: { type: 'text', pattern: '(' } } },
    };
    expect(openApiProblems(document)).toEqual([
      'openapi is "3.0.3", not 3.1.x',
      '#/paths/~1things~1{id}/get/responses/20x/content/application~1json/schema: $ref #/components/schemas/Nothing resolves to nothing',
      'GET /things/{id}: {id} has no path parameter',
      'GET /things/{id} 201/application/json/schema: unknown type "text"',
      'GET /things/{id} 201/application/json/schema: pattern "(" is not an ECMA-262 regular expression',
      'GET /things/{id} 20x: not a status code',
    ]);
  });

  it('refuses two routes described twice and two schemas under one name', () => {
    expect(() => openApiDocument({ title: 't', version: '1' }, [operation, operation])).toThrow(
      'GET /things/:id is described twice',
    );
    const other = (path: string, schema: z.ZodType): ApiOperation => ({
      ...operation,
      method: 'post',
      path,
      operationId: path,
      body: named('Thing', schema),
    });
    expect(() =>
      openApiDocument({ title: 't', version: '1' }, [
        other('/a/:id', z.string()),
        other('/b/:id', z.number()),
      ]),
    ).toThrow('two different schemas are named Thing');
  });
});
