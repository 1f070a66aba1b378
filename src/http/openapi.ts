import type { RequestHandler } from 'express';
import { z } from 'zod';

import { CONSISTENCY_HEADERS } from './consistency.js';
import { ERROR_STATUS, PROBLEM_CONTENT_TYPE } from './problem-details.js';

/** The HTTP methods an {@link ApiOperation} may have. */
export type ApiMethod = 'get' | 'post' | 'put' | 'patch' | 'delete';

/** A schema with its name among the document's `components.schemas`. */
export interface NamedSchema {
  readonly name: string;
  readonly schema: z.ZodType;
}

/**
 * Names `schema` for {@link openApiDocument}: it is described once, under `components.schemas`,
 * and referenced wherever it is used.
 */
export function named(name: string, schema: z.ZodType): NamedSchema {
  return { name, schema };
}

/** A request or response header. */
export interface ApiHeader {
  readonly name: string;
  readonly description: string;
  readonly schema: z.ZodType;
  /** Request headers only: the request is refused without it. Default false. */
  readonly required?: boolean;
}

/** One documented answer of an operation. */
export interface ApiResponse {
  readonly description: string;
  /** The body's schema; none for an empty body. */
  readonly schema?: z.ZodType | NamedSchema;
  /** Default `application/json`. */
  readonly contentType?: string;
  readonly headers?: readonly ApiHeader[];
}

/**
 * One route of an Express app, described next to the route itself from the zod schemas its
 * handler parses: {@link openApiDocument} turns a list of them into an OpenAPI 3.1 document.
 */
export interface ApiOperation {
  readonly method: ApiMethod;
  /** The Express path, such as `/users/:id`. */
  readonly path: string;
  readonly operationId: string;
  readonly summary: string;
  readonly description?: string;
  readonly tags: readonly string[];
  /** The path parameters' schema, as the handler parses `req.params`. */
  readonly params?: z.ZodObject;
  /** The query's schema, as the handler parses `req.query`. */
  readonly query?: z.ZodObject;
  readonly headers?: readonly ApiHeader[];
  /** The JSON body's schema, as the handler parses `req.body`. */
  readonly body?: z.ZodType | NamedSchema;
  readonly responses: Readonly<Record<number, ApiResponse>>;
  /**
   * The error codes the operation answers with (each at the status {@link ERROR_STATUS} gives
   * it), and when.
   */
  readonly problems?: Readonly<Record<string, string>>;
  /**
   * Runs inside a consistency session (behind {@link consistencyMiddleware}): takes
   * `X-Consistency`, `X-Consistency-Token` and the token cookie, answers with the merged token.
   * Default false.
   */
  readonly session?: boolean;
}

/** What the document says about the API as a whole. */
export interface OpenApiInfo {
  readonly title: string;
  readonly version: string;
  readonly description?: string;
}

/** An OpenAPI 3.1 document, as JSON. */
export type OpenApiDocument = Readonly<Record<string, unknown>>;

/**
 * An RFC 9457 problem as every refusal carries it: `code` is the stable name of what went wrong,
 * for programs; `detail` says it for people.
 */
export const problemSchema = z
  .object({
    type: z.string().describe('`urn:replikit:problem:<code>`, or `about:blank`'),
    title: z.string().describe('The HTTP status phrase'),
    status: z.number().int().min(400).max(599),
    detail: z.string().optional().describe('What went wrong and what to do about it'),
    instance: z.string().optional().describe('The request path'),
    code: z.string().describe('What went wrong, as a stable name for programs'),
    details: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('Facts behind a client error: the fields that were wrong, the account, the key'),
    traceId: z.string().optional().describe('The trace of this request'),
  })
  .describe('A refusal or failure, as application/problem+json (RFC 9457)');

const CONSISTENCY_DESCRIPTION =
  'How fresh a read must be: `strong` (the primary), `read-your-writes` (the default: a replica that has replayed the token), `monotonic`, `bounded-staleness=<ms>`, `eventual` or `sticky-window=<ms>` (at most a day).';

