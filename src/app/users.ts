import { Router } from 'express';
import { z } from 'zod';

import { ReplikitError } from '../errors.js';
import { locationHeader, named, type ApiOperation } from '../http/openapi.js';
import { parseInput } from '../http/validation.js';
import type { Cluster } from '../routing/index.js';

/** A user as the API shows it. */
export interface User {
  readonly id: string;
  readonly name: string;
  readonly email: string;
  readonly version: number;
  readonly updatedAt: string;
}

interface UserRow {
  id: string;
  name: string;
  email: string;
  version: number;
  updated_at: Date;
}

const COLUMNS = 'id, name, email, version, updated_at';

const name = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters');
const email = z.email('must be an email address').max(320);
const createBody = z.strictObject({ name, email });
const patchBody = z
  .strictObject({ name: name.optional(), email: email.optional() })
  .refine(
    (body) => body.name !== undefined || body.email !== undefined,
    'give name, email or both',
  );
const idParam = z.strictObject({ id: z.uuid('must be a UUID') });
const listQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  after: z.uuid('must be a UUID').optional(),
});

function toUser(row: UserRow): User {
  return {
    id: row.id,
    name: row.name,
    email: row.email,
    version: row.version,
    updatedAt: row.updated_at.toISOString(),
  };
}

function notFound(id: string): ReplikitError {
  return new ReplikitError('NOT_FOUND', `no user ${id}`, { details: { id } });
}

function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: unknown }).code === '23505';
}

function emailTaken(value: string | undefined, cause: unknown): ReplikitError {
  return new ReplikitError('CONFLICT', `the email ${value ?? ''} is already taken`.trim(), {
    cause,
    details: { field: 'email' },
  });
}

/**
 * The demo resource of read routing: writes go to the primary and hand back a token; reads are
 * routed by the request's `X-Consistency` (read-your-writes by default).
 *
 * - `POST /users` `{name, email}` → 201 the user;
 * - `PATCH /users/:id` `{name?, email?}` → 200 the user, `version` + 1;
 * - `GET /users/:id` → 200 or 404;
 * - `GET /users?limit=&after=` → `{ items, next }`, in id order.
 */
export function usersRouter(cluster: Cluster): Router {
  const router = Router();

  router.post('/users', async (req, res) => {
    const body = parseInput(createBody, req.body, 'body');
    try {
      const { rows } = await cluster.write<UserRow>(
        `insert into users (name, email) values ($1, $2) returning ${COLUMNS}`,
        [body.name, body.email],
      );
      const user = toUser(rows[0]!);
      res.status(201).location(`/users/${user.id}`).json(user);
    } catch (err) {
      throw isUniqueViolation(err) ? emailTaken(body.email, err) : err;
    }
  });

  router.patch('/users/:id', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const body = parseInput(patchBody, req.body, 'body');
    try {
      const { rows } = await cluster.write<UserRow>(
        `update users set name = coalesce($2, name), email = coalesce($3, email), version = version + 1, updated_at = now()
         where id = $1 returning ${COLUMNS}`,
        [id, body.name ?? null, body.email ?? null],
      );
      const row = rows[0];
      if (row === undefined) throw notFound(id);
      res.json(toUser(row));
    } catch (err) {
      throw isUniqueViolation(err) ? emailTaken(body.email, err) : err;
    }
  });

  router.get('/users/:id', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { rows } = await cluster.read<UserRow>(`select ${COLUMNS} from users where id = $1`, [
      id,
    ]);
    const row = rows[0];
    if (row === undefined) throw notFound(id);
    res.json(toUser(row));
  });

  router.get('/users', async (req, res) => {
    const query = parseInput(listQuery, req.query, 'query');
    const { rows } = await cluster.read<UserRow>(
      `select ${COLUMNS} from users where $2::uuid is null or id > $2::uuid order by id limit $1`,
      [query.limit + 1, query.after ?? null],
    );
    const items = rows.slice(0, query.limit).map(toUser);
    res.json({ items, next: rows.length > query.limit ? (items.at(-1)?.id ?? null) : null });
  });

  return router;
}

/** A {@link User} as the API describes it. */
export const userSchema = z.strictObject({
  id: z.uuid(),
  name: z.string(),
  email: z.string(),
  version: z.number().int().min(1).describe('1 at creation, one more at each change'),
  updatedAt: z.iso.datetime(),
}) satisfies z.ZodType<User>;

const user = named('User', userSchema);
const userPage = named(
  'UserPage',
  z.strictObject({
    items: z.array(userSchema),
    next: z.uuid().nullable().describe('`after` for the next page; null on the last one'),
  }),
);

/** The routes of {@link usersRouter}, for the service's OpenAPI document. */
export const USERS_API: readonly ApiOperation[] = [
  {
    method: 'post',
    path: '/users',
    operationId: 'createUser',
    summary: 'Create a user',
    description:
      "Writes on the primary; the answer's token makes a later read (on any replica) see the user.",
    tags: ['users'],
    session: true,
    body: named('CreateUser', createBody),
    responses: {
      201: {
        description: 'The user, created.',
        schema: user,
        headers: [locationHeader('`/users/<id>`')],
      },
    },
    problems: {
      VALIDATION_FAILED: 'a field is missing or malformed',
      CONFLICT: 'the email is taken',
    },
  },
  {
    method: 'patch',
    path: '/users/:id',
    operationId: 'updateUser',
    summary: "Change a user's name, email or both",
    tags: ['users'],
    session: true,
    params: idParam,
    body: named('UpdateUser', patchBody),
    responses: { 200: { description: 'The user, `version` one more.', schema: user } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID, or a field is malformed, or neither field is given',
      NOT_FOUND: 'no user has this id',
      CONFLICT: 'the email is taken',
    },
  },
  {
    method: 'get',
    path: '/users/:id',
    operationId: 'getUser',
    summary: 'Read a user',
    description: 'Routed by `X-Consistency` (read-your-writes by default).',
    tags: ['users'],
    session: true,
    params: idParam,
    responses: { 200: { description: 'The user.', schema: user } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID',
      NOT_FOUND: 'no user has this id (as of the node that answered)',
    },
  },
  {
    method: 'get',
    path: '/users',
    operationId: 'listUsers',
    summary: 'List users in id order',
    description: 'Routed by `X-Consistency` (read-your-writes by default).',
    tags: ['users'],
    session: true,
    query: listQuery,
    responses: { 200: { description: 'A page of users.', schema: userPage } },
    problems: { VALIDATION_FAILED: 'a query parameter is malformed or unknown' },
  },
];
