import { z } from 'zod';

import { redactUrl } from '../db/database-url.js';

import { databaseOf } from '../db/database-url.js';
import { ReplikitError } from '../errors.js';

const postgresUrl = z
  .string()
  .trim()
  .refine((value) => {
    try {
      const url = new URL(value);
      return url.protocol === 'postgres:' || url.protocol === 'postgresql:';
    } catch {
      return false;
    }
  }, 'must be a postgres:// or postgresql:// URL');

const NODE_NAME = /^[a-z][a-z0-9_-]{0,62}$/i;

/** A database name the service may create: a lower-case SQL identifier, never needing quotes. */
const databaseName = z
  .string()
  .trim()
  .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case SQL identifier');

/** PostgreSQL truncates longer identifiers, so two long derived names could silently collide. */
const MAX_IDENTIFIER_BYTES = 63;

/**
 * The demo's other databases (the transfers demo's two ledgers, the order demo's four services),
 * and the suffix that names each after the service's own database when its variable is unset.
 */
const DERIVED_DATABASES = [
  { variable: 'REPLIKIT_LEDGER_A_DATABASE', suffix: '_ledger_a' },
  { variable: 'REPLIKIT_LEDGER_B_DATABASE', suffix: '_ledger_b' },
  { variable: 'REPLIKIT_ORDERS_DATABASE', suffix: '_orders' },
  { variable: 'REPLIKIT_PAYMENTS_DATABASE', suffix: '_payments' },
  { variable: 'REPLIKIT_INVENTORY_DATABASE', suffix: '_inventory' },
  { variable: 'REPLIKIT_SHIPPING_DATABASE', suffix: '_shipping' },
] as const;

type DerivedDatabase = (typeof DERIVED_DATABASES)[number]['variable'];

/** One replica the service reads from, as listed in `REPLIKIT_REPLICA_URLS`. */
export interface ReplicaUrl {
  readonly name: string;
  readonly url: string;
}

/**
 * Parses `REPLIKIT_REPLICA_URLS`: comma-separated entries, each `name=url` or a bare `url`
 * (a bare entry is named `replica<position>`, counting from 1).
 */
const replicaList = z
  .string()
  .trim()
  .transform((value, ctx): ReplicaUrl[] => {
    const entries = value
      .split(',')
      .map((part) => part.trim())
      .filter((part) => part !== '');
    if (entries.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'must list at least one replica URL' });
      return z.NEVER;
    }
    const seen = new Set<string>();
    const replicas: ReplicaUrl[] = [];
    for (const [index, entry] of entries.entries()) {
      const eq = entry.indexOf('=');
      // "postgres://u@h/db?sslmode=require" also holds a "=", but after a ":".
      const hasName = eq > 0 && !entry.slice(0, eq).includes(':');
      const name = hasName ? entry.slice(0, eq).trim() : `replica${index + 1}`;
      const url = hasName ? entry.slice(eq + 1).trim() : entry;
      if (!postgresUrl.safeParse(url).success) {
        ctx.addIssue({
          code: 'custom',
          message: `entry ${index + 1} (${name}) must be a postgres:// URL, optionally prefixed with name=`,
        });
      } else if (!NODE_NAME.test(name)) {
        ctx.addIssue({
          code: 'custom',
          message: `replica name "${name}" must be a letter followed by letters, digits, _ or -`,
        });
      } else if (name === 'primary') {
        ctx.addIssue({
          code: 'custom',
          message: 'a replica cannot be named "primary"; that name is the primary\'s',
        });
      } else if (seen.has(name)) {
        ctx.addIssue({
          code: 'custom',
          message: `replica name "${name}" is used twice; give each replica its own name`,
        });
      }
      seen.add(name);
      replicas.push({ name, url });
    }
    return replicas;
  });

/** A whole number written in decimal digits only: `Number(' ')` is 0 and `Number('1e3')` is 1000. */
function wholeNumber(min: number, max: number) {
  return z
    .string()
    .trim()
    .regex(/^\d{1,15}$/, `must be a whole number from ${min} to ${max}`)
    .transform(Number)
    .refine(
      (value) => value >= min && value <= max,
      `must be a whole number from ${min} to ${max}`,
    );
}

const port = wholeNumber(0, 65_535);

const httpUrl = z
  .string()
  .trim()
  .refine((value) => {
    try {
      const url = new URL(value);
      return url.protocol === 'http:' || url.protocol === 'https:';
    } catch {
      return false;
    }
  }, 'must be an http:// or https:// URL');

/**
 * Every environment variable the service reads, with its default. Values are strings as found in
 * the environment; an empty value counts as unset.
 */