/** The request headers of a consistency session (see {@link consistencyMiddleware}). */
export const SESSION_REQUEST_HEADERS: readonly ApiHeader[] = [
  {
    name: CONSISTENCY_HEADERS.consistency,
    description: CONSISTENCY_DESCRIPTION,
    schema: z
      .string()
      .regex(
        /^(strong|read-your-writes|monotonic|eventual|bounded-staleness=\d{1,9}|sticky-window=\d{1,9})$/,
      ),
  },
  {
    name: CONSISTENCY_HEADERS.token,
    description:
      'The token from an earlier response (`rk1.<system id>.<timeline>.<written>.<seen>.<written at>`, base 36). A token of another cluster or timeline is not trusted (the read goes to the primary); one ahead of the primary is refused.',
    schema: z
      .string()
      .max(128)
      .regex(/^rk1(\.(0|[1-9a-z][0-9a-z]{0,12})){5}$/),
  },
];

/** The cookie that may carry the token instead of the header (browsers). */
const TOKEN_COOKIE = 'replikit_token';

/** The response headers of a consistency session. */
export const SESSION_RESPONSE_HEADERS: readonly ApiHeader[] = [
  {
    name: CONSISTENCY_HEADERS.token,
    description:
      'The session token merged with this request’s reads and writes: send it with the next request.',
    schema: z.string(),
  },
  {
    name: CONSISTENCY_HEADERS.servedBy,
    description: 'Reads: `primary`, or the name of the replica that answered.',
    schema: z.string(),
  },
  {
    name: CONSISTENCY_HEADERS.tokenStatus,
    description:
      '`untrusted` when the request’s token came from another cluster or timeline (the read went to the primary).',
    schema: z.literal('untrusted'),
  },
  {
    name: 'Set-Cookie',
    description: `The merged token as the \`${TOKEN_COOKIE}\` cookie, when the request carried one.`,
    schema: z.string(),
  },
];

/** What any consistency session may be refused with. */
const SESSION_PROBLEMS: Readonly<Record<string, string>> = {
  CONSISTENCY_INVALID:
    '`X-Consistency` names no level, or a bound that is not a whole number of ms up to a day',
  TOKEN_MALFORMED: 'the token is not one this service wrote',
  TOKEN_AHEAD: 'the token is ahead of the primary: forged, or from another cluster',
  NO_NODE_AVAILABLE: 'no node can serve the request now; retry later',
  CLUSTER_CLOSED: 'the service is shutting down',
  REPLICA_WAIT_TIMEOUT:
    'no replica caught up within the wait, and the service is set to refuse rather than read the primary',
};

/** A `Location` response header. */
export function locationHeader(description: string): ApiHeader {
  return { name: 'Location', description, schema: z.string() };
}

/** What any request with a body may be refused with, before its handler sees it. */
const BODY_RESPONSES: Readonly<Record<number, string>> = {
  400: 'The body is not valid JSON.',
  413: 'The body is larger than the service accepts (`REPLIKIT_BODY_LIMIT`).',
  415: 'The body is not `application/json`.',
};

