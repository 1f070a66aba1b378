/**
 * Two checks of an OpenAPI document that need no validator package: the routes an Express app
 * really serves, and the structure OpenAPI 3.1 requires of the parts our documents use.
 */
import type express from 'express';

/** A route an Express app serves: its method (lower case) and its Express path. */
export interface ServedRoute {
  readonly method: string;
  readonly path: string;
}

interface Layer {
  readonly route?: { readonly path: string; readonly methods: Record<string, boolean> };
  readonly handle?: { readonly stack?: readonly Layer[] };
  readonly rawPath?: unknown;
  readonly slash?: boolean;
}

/**
 * Every route of `app`, walking its router and the routers mounted in it (Express 5 keeps them
 * in `app.router.stack`). A `get` route answers HEAD too; that is not listed.
 */
export function expressRoutes(app: express.Express): ServedRoute[] {
  const routes: ServedRoute[] = [];
  const walk = (stack: readonly Layer[], prefix: string): void => {
    for (const layer of stack) {
      if (layer.route !== undefined) {
        for (const [method, on] of Object.entries(layer.route.methods)) {
          if (on && method !== '_all') routes.push({ method, path: prefix + layer.route.path });
        }
      } else if (layer.handle?.stack !== undefined) {
        const mount =
          layer.slash === true || typeof layer.rawPath !== 'string' ? '' : layer.rawPath;
        walk(layer.handle.stack, prefix + mount);
      }
    }
  };
  walk((app as unknown as { router: { stack: readonly Layer[] } }).router.stack, '');
  return routes;
}

type Json = Record<string, unknown>;

const ROOT_KEYS = new Set([
  'openapi',
  'info',
  'jsonSchemaDialect',
  'servers',
  'paths',
  'webhooks',
  'components',
  'security',
  'tags',
  'externalDocs',
]);
const METHODS = new Set(['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']);
const PATH_ITEM_KEYS = new Set([
  ...METHODS,
  '$ref',
  'summary',
  'description',
  'servers',
  'parameters',
]);
const OPERATION_KEYS = new Set([
  'tags',
  'summary',
  'description',
  'externalDocs',
  'operationId',
  'parameters',
  'requestBody',
  'responses',
  'callbacks',
  'deprecated',
  'security',
  'servers',
]);
const COMPONENT_KEYS = new Set([
  'schemas',
  'responses',
  'parameters',
  'examples',
  'requestBodies',
  'headers',
  'securitySchemes',
  'links',
  'callbacks',
  'pathItems',
]);
const SCHEMA_TYPES = new Set(['string', 'number', 'integer', 'boolean', 'object', 'array', 'null']);
/** Header parameters OpenAPI says are ignored: they cannot be described as parameters. */
const RESERVED_HEADERS = new Set(['accept', 'content-type', 'authorization']);

const isObject = (value: unknown): value is Json =>
  typeof value === 'object' && value !== null && !Array.isArray(value);
const extension = (key: string): boolean => key.startsWith('x-');

/** Follows a local JSON pointer (`#/components/schemas/User`) in `document`. */
function resolvePointer(document: Json, ref: string): unknown {
  if (!ref.startsWith('#/')) return undefined;
  let node: unknown = document;
  for (const raw of ref.slice(2).split('/')) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (!isObject(node) || !(key in node)) return undefined;
    node = node[key];
  }
  return node;
}

/**
 * What is wrong with `document` as an OpenAPI 3.1 document, as sentences (empty when nothing):
 * the required fields and allowed keys of the root, path items, operations, parameters, request
 * bodies, responses, headers and components; path templates matched by path parameters; unique
 * operation ids and parameters; every local `$ref` resolving; and schemas that are JSON Schema
 * (known types, compiling patterns, well-formed `required` and `enum`).
 */
