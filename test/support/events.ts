import pg from 'pg';

import { migrate } from '../../src/db/migrate.js';
import { EVENT_STORE_MIGRATIONS, type ProjectionDefinition } from '../../src/events/index.js';

/** Applies the event store's migrations to a test database. */
export async function migrateEvents(url: string): Promise<void> {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    await migrate(pool, EVENT_STORE_MIGRATIONS);
  } finally {
    await pool.end();
  }
}

/** A `UserFollowed` event's data. */
export interface Followed {
  readonly userId: string;
  readonly targetId: string;
}

/**
 * Follower and following counts per user, plus a log of every event applied (one row per
 * application, no key: an event applied twice shows up as two rows).
 */
export function countsProjection(name: string, prefix = name): ProjectionDefinition {
  const counts = `${prefix}_counts`;
  const applied = `${prefix}_applied`;
  return {
    name,
    readModels: [counts, applied],
    handles: ['UserFollowed'],
    setup: async (db, ctx) => {
      await db.query(`create table ${ctx.table(counts)} (
        user_id text primary key, followers int not null default 0, following int not null default 0)`);
      await db.query(`create table ${ctx.table(applied)} (position bigint not null)`);
    },
    apply: async (events, db, ctx) => {
      const followers = new Map<string, number>();
      const following = new Map<string, number>();
      for (const event of events) {
        const data = event.data as Followed;
        followers.set(data.targetId, (followers.get(data.targetId) ?? 0) + 1);
        following.set(data.userId, (following.get(data.userId) ?? 0) + 1);
      }
      const users = [...new Set([...followers.keys(), ...following.keys()])];
      await db.query(
        `insert into ${ctx.table(counts)} (user_id, followers, following)
         select u, f, g from unnest($1::text[], $2::int[], $3::int[]) as t(u, f, g)
         on conflict (user_id) do update set
           followers = ${ctx.table(counts)}.followers + excluded.followers,
           following = ${ctx.table(counts)}.following + excluded.following`,
        [users, users.map((u) => followers.get(u) ?? 0), users.map((u) => following.get(u) ?? 0)],
      );
      await db.query(`insert into ${ctx.table(applied)} (position) select unnest($1::bigint[])`, [
        events.map((event) => event.globalPosition.position.toString()),
      ]);
    },
  };
}
