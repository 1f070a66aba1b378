import type { Request } from 'express';
import type { BulkheadPolicy } from 'cockatiel';
import { Router } from 'express';
import { z } from 'zod';

import type { Migration } from '../db/migrate.js';
import { ReplikitError } from '../errors.js';
import {
  createReadModel,
  EVENT_STORE_MIGRATIONS,
  formatPosition,
  parsePosition,
  type EventStore,
  type GlobalPosition,
  type ProjectionDefinition,
  type ReadModel,
} from '../events/index.js';
import { named, type ApiHeader, type ApiOperation } from '../http/openapi.js';
import { parseInput } from '../http/validation.js';
import { currentSession, type Cluster } from '../routing/index.js';

/** The HTTP contract of read-your-writes on the profile read model. */
export const PROFILE_HEADERS = {
  /**
   * Response to a write: the appended event's place in the log. Request to a read: the read
   * must reflect the events up to there (the caller's own writes).
   */
  position: 'X-Projection-Position',
  /** Response to a read: `true` when the projection did not reach the requested position in time. */
  stale: 'X-Projection-Stale',
} as const;

/**
 * The profiles demo's schema: the event store's tables. The read model's tables are created by
 * the projection itself when each version registers (`user_profiles_v<N>`, `user_follows_v<N>`,
 * and the views `user_profiles`, `user_follows` on the active version).
 */
export const PROFILES_MIGRATIONS: readonly Migration[] = EVENT_STORE_MIGRATIONS;

/** `UserProfileUpdated` data. */
export interface ProfileUpdated {
  readonly userId: string;
  readonly name?: string;
  readonly email?: string;
}

/** `UserFollowed` data. */
export interface UserFollowed {
  readonly userId: string;
  readonly targetId: string;
}

/** A profile as `GET /users/:id/profile` shows it. */
export interface Profile {
  readonly id: string;
  readonly name: string | null;
  readonly email: string | null;
  readonly followers: number;
  readonly following: number;
  /** True when the caller asked for its own writes and the projection was late: they may be missing. */
  readonly stale: boolean;
}

/**
 * Builds the profile read model: one row per user with name, email and follower and following
 * counts, and the set of follows (so following someone twice counts once).
 */
export const PROFILES_PROJECTION: ProjectionDefinition = {
  name: 'profiles',
  readModels: ['user_profiles', 'user_follows'],
  handles: ['UserProfileUpdated', 'UserFollowed'],
  setup: async (db, ctx) => {
    await db.query(`create table ${ctx.table('user_profiles')} (
      user_id uuid primary key,
      name text,
      email text,
      followers int not null default 0,
      following int not null default 0)`);
    await db.query(`create table ${ctx.table('user_follows')} (
      user_id uuid not null,
      target_id uuid not null,
      primary key (user_id, target_id))`);
  },
  apply: async (events, db, ctx) => {
    const profiles = ctx.table('user_profiles');
    const follows = ctx.table('user_follows');
    for (const event of events) {
      if (event.type === 'UserProfileUpdated') {
        const data = event.data as ProfileUpdated;
        await db.query(
          `insert into ${profiles} (user_id, name, email) values ($1, $2, $3)
           on conflict (user_id) do update set
             name = coalesce(excluded.name, ${profiles}.name),
             email = coalesce(excluded.email, ${profiles}.email)`,
          [data.userId, data.name ?? null, data.email ?? null],
        );
      } else {
        const data = event.data as UserFollowed;
        await db.query(
          `with followed as (
             insert into ${follows} (user_id, target_id) values ($1, $2)
             on conflict do nothing returning user_id, target_id)
           insert into ${profiles} (user_id, followers, following)
           select target_id, 1, 0 from followed
           union all select user_id, 0, 1 from followed
           on conflict (user_id) do update set
             followers = ${profiles}.followers + excluded.followers,
             following = ${profiles}.following + excluded.following`,
          [data.userId, data.targetId],
        );
      }
    }
  },
};

/** What the profiles demo needs; see {@link profilesRouter}. */
export interface ProfilesOptions {
  /** The store the commands append to; its connection is the cluster's primary. */
  readonly store: EventStore;
  /** Routes the read-model queries. */
  readonly cluster: Cluster;
  /** How long a read waits for the projection to reach the caller's writes. Default 2000 ms. */
  readonly waitTimeoutMs?: number;
  /** Bounds how many reads wait for the projection at once; see `ReadModelOptions.waitBulkhead`. */
  readonly waitBulkhead?: BulkheadPolicy;
}

const name = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters');
const email = z.email('must be an email address').max(320);
const patchBody = z
  .strictObject({ name: name.optional(), email: email.optional() })
  .refine(
    (body) => body.name !== undefined || body.email !== undefined,
    'give name, email or both',
  );