export function openApiProblems(document: unknown): string[] {
  const problems: string[] = [];
  if (!isObject(document)) return ['the document is not an object'];
  const root = document;
  const deref = (value: unknown): unknown =>
    isObject(value) && typeof value.$ref === 'string' ? resolvePointer(root, value.$ref) : value;

  for (const key of Object.keys(root)) {
    if (!ROOT_KEYS.has(key) && !extension(key)) problems.push(`unknown root field ${key}`);
  }
  if (typeof root.openapi !== 'string' || !/^3\.1\.\d+$/.test(root.openapi))
    problems.push(`openapi is ${JSON.stringify(root.openapi)}, not 3.1.x`);
  const info = root.info;
  if (!isObject(info) || typeof info.title !== 'string' || typeof info.version !== 'string')
    problems.push('info needs a title and a version');
  if (root.paths === undefined && root.components === undefined && root.webhooks === undefined)
    problems.push('a document needs paths, components or webhooks');

  // Every local reference resolves, wherever it is.
  const visitRefs = (node: unknown, at: string): void => {
    if (Array.isArray(node)) node.forEach((item, i) => visitRefs(item, `${at}/${i}`));
    if (!isObject(node)) return;
    if (typeof node.$ref === 'string' && resolvePointer(root, node.$ref) === undefined)
      problems.push(`${at}: $ref ${node.$ref} resolves to nothing`);
    for (const [key, value] of Object.entries(node))
      visitRefs(value, `${at}/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`);
  };
  visitRefs(root, '#');

  const checkSchema = (schema: unknown, at: string): void => {
    if (typeof schema === 'boolean') return;
    if (!isObject(schema)) {
      problems.push(`${at}: a schema must be an object or a boolean`);
      return;
    }
    const types = Array.isArray(schema.type)
      ? schema.type
      : schema.type === undefined
        ? []
        : [schema.type];
    for (const type of types) {
      if (typeof type !== 'string' || !SCHEMA_TYPES.has(type))
        problems.push(`${at}: unknown type ${JSON.stringify(type)}`);
    }
    if (schema.pattern !== undefined) {
      try {
        if (typeof schema.pattern !== 'string') throw new TypeError('not a string');
        new RegExp(schema.pattern, 'u');
      } catch {
        problems.push(
          `${at}: pattern ${JSON.stringify(schema.pattern)} is not an ECMA-262 regular expression`,
        );
      }
    }
    if (
      schema.required !== undefined &&
      (!Array.isArray(schema.required) ||
        schema.required.some((name) => typeof name !== 'string') ||
        new Set(schema.required).size !== schema.required.length)
    )
      problems.push(`${at}: required must list distinct property names`);
    if (schema.enum !== undefined && (!Array.isArray(schema.enum) || schema.enum.length === 0))
      problems.push(`${at}: enum must be a non-empty array`);
    for (const key of ['$schema', '$id'])
      if (key in schema) problems.push(`${at}: ${key} inside a document`);
    for (const key of ['properties', 'patternProperties', '$defs']) {
      const map = schema[key];
      if (map === undefined) continue;
      if (!isObject(map)) problems.push(`${at}/${key}: must be an object`);
      else for (const [name, sub] of Object.entries(map)) checkSchema(sub, `${at}/${key}/${name}`);
    }
    for (const key of ['items', 'additionalProperties', 'propertyNames', 'not', 'contains']) {
      if (schema[key] !== undefined) checkSchema(schema[key], `${at}/${key}`);
    }
    for (const key of ['allOf', 'anyOf', 'oneOf', 'prefixItems']) {
      const list = schema[key];
      if (list === undefined) continue;
      if (!Array.isArray(list) || list.length === 0)
        problems.push(`${at}/${key}: must be a non-empty array`);
      else list.forEach((sub, i) => checkSchema(sub, `${at}/${key}/${i}`));
    }
  };

  const checkContent = (content: unknown, at: string): void => {
    if (!isObject(content) || Object.keys(content).length === 0) {
      problems.push(`${at}: content must map media types to media type objects`);
      return;
    }
    for (const [type, media] of Object.entries(content)) {
      if (!/^[\w.+-]+\/[\w.+*-]+/.test(type)) problems.push(`${at}: ${type} is not a media type`);
      if (!isObject(media)) problems.push(`${at}/${type}: must be an object`);
      else if (media.schema !== undefined) checkSchema(media.schema, `${at}/${type}/schema`);
    }
  };

  const checkHeader = (header: unknown, at: string): void => {
    const resolved = deref(header);
    if (!isObject(resolved)) {
      problems.push(`${at}: a header must be an object`);
      return;
    }
    if ('name' in resolved || 'in' in resolved) problems.push(`${at}: a header has no name or in`);
    if ((resolved.schema === undefined) === (resolved.content === undefined))
      problems.push(`${at}: a header has either schema or content`);
    if (resolved.schema !== undefined) checkSchema(resolved.schema, `${at}/schema`);
  };

  const checkParameter = (
    parameter: unknown,
    at: string,
  ): { name: string; in: string } | undefined => {
    const resolved = deref(parameter);
    if (!isObject(resolved)) {
      problems.push(`${at}: a parameter must be an object`);
      return undefined;
    }
    const { name } = resolved;
    const where = resolved.in;
    if (typeof name !== 'string' || name === '') problems.push(`${at}: a parameter needs a name`);
    if (where !== 'query' && where !== 'header' && where !== 'path' && where !== 'cookie')
      problems.push(`${at}: in is ${JSON.stringify(where)}`);
    if (where === 'path' && resolved.required !== true)
      problems.push(`${at}: path parameter ${String(name)} must be required`);
    if (where === 'header' && typeof name === 'string' && RESERVED_HEADERS.has(name.toLowerCase()))
      problems.push(`${at}: header ${name} cannot be a parameter`);
    if ((resolved.schema === undefined) === (resolved.content === undefined))
      problems.push(`${at}: a parameter has either schema or content`);
    if (resolved.schema !== undefined) checkSchema(resolved.schema, `${at}/schema`);
    return typeof name === 'string' && typeof where === 'string' ? { name, in: where } : undefined;
  };

  const operationIds = new Set<string>();
  const templates = new Map<string, string>();
  const paths = isObject(root.paths) ? root.paths : {};
  for (const [path, item] of Object.entries(paths)) {
    const at = `paths ${path}`;
    if (!path.startsWith('/')) problems.push(`${at}: a path starts with /`);
    const template = path.replace(/\{[^}]*\}/g, '{}');
    const same = templates.get(template);
    if (same !== undefined) problems.push(`${at}: the same template as ${same}`);
    templates.set(template, path);
    const placeholders = [...path.matchAll(/\{([^}]*)\}/g)].map((match) => match[1]!);
    if (!isObject(item)) {
      problems.push(`${at}: a path item must be an object`);
      continue;
    }
    for (const [method, operation] of Object.entries(item)) {
      if (!PATH_ITEM_KEYS.has(method) && !extension(method)) {
        problems.push(`${at}: unknown field ${method}`);
        continue;
      }
      if (!METHODS.has(method)) continue;
      const opAt = `${method.toUpperCase()} ${path}`;
      if (!isObject(operation)) {
        problems.push(`${opAt}: an operation must be an object`);
        continue;
      }
      for (const key of Object.keys(operation)) {
        if (!OPERATION_KEYS.has(key) && !extension(key))
          problems.push(`${opAt}: unknown field ${key}`);
      }
      if (typeof operation.operationId === 'string') {
        if (operationIds.has(operation.operationId))
          problems.push(`${opAt}: operationId ${operation.operationId} is not unique`);
        operationIds.add(operation.operationId);
      }
      const parameters = Array.isArray(operation.parameters) ? operation.parameters : [];
      const seen = new Set<string>();
      const pathParameters = new Set<string>();
      parameters.forEach((parameter, i) => {
        const key = checkParameter(parameter, `${opAt} parameters/${i}`);
        if (key === undefined) return;
        const id = `${key.in}:${key.name.toLowerCase()}`;
        if (seen.has(id)) problems.push(`${opAt}: parameter ${key.name} in ${key.in} twice`);
        seen.add(id);
        if (key.in === 'path') pathParameters.add(key.name);
      });
      for (const placeholder of placeholders) {
        if (!pathParameters.has(placeholder))
          problems.push(`${opAt}: {${placeholder}} has no path parameter`);
      }
      for (const name of pathParameters) {
        if (!placeholders.includes(name))
          problems.push(`${opAt}: path parameter ${name} is not in the path`);
      }
      if (operation.requestBody !== undefined) {
        const body = deref(operation.requestBody);
        if (!isObject(body)) problems.push(`${opAt}: requestBody must be an object`);
        else checkContent(body.content, `${opAt} requestBody`);
      }
      const responses = operation.responses;
      if (!isObject(responses) || Object.keys(responses).length === 0) {
        problems.push(`${opAt}: responses must list at least one response`);
        continue;
      }
      for (const [status, response] of Object.entries(responses)) {
        const resAt = `${opAt} ${status}`;
        if (!/^[1-5](\d\d|XX)$/.test(status) && status !== 'default' && !extension(status))
          problems.push(`${resAt}: not a status code`);
        const resolved = deref(response);
        if (!isObject(resolved) || typeof resolved.description !== 'string') {
          problems.push(`${resAt}: a response needs a description`);
          continue;
        }
        if (resolved.content !== undefined) checkContent(resolved.content, resAt);
        if (resolved.headers !== undefined) {
          if (!isObject(resolved.headers)) problems.push(`${resAt}: headers must be an object`);
          else
            for (const [name, header] of Object.entries(resolved.headers)) {
              if (name.toLowerCase() === 'content-type')
                problems.push(`${resAt}: Content-Type is not described as a header`);
              checkHeader(header, `${resAt} header ${name}`);
            }
        }
      }
    }
  }

  if (root.components !== undefined) {
    if (!isObject(root.components)) problems.push('components must be an object');
    else
      for (const [kind, map] of Object.entries(root.components)) {
        if (!COMPONENT_KEYS.has(kind) && !extension(kind)) {
          problems.push(`components: unknown field ${kind}`);
          continue;
        }
        if (!isObject(map)) {
          problems.push(`components/${kind}: must be an object`);
          continue;
        }
        for (const [name, value] of Object.entries(map)) {
          const at = `components/${kind}/${name}`;
          if (!/^[a-zA-Z0-9.\-_]+$/.test(name)) problems.push(`${at}: not a component name`);
          if (kind === 'schemas') checkSchema(value, at);
          if (kind === 'parameters') checkParameter(value, at);
          if (kind === 'headers') checkHeader(value, at);
        }
      }
  }
  return problems;
}