export const configSchema = z
  .object({
    /** HTTP port; 0 lets the system choose one. */
    PORT: port.default(3000),
    HOST: z.string().trim().min(1).default('127.0.0.1'),
    LOG_LEVEL: z
      .string()
      .trim()
      .toLowerCase()
      .pipe(z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
      .default('info'),
    /** Existing primary; set together with `REPLIKIT_REPLICA_URLS`, or neither to start the local stack. */
    REPLIKIT_PRIMARY_URL: postgresUrl.optional(),
    REPLIKIT_REPLICA_URLS: replicaList.optional(),
    /** Database the service uses on the local stack (created when missing). */
    REPLIKIT_DATABASE: databaseName.default('replikit'),
    /**
     * The transfers demo's two ledger databases, on the same servers as the service's database.
     * Default: that database's name + `_ledger_a` / `_ledger_b`. Created on the local stack; with
     * existing servers they must exist.
     */
    REPLIKIT_LEDGER_A_DATABASE: databaseName.optional(),
    REPLIKIT_LEDGER_B_DATABASE: databaseName.optional(),
    /**
     * The order demo's databases, one per service (the orders one also holds the saga log).
     * Default: the service's database name + `_orders`, `_payments`, `_inventory`, `_shipping`.
     */
    REPLIKIT_ORDERS_DATABASE: databaseName.optional(),
    REPLIKIT_PAYMENTS_DATABASE: databaseName.optional(),
    REPLIKIT_INVENTORY_DATABASE: databaseName.optional(),
    REPLIKIT_SHIPPING_DATABASE: databaseName.optional(),
    /**
     * Honour `faults` in `POST /orders` (a failure or delay injected at a named step), for tests
     * and demos. Off unless `true` or `1`.
     */
    REPLIKIT_DEMO_FAULTS: z
      .enum(['true', 'false', '1', '0'], { error: 'must be true or false' })
      .default('false')
      .transform((value) => value === 'true' || value === '1'),
    /** How long `POST /orders` waits for its saga before answering 202 instead of 201. */
    REPLIKIT_ORDER_WAIT_MS: wholeNumber(0, 60_000).default(1_000),
    /**
     * NATS servers (comma-separated `host:port`) for the choreographed order flow's messages, over
     * JetStream. Unset: they travel through PostgreSQL, in the service's own database.
     */
    REPLIKIT_NATS_URL: z.string().trim().min(1).optional(),
    /** A saga's lease: another process resumes the sagas of one that died within about this long. */
    REPLIKIT_SAGA_LEASE_MS: wholeNumber(100, 3_600_000).default(15_000),
    REPLIKIT_STACK_DIR: z.string().trim().min(1).default('.replikit'),
    REPLIKIT_STACK_PORT: wholeNumber(1, 65_535).optional(),
    REPLIKIT_PG_BIN: z.string().trim().min(1).optional(),
    /** Largest JSON request body accepted (`100kb`, `1mb`; 1 kb = 1024 bytes), refused unread when larger. */
    REPLIKIT_BODY_LIMIT: z
      .string()
      .trim()
      .regex(/^\d+(b|kb|mb)$/i, 'must be a size such as 100kb or 1mb')
      .default('100kb'),
    /** A client must send a request's headers within this, or be answered 408 and cut off. */
    REPLIKIT_HEADERS_TIMEOUT_MS: wholeNumber(100, 600_000).default(10_000),
    /** A client must send a whole request, headers and body, within this (at least the headers' timeout). */
    REPLIKIT_REQUEST_TIMEOUT_MS: wholeNumber(100, 3_600_000).default(30_000),
    /** Upper bound on a graceful shutdown, after which the process exits anyway. */
    REPLIKIT_SHUTDOWN_TIMEOUT_MS: wholeNumber(1, 3_600_000).default(10_000),
    /** How long a read waits for a replica to replay the caller's token. */
    REPLIKIT_READ_WAIT_TIMEOUT_MS: wholeNumber(0, 60_000).default(1_000),
    /** After that wait: read from the primary, or answer 503 with the expected wait. */
    REPLIKIT_READ_WAIT_FALLBACK: z.enum(['primary', 'error']).default('primary'),
    /**
     * How long a read request (GET, HEAD) may wait in all, for replicas and projections, before it
     * is answered 503 DEADLINE_EXCEEDED. Writes are never cut short.
     */
    REPLIKIT_REQUEST_BUDGET_MS: wholeNumber(1, 600_000).default(10_000),
    /** How many reads may wait (for a replica or a projection) at once; more are answered 503 at once. */
    REPLIKIT_MAX_WAITING_READS: wholeNumber(1, 1_000_000).default(1_000),
    /** Replicas lagging more than this leave eventual and bounded-staleness rotation. */
    REPLIKIT_MAX_LAG_MS: wholeNumber(1, 86_400_000).default(30_000),
    OTEL_SERVICE_NAME: z.string().trim().min(1).default('replikit'),
    /** When set, traces are exported there over OTLP/HTTP (protobuf); when unset nothing is exported. */
    OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl.optional(),
  })
  .superRefine((config, ctx) => {
    if (
      (config.REPLIKIT_PRIMARY_URL === undefined) !==
      (config.REPLIKIT_REPLICA_URLS === undefined)
    ) {
      ctx.addIssue({
        code: 'custom',
        path: [
          config.REPLIKIT_PRIMARY_URL === undefined
            ? 'REPLIKIT_PRIMARY_URL'
            : 'REPLIKIT_REPLICA_URLS',
        ],
        message:
          'set both REPLIKIT_PRIMARY_URL and REPLIKIT_REPLICA_URLS to use existing servers, or neither to start the local stack',
      });
    }
  })
  .superRefine((config, ctx) => {
    if (config.REPLIKIT_HEADERS_TIMEOUT_MS > config.REPLIKIT_REQUEST_TIMEOUT_MS) {
      ctx.addIssue({
        code: 'custom',
        path: ['REPLIKIT_HEADERS_TIMEOUT_MS'],
        message: `must not exceed REPLIKIT_REQUEST_TIMEOUT_MS (${config.REPLIKIT_REQUEST_TIMEOUT_MS}): the headers are part of the request`,
      });
    }
  })
  .transform((config, ctx) => {
    // The service's own database: the one its primary URL names, else the one the local stack gets.
    const external = config.REPLIKIT_PRIMARY_URL !== undefined;
    const own = external ? databaseOf(config.REPLIKIT_PRIMARY_URL!) : config.REPLIKIT_DATABASE;
    const source = external ? 'REPLIKIT_PRIMARY_URL' : 'REPLIKIT_DATABASE';
    const fail = (variable: string, message: string): void =>
      ctx.addIssue({ code: 'custom', path: [variable], message });
    const derive = ({ variable, suffix }: (typeof DERIVED_DATABASES)[number]): string => {
      const given = config[variable];
      if (given !== undefined) return given;
      if (own === undefined) {
        fail(
          source,
          `names no database, so the demo's other databases cannot be named after it; add the database to the URL or set ${variable}`,
        );
        return '';
      }
      const derived = `${own}${suffix}`;
      if (new TextEncoder().encode(derived).length > MAX_IDENTIFIER_BYTES) {
        fail(
          source,
          `is too long to name the demo's other databases after it (${derived} is over PostgreSQL's ${MAX_IDENTIFIER_BYTES}-byte limit); use a shorter name or set ${variable}`,
        );
      }
      return derived;
    };
    const derived = {} as Record<DerivedDatabase, string>;
    const taken = new Map<string, string>();
    for (const entry of DERIVED_DATABASES) {
      const name = derive(entry);
      derived[entry.variable] = name;
      if (name === '') continue;
      if (name === own) {
        fail(entry.variable, "must not be the service's own database");
        break;
      }
      const other = taken.get(name);
      if (other !== undefined) {
        fail(entry.variable, `must differ from ${other}`);
        break;
      }
      taken.set(name, entry.variable);
    }
    return { ...config, ...derived };
  });

/** The validated configuration, as {@link loadConfig} returns it. */
export type Config = z.output<typeof configSchema>;

/**
 * Raised when the environment does not describe a valid configuration. The message is one line
 * that names the variable; `details.variable` holds the name for programs.
 */
export class ConfigError extends ReplikitError {
  override readonly name = 'ConfigError';

  constructor(variable: string, message: string, options: { cause?: unknown } = {}) {
    super('CONFIG_INVALID', message, { ...options, details: { variable } });
  }
}

function truncate(value: string, max: number): string {
  return value.length <= max ? value : `${value.slice(0, max - 1)}…`;
}

/**
 * Reads the configuration from environment variables.
 *
 * ```ts
 * const config = loadConfig({ PORT: '8080', REPLIKIT_DATABASE: 'demo' });
 * config.PORT; // 8080
 * ```
 *
 * @throws ConfigError naming the first variable that is wrong, in one line.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const present = Object.fromEntries(
    Object.entries(env).filter(([, value]) => value !== undefined && value !== ''),
  );
  const result = configSchema.safeParse(present);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = issue?.path[0];
  const variable = typeof key === 'string' ? key : 'configuration';
  const received = typeof key === 'string' ? env[key] : undefined;
  const shown =
    received === undefined || received === ''
      ? ''
      : ` (got ${JSON.stringify(truncate(redactUrl(received), 80))})`;
  const message = (issue?.message ?? 'invalid value').replace(/\s+/g, ' ');
  throw new ConfigError(variable, `invalid ${variable}${shown}: ${message}`, {
    cause: result.error,
  });
}

export { redactUrl };