const followBody = z.strictObject({ targetId: z.uuid('must be a UUID') });
const idParam = z.strictObject({ id: z.uuid('must be a UUID') });
const projectionParam = z.strictObject({ name: z.literal('profiles') });

function streamOf(userId: string): string {
  return `user-${userId}`;
}

/** The position a read must reach: the request's header, else everything when the caller asked for its own writes. */
function requiredPosition(req: Request): GlobalPosition | 'latest' | undefined {
  const header = req.get(PROFILE_HEADERS.position);
  if (header !== undefined && header.trim() !== '') {
    const position = parsePosition(header);
    if (position === undefined) {
      throw new ReplikitError(
        'VALIDATION_FAILED',
        `${PROFILE_HEADERS.position} must be a position as a write returned it, such as 1234.56`,
        { details: { issues: [{ path: PROFILE_HEADERS.position, message: 'not a position' }] } },
      );
    }
    return position;
  }
  // Without a position, a caller that explicitly asked for read-your-writes (or stronger) and
  // carries a token from a write gets everything committed so far: more than it needs, never less.
  const session = currentSession();
  const level = session?.consistency?.level;
  if (
    (level === 'read-your-writes' || level === 'monotonic' || level === 'strong') &&
    (session?.token?.written ?? 0n) > 0n
  ) {
    return 'latest';
  }
  return undefined;
}

/**
 * The CQRS demo: commands append events, `GET` reads the projection's read model.
 *
 * - `PATCH /users/:id/profile` `{name?, email?}` → 200 `{ position }`, appends `UserProfileUpdated`;
 * - `POST /users/:id/follow` `{targetId}` → 202 `{ position }` at once, appends `UserFollowed`;
 * - `GET /users/:id/profile` → 200 the profile or 404. Eventually consistent by default (any
 *   replica); with `X-Projection-Position` from an earlier write (or `X-Consistency:
 *   read-your-writes` and a token from a write), it waits for the projection and reads from a
 *   replica that has replayed it, and says `stale` when the wait ran out; a position past the
 *   end of the event log is refused (400 `PROJECTION_POSITION_AHEAD`), never waited on;
 * - `POST /projections/profiles/rebuild` → 202 `{ version }`: builds a new version beside the
 *   serving one, which takes over once caught up (the runner lives in this process).
 *
 * Writes answer with `X-Projection-Position` and, like every write of the service, a consistency
 * token (`X-Consistency-Token`, and the token cookie when the request carried one): a later read
 * with `X-Consistency: read-your-writes` and that token waits for the projection and a replica.
 */
export function profilesRouter(options: ProfilesOptions): Router {
  const { store, cluster } = options;
  const readModel: ReadModel = createReadModel({
    store,
    cluster,
    projection: PROFILES_PROJECTION.name,
    waitTimeoutMs: options.waitTimeoutMs ?? 2000,
    onTimeout: 'stale',
    ...(options.waitBulkhead === undefined ? {} : { waitBulkhead: options.waitBulkhead }),
  });
  const router = Router();

  router.patch('/users/:id/profile', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const body = parseInput(patchBody, req.body, 'body');
    const data: ProfileUpdated = {
      userId: id,
      ...(body.name === undefined ? {} : { name: body.name }),
      ...(body.email === undefined ? {} : { email: body.email }),
    };
    const result = await store.append(streamOf(id), [{ type: 'UserProfileUpdated', data }]);
    await readModel.tokenAfterWrite();
    const position = formatPosition(result.position);
    res.set(PROFILE_HEADERS.position, position).json({ position });
  });

  router.post('/users/:id/follow', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const { targetId } = parseInput(followBody, req.body, 'body');
    if (targetId === id) {
      throw new ReplikitError('VALIDATION_FAILED', 'a user cannot follow themselves', {
        details: { issues: [{ path: 'targetId', message: 'must not be the user itself' }] },
      });
    }
    const data: UserFollowed = { userId: id, targetId };
    const result = await store.append(streamOf(id), [{ type: 'UserFollowed', data }]);
    await readModel.tokenAfterWrite();
    const position = formatPosition(result.position);
    // Accepted: the follower counts change when the projection applies it.
    res.status(202).set(PROFILE_HEADERS.position, position).json({ position });
  });

  router.get('/users/:id/profile', async (req, res) => {
    const { id } = parseInput(idParam, req.params, 'path');
    const after = requiredPosition(req);
    const result = await readModel.query<{
      name: string | null;
      email: string | null;
      followers: number;
      following: number;
    }>(
      'select name, email, followers, following from user_profiles where user_id = $1',
      [id],
      after !== undefined
        ? { after }
        : currentSession()?.consistency === undefined
          ? { consistency: { level: 'eventual' } }
          : {},
    );
    res.set(PROFILE_HEADERS.stale, String(result.stale));
    const row = result.rows[0];
    if (row === undefined && !result.stale) {
      throw new ReplikitError('NOT_FOUND', `no profile for user ${id}`, { details: { id } });
    }
    const profile: Profile = {
      id,
      name: row?.name ?? null,
      email: row?.email ?? null,
      followers: row?.followers ?? 0,
      following: row?.following ?? 0,
      stale: result.stale,
    };
    res.json(profile);
  });

  router.post('/projections/:name/rebuild', async (req, res) => {
    parseInput(projectionParam, req.params, 'path');
    const runner = await store.rebuildProjection(PROFILES_PROJECTION);
    res.status(202).json({ projection: PROFILES_PROJECTION.name, version: runner.version });
  });

  return router;
}

