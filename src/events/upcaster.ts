import { EventStoreError } from './event-store-error.js';

/** An event's type, schema version and payload, as an upcaster sees and returns it. */
export interface UpcastInput {
  readonly type: string;
  readonly schemaVersion: number;
  readonly data: unknown;
  readonly metadata: Readonly<Record<string, unknown>>;
}

/**
 * Turns an event stored with schema version `fromSchemaVersion` into the next version
 * (`fromSchemaVersion + 1`). Registered per (type, schema version) and chained on read, so
 * events written years ago stay readable after any number of schema changes; the stored rows
 * are never rewritten.
 *
 * ```ts
 * const splitName: Upcaster = {
 *   type: 'UserProfileUpdated',
 *   fromSchemaVersion: 1,
 *   upcast: ({ data }) => {
 *     const { name, ...rest } = data as { name: string };
 *     const [first = '', ...others] = name.split(' ');
 *     return { data: { ...rest, firstName: first, lastName: others.join(' ') } };
 *   },
 * };
 * ```
 */
export interface Upcaster {
  readonly type: string;
  readonly fromSchemaVersion: number;
  /** Returns the next version's data; `type` may rename the event at the same time. */
  upcast(event: UpcastInput): { readonly data: unknown; readonly type?: string };
}

/** Applies registered upcasters until no more apply. */
export type UpcasterChain = (event: UpcastInput) => UpcastInput;

/** Longest chain followed before giving up: a chain that long is a loop through renames. */
const MAX_STEPS = 1000;

/**
 * Indexes upcasters by (type, schema version) and returns the function that applies them in
 * turn. Pure; checked once, at creation.
 *
 * @throws EventStoreError `EVENTSTORE_UPCASTER_INVALID` for two upcasters of one (type, version)
 *   or a version below 1.
 */
export function createUpcasterChain(upcasters: readonly Upcaster[]): UpcasterChain {
  const byKey = new Map<string, Upcaster>();
  for (const upcaster of upcasters) {
    if (!Number.isInteger(upcaster.fromSchemaVersion) || upcaster.fromSchemaVersion < 1) {
      throw new EventStoreError(
        'EVENTSTORE_UPCASTER_INVALID',
        `the upcaster of ${upcaster.type} starts from schema version ${upcaster.fromSchemaVersion}; versions are whole numbers from 1`,
        { details: { type: upcaster.type, fromSchemaVersion: upcaster.fromSchemaVersion } },
      );
    }
    const key = `${upcaster.fromSchemaVersion}\u0000${upcaster.type}`;
    if (byKey.has(key)) {
      throw new EventStoreError(
        'EVENTSTORE_UPCASTER_INVALID',
        `two upcasters for ${upcaster.type} schema version ${upcaster.fromSchemaVersion}`,
        { details: { type: upcaster.type, fromSchemaVersion: upcaster.fromSchemaVersion } },
      );
    }
    byKey.set(key, upcaster);
  }
  if (byKey.size === 0) return (event) => event;
  return (event) => {
    let current = event;
    for (let step = 0; ; step++) {
      const upcaster = byKey.get(`${current.schemaVersion}\u0000${current.type}`);
      if (upcaster === undefined) return current;
      if (step >= MAX_STEPS) {
        throw new EventStoreError(
          'EVENTSTORE_UPCASTER_INVALID',
          `upcasting ${event.type} v${event.schemaVersion} did not end after ${MAX_STEPS} steps`,
          { details: { type: event.type, schemaVersion: event.schemaVersion } },
        );
      }
      const next = upcaster.upcast(current);
      current = {
        type: next.type ?? current.type,
        schemaVersion: current.schemaVersion + 1,
        data: next.data,
        metadata: current.metadata,
      };
    }
  };
}