/** Express's `/users/:id` as OpenAPI's `/users/{id}`. */
export function openApiPath(path: string): string {
  return path.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

function isNamed(schema: z.ZodType | NamedSchema): schema is NamedSchema {
  return !(schema instanceof z.ZodType);
}

type Json = Record<string, unknown>;

/** A schema as JSON Schema 2020-12 (OpenAPI 3.1's dialect), without the `$schema` line. */
function jsonSchema(schema: z.ZodType): Json {
  return withoutIds(z.toJSONSchema(schema, { io: 'input' }));
}

/**
 * A generated schema without `$schema` (the document names the dialect) and `$id` (in a document
 * a component's name is its id; zod's would be the reference URI, which is no valid `$id`).
 */
function withoutIds(schema: Json): Json {
  return Object.fromEntries(
    Object.entries(schema).filter(([key]) => key !== '$schema' && key !== '$id'),
  );
}

/** A schema reference or an inline schema, registering named ones on the way. */
function schemaOf(schema: z.ZodType | NamedSchema, named: Map<string, z.ZodType>): Json {
  if (!isNamed(schema)) return jsonSchema(schema);
  const known = named.get(schema.name);
  if (known !== undefined && known !== schema.schema)
    throw new Error(`two different schemas are named ${schema.name}`);
  named.set(schema.name, schema.schema);
  return { $ref: `#/components/schemas/${schema.name}` };
}

function headerObject(header: ApiHeader): Json {
  return { description: header.description, schema: jsonSchema(header.schema) };
}

/** The request parameters of a consistency session, by component name. */
function sessionParameters(): Record<string, Json> {
  const token = SESSION_REQUEST_HEADERS[1]!;
  return {
    ...Object.fromEntries(
      SESSION_REQUEST_HEADERS.map((header) => [
        componentName(header),
        { name: header.name, in: 'header', required: false, ...headerObject(header) },
      ]),
    ),
    ConsistencyCookie: {
      name: TOKEN_COOKIE,
      in: 'cookie',
      required: false,
      description: `The token, as a cookie instead of the \`${token.name}\` header.`,
      schema: jsonSchema(token.schema),
    },
  };
}

function parametersOf(where: 'path' | 'query', schema: z.ZodObject | undefined): Json[] {
  if (schema === undefined) return [];
  const object = jsonSchema(schema) as { properties?: Record<string, Json>; required?: string[] };
  const required = new Set(object.required ?? []);
  return Object.entries(object.properties ?? {}).map(([name, property]) => {
    const { description, ...rest } = property;
    return {
      name,
      in: where,
      required: where === 'path' || required.has(name),
      ...(typeof description === 'string' ? { description } : {}),
      schema: rest,
    };
  });
}

/** The problem answers of an operation, one per status, each listing its codes. */
function problemResponses(
  operation: ApiOperation,
): Map<number, { codes: string[]; notes: string[] }> {
  const byStatus = new Map<number, { codes: string[]; notes: string[] }>();
  const add = (status: number, code: string | undefined, note: string): void => {
    const entry = byStatus.get(status) ?? { codes: [], notes: [] };
    if (code !== undefined) entry.codes.push(code);
    entry.notes.push(code === undefined ? note : `\`${code}\`: ${note}`);
    byStatus.set(status, entry);
  };
  const problems = {
    ...operation.problems,
    ...(operation.session === true ? SESSION_PROBLEMS : {}),
  };
  for (const [code, note] of Object.entries(problems)) {
    const status = ERROR_STATUS[code];
    if (status === undefined) throw new Error(`${operation.operationId}: no status for ${code}`);
    add(status, code, note);
  }
  if (operation.body !== undefined) {
    for (const [status, note] of Object.entries(BODY_RESPONSES))
      add(Number(status), undefined, note);
  }
  return byStatus;
}

/** Where a session header is described once: `components.headers` or `components.parameters`. */
function componentName(header: ApiHeader): string {
  return header.name.replace(/-/g, '');
}

function responsesOf(operation: ApiOperation, named: Map<string, z.ZodType>): Json {
  const responses: Json = {};
  const sessionHeaders = operation.session === true ? SESSION_RESPONSE_HEADERS : [];
  for (const [status, response] of Object.entries(operation.responses)) {
    const headers: [string, Json][] = [
      ...(response.headers ?? []).map((h): [string, Json] => [h.name, headerObject(h)]),
      ...sessionHeaders.map((h): [string, Json] => [
        h.name,
        { $ref: `#/components/headers/${componentName(h)}` },
      ]),
    ];
    responses[status] = {
      description: response.description,
      ...(headers.length === 0 ? {} : { headers: Object.fromEntries(headers) }),
      ...(response.schema === undefined
        ? {}
        : {
            content: {
              [response.contentType ?? 'application/json']: {
                schema: schemaOf(response.schema, named),
              },
            },
          }),
    };
  }
  const problems = [...problemResponses(operation)].sort(([a], [b]) => a - b);
  for (const [status, { codes, notes }] of problems) {
    if (responses[status] !== undefined)
      throw new Error(`${operation.operationId}: status ${status} is both a success and a problem`);
    const problem = { $ref: '#/components/schemas/Problem' };
    responses[status] = {
      description: notes.join('\n\n'),
      content: {
        [PROBLEM_CONTENT_TYPE]: {
          schema:
            codes.length === 0 || codes.length !== notes.length
              ? problem
              : { allOf: [problem, { properties: { code: { enum: codes } } }] },
        },
      },
    };
  }
  return responses;
}

/**
 * Builds an OpenAPI 3.1 document from operations described beside their routes: parameters,
 * headers and bodies from the zod schemas the handlers parse (`z.toJSONSchema`, JSON Schema
 * 2020-12 as OpenAPI 3.1 uses it), and every refusal as `application/problem+json` with the codes
 * each status carries.
 *
 * ```ts
 * const document = openApiDocument({ title: 'my service', version: '1.0.0' }, [
 *   { method: 'get', path: '/users/:id', operationId: 'getUser', summary: 'A user', tags: ['users'],
 *     params: z.object({ id: z.uuid() }), responses: { 200: { description: 'the user', schema: user } },
 *     problems: { NOT_FOUND: 'no user has this id' } },
 * ]);
 * app.get('/openapi.json', serveOpenApi(document));
 * ```
 *
 * @throws Error when two operations share a method and path or an id, when a problem code has no
 *   status in {@link ERROR_STATUS}, or when two different schemas share a name.
 */
export function openApiDocument(
  info: OpenApiInfo,
  operations: readonly ApiOperation[],
): OpenApiDocument {
  const named = new Map<string, z.ZodType>([['Problem', problemSchema]]);
  const paths: Record<string, Record<string, Json>> = {};
  const ids = new Set<string>();
  for (const operation of operations) {
    const path = openApiPath(operation.path);
    const item = (paths[path] ??= {});
    if (item[operation.method] !== undefined)
      throw new Error(`${operation.method.toUpperCase()} ${operation.path} is described twice`);
    if (ids.has(operation.operationId))
      throw new Error(`two operations are named ${operation.operationId}`);
    ids.add(operation.operationId);
    const parameters = [
      ...parametersOf('path', operation.params),
      ...parametersOf('query', operation.query),
      ...(operation.headers ?? []).map((header) => ({
        name: header.name,
        in: 'header',
        required: header.required ?? false,
        ...headerObject(header),
      })),
      ...(operation.session === true
        ? Object.keys(sessionParameters()).map((name) => ({
            $ref: `#/components/parameters/${name}`,
          }))
        : []),
    ];
    item[operation.method] = {
      operationId: operation.operationId,
      summary: operation.summary,
      ...(operation.description === undefined ? {} : { description: operation.description }),
      tags: [...operation.tags],
      ...(parameters.length === 0 ? {} : { parameters }),
      ...(operation.body === undefined
        ? {}
        : {
            requestBody: {
              required: true,
              content: { 'application/json': { schema: schemaOf(operation.body, named) } },
            },
          }),
      responses: responsesOf(operation, named),
    };
  }

  const registry = z.registry<{ id: string }>();
  for (const [name, schema] of named) registry.add(schema, { id: name });
  const generated = z.toJSONSchema(registry, {
    io: 'input',
    uri: (id) => `#/components/schemas/${id}`,
  }).schemas;
  const schemas = Object.fromEntries(
    Object.entries(generated)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, schema]) => [name, withoutIds(schema as Json)]),
  );
  const sessions = operations.some((operation) => operation.session === true);
  return {
    openapi: '3.1.1',
    info: {
      title: info.title,
      version: info.version,
      ...(info.description === undefined ? {} : { description: info.description }),
    },
    paths,
    components: {
      schemas,
      ...(sessions
        ? {
            parameters: sessionParameters(),
            headers: Object.fromEntries(
              SESSION_RESPONSE_HEADERS.map((h) => [componentName(h), headerObject(h)]),
            ),
          }
        : {}),
    },
  };
}

/**
 * Serves `document` as JSON (serialised once: it changes only with the code).
 *
 * ```ts
 * app.get('/openapi.json', serveOpenApi(document));
 * ```
 */
export function serveOpenApi(document: OpenApiDocument): RequestHandler {
  const body = JSON.stringify(document);
  const openApi: RequestHandler = (_req, res) => {
    res.type('application/json').send(body);
  };
  return openApi;
}