/** A {@link Profile} as the API describes it. */
export const profileSchema = z.strictObject({
  id: z.uuid(),
  name: z.string().nullable(),
  email: z.string().nullable(),
  followers: z.number().int().min(0),
  following: z.number().int().min(0),
  stale: z
    .boolean()
    .describe(
      'The caller asked for its own writes and the projection was late: they may be missing',
    ),
}) satisfies z.ZodType<Profile>;

const positionText = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,18})$/)
  .describe('`<transaction id>.<position>`');

const appended = named(
  'Appended',
  z.strictObject({ position: positionText.describe("The event's place in the log") }),
);

const positionAnswer: ApiHeader = {
  name: PROFILE_HEADERS.position,
  description: "The appended event's place in the log: send it with a read to see this write.",
  schema: positionText,
};

/** The routes of {@link profilesRouter}, for the service's OpenAPI document. */
export const PROFILES_API: readonly ApiOperation[] = [
  {
    method: 'patch',
    path: '/users/:id/profile',
    operationId: 'updateProfile',
    summary: "Change a profile's name, email or both",
    description:
      'Appends `UserProfileUpdated`; the read model follows when the projection applies it.',
    tags: ['profiles'],
    session: true,
    params: idParam,
    body: named('UpdateProfile', patchBody),
    responses: { 200: { description: 'Appended.', schema: appended, headers: [positionAnswer] } },
    problems: {
      VALIDATION_FAILED: 'the id is not a UUID, or a field is malformed, or neither field is given',
    },
  },
  {
    method: 'post',
    path: '/users/:id/follow',
    operationId: 'follow',
    summary: 'Follow another user',
    description:
      'Appends `UserFollowed`; the counts change when the projection applies it. Following twice counts once.',
    tags: ['profiles'],
    session: true,
    params: idParam,
    body: named('Follow', followBody),
    responses: {
      202: { description: 'Appended.', schema: appended, headers: [positionAnswer] },
    },
    problems: {
      VALIDATION_FAILED: 'an id is not a UUID, or the user follows themselves',
    },
  },
  {
    method: 'get',
    path: '/users/:id/profile',
    operationId: 'getProfile',
    summary: 'Read a profile from the read model',
    description: `Eventually consistent by default (any replica). With \`${PROFILE_HEADERS.position}\` from a write, or \`X-Consistency: read-your-writes\` and a token from a write, it waits (up to 2 s) for the projection to apply it and reads from a replica that has replayed that far.`,
    tags: ['profiles'],
    session: true,
    params: idParam,
    headers: [
      {
        name: PROFILE_HEADERS.position,
        description: 'A position a write answered with: the read reflects the events up to there.',
        schema: positionText,
      },
    ],
    responses: {
      200: {
        description: 'The profile.',
        schema: named('Profile', profileSchema),
        headers: [
          {
            name: PROFILE_HEADERS.stale,
            description: '`true` when the projection did not reach the requested position in time.',
            schema: z.enum(['true', 'false']),
          },
        ],
      },
    },
    problems: {
      VALIDATION_FAILED: `the id is not a UUID, or \`${PROFILE_HEADERS.position}\` is not a position`,
      NOT_FOUND: 'the read model has no profile for this user',
    },
  },
  {
    method: 'post',
    path: '/projections/:name/rebuild',
    operationId: 'rebuildProjection',
    summary: "Rebuild a projection's read model",
    description:
      'Builds a new version beside the serving one from the start of the log, while writes go on; it takes over once caught up.',
    tags: ['profiles'],
    session: true,
    params: projectionParam,
    responses: {
      202: {
        description: 'The new version is building.',
        schema: named(
          'Rebuild',
          z.strictObject({ projection: z.literal('profiles'), version: z.number().int().min(1) }),
        ),
      },
    },
    problems: { VALIDATION_FAILED: 'no projection has this name' },
  },
];
