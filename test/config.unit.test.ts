import { describe, expect, it } from 'vitest';

import { ConfigError, loadConfig, redactUrl } from '../src/app/config.js';
import { ReplikitError } from '../src/errors.js';

const EXTERNAL = {
  REPLIKIT_PRIMARY_URL: 'postgres://app@db1:5432/app',
  REPLIKIT_REPLICA_URLS: 'postgres://app@db2:5432/app',
};

/** The error loadConfig throws for `env`; fails the test when it does not throw. */
function configError(env: NodeJS.ProcessEnv): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`expected ${JSON.stringify(env)} to be rejected`);
}

describe('loadConfig', () => {
  it('fills every default from an empty environment', () => {
    expect(loadConfig({})).toEqual({
      PORT: 3000,
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      REPLIKIT_DATABASE: 'replikit',
      REPLIKIT_LEDGER_A_DATABASE: 'replikit_ledger_a',
      REPLIKIT_LEDGER_B_DATABASE: 'replikit_ledger_b',
      REPLIKIT_ORDERS_DATABASE: 'replikit_orders',
      REPLIKIT_PAYMENTS_DATABASE: 'replikit_payments',
      REPLIKIT_INVENTORY_DATABASE: 'replikit_inventory',
      REPLIKIT_SHIPPING_DATABASE: 'replikit_shipping',
      REPLIKIT_DEMO_FAULTS: false,
      REPLIKIT_ORDER_WAIT_MS: 1_000,
      REPLIKIT_SAGA_LEASE_MS: 15_000,
      REPLIKIT_STACK_DIR: '.replikit',
      REPLIKIT_BODY_LIMIT: '100kb',
      REPLIKIT_HEADERS_TIMEOUT_MS: 10_000,
      REPLIKIT_REQUEST_TIMEOUT_MS: 30_000,
      REPLIKIT_SHUTDOWN_TIMEOUT_MS: 10_000,
      REPLIKIT_READ_WAIT_TIMEOUT_MS: 1_000,
      REPLIKIT_READ_WAIT_FALLBACK: 'primary',
      REPLIKIT_REQUEST_BUDGET_MS: 10_000,
      REPLIKIT_MAX_WAITING_READS: 1_000,
      REPLIKIT_MAX_LAG_MS: 30_000,
      OTEL_SERVICE_NAME: 'replikit',
    });
  });

  it('treats an empty value as unset', () => {
    expect(loadConfig({ PORT: '', REPLIKIT_PRIMARY_URL: '', REPLIKIT_REPLICA_URLS: '' }).PORT).toBe(
      3000,
    );
  });

  it('reads numbers, levels in any case, and an OTLP endpoint', () => {
    const config = loadConfig({
      PORT: '0',
      LOG_LEVEL: 'DEBUG',
      REPLIKIT_STACK_PORT: '54320',
      REPLIKIT_SHUTDOWN_TIMEOUT_MS: '2500',
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
    });
    expect(config).toMatchObject({
      PORT: 0,
      LOG_LEVEL: 'debug',
      REPLIKIT_STACK_PORT: 54320,
      REPLIKIT_SHUTDOWN_TIMEOUT_MS: 2500,
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318',
    });
  });

  it.each([
    ['PORT', 'abc'],
    ['PORT', ' '],
    ['PORT', '1e3'],
    ['PORT', '0x10'],
    ['PORT', '-1'],
    ['PORT', '65536'],
    ['PORT', '80.5'],
    ['LOG_LEVEL', 'loud'],
    ['REPLIKIT_DATABASE', 'Robert"); drop table students;--'],
    ['REPLIKIT_DATABASE', `d${'x'.repeat(60)}`],
    ['REPLIKIT_LEDGER_A_DATABASE', 'Ledger-A'],
    ['REPLIKIT_LEDGER_B_DATABASE', 'b; drop database replikit'],
    ['REPLIKIT_LEDGER_A_DATABASE', 'replikit'],
    ['REPLIKIT_LEDGER_B_DATABASE', 'replikit_ledger_a'],
    ['REPLIKIT_STACK_PORT', '0'],
    ['REPLIKIT_BODY_LIMIT', 'lots'],
    ['REPLIKIT_SHUTDOWN_TIMEOUT_MS', '0'],
    // Longer than the whole request's default timeout, which includes the headers.
    ['REPLIKIT_HEADERS_TIMEOUT_MS', '40000'],
    ['REPLIKIT_REQUEST_TIMEOUT_MS', '50'],
    ['REPLIKIT_READ_WAIT_TIMEOUT_MS', '-5'],
    ['REPLIKIT_READ_WAIT_TIMEOUT_MS', '90000'],
    ['REPLIKIT_READ_WAIT_FALLBACK', 'replica'],
    ['REPLIKIT_REQUEST_BUDGET_MS', '0'],
    ['REPLIKIT_MAX_WAITING_READS', '0'],
    ['REPLIKIT_MAX_LAG_MS', 'soon'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'grpc://collector:4317'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'not a url'],
  ])('rejects %s=%j with one line naming the variable', (variable, value) => {
    const err = configError({ [variable]: value });
    expect(err).toBeInstanceOf(ReplikitError);
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.details).toEqual({ variable });
    expect(err.message).toMatch(new RegExp(`^invalid ${variable} \\(got .+\\): \\S`));
    expect(err.message).not.toContain('\n');
  });

  it('never echoes a password from a bad URL', () => {
    const err = configError({
      REPLIKIT_PRIMARY_URL: 'mysql://app:s3cret@db1/app',
      REPLIKIT_REPLICA_URLS: 'postgres://app:s3cret@db2/app',
    });
    expect(err.message).toMatch(/^invalid REPLIKIT_PRIMARY_URL/);
    expect(err.message).not.toContain('s3cret');
  });

  it('wants both server variables or neither', () => {
    expect(configError({ REPLIKIT_PRIMARY_URL: EXTERNAL.REPLIKIT_PRIMARY_URL }).message).toMatch(
      /^invalid REPLIKIT_REPLICA_URLS: set both/,
    );
    expect(configError({ REPLIKIT_REPLICA_URLS: EXTERNAL.REPLIKIT_REPLICA_URLS }).message).toMatch(
      /^invalid REPLIKIT_PRIMARY_URL: set both/,
    );
  });
});

describe('ledger databases of the transfers demo', () => {
  it('are named after the local stack database, or the one the primary URL names', () => {
    expect(loadConfig({ REPLIKIT_DATABASE: 'shop' })).toMatchObject({
      REPLIKIT_LEDGER_A_DATABASE: 'shop_ledger_a',
      REPLIKIT_LEDGER_B_DATABASE: 'shop_ledger_b',
    });
    expect(
      loadConfig({
        ...EXTERNAL,
        REPLIKIT_PRIMARY_URL: 'postgres://app:pw@db1:5432/My%20App?sslmode=require',
        REPLIKIT_DATABASE: 'ignored',
      }),
    ).toMatchObject({
      REPLIKIT_LEDGER_A_DATABASE: 'My App_ledger_a',
      REPLIKIT_LEDGER_B_DATABASE: 'My App_ledger_b',
    });
  });

  it('may be named outright', () => {
    expect(
      loadConfig({
        ...EXTERNAL,
        REPLIKIT_LEDGER_A_DATABASE: 'east',
        REPLIKIT_LEDGER_B_DATABASE: 'west',
      }),
    ).toMatchObject({ REPLIKIT_LEDGER_A_DATABASE: 'east', REPLIKIT_LEDGER_B_DATABASE: 'west' });
  });

  it('cannot be named after a primary URL without a database', () => {
    const err = configError({ ...EXTERNAL, REPLIKIT_PRIMARY_URL: 'postgres://app@db1:5432' });
    expect(err.details).toEqual({ variable: 'REPLIKIT_PRIMARY_URL' });
    expect(err.message).toMatch(/names no database.*set REPLIKIT_LEDGER_A_DATABASE/);
    expect(
      loadConfig({
        ...EXTERNAL,
        REPLIKIT_PRIMARY_URL: 'postgres://app@db1:5432',
        REPLIKIT_LEDGER_A_DATABASE: 'east',
        REPLIKIT_LEDGER_B_DATABASE: 'west',
        REPLIKIT_ORDERS_DATABASE: 'orders',
        REPLIKIT_PAYMENTS_DATABASE: 'payments',
        REPLIKIT_INVENTORY_DATABASE: 'inventory',
        REPLIKIT_SHIPPING_DATABASE: 'shipping',
      }).REPLIKIT_LEDGER_B_DATABASE,
    ).toBe('west');
  });

  it("must differ from each other and from the service's own database", () => {
    expect(configError({ ...EXTERNAL, REPLIKIT_LEDGER_B_DATABASE: 'app' }).message).toMatch(
      /^invalid REPLIKIT_LEDGER_B_DATABASE \(got "app"\): must not be the service's own/,
    );
    expect(
      configError({ REPLIKIT_LEDGER_A_DATABASE: 'same', REPLIKIT_LEDGER_B_DATABASE: 'same' })
        .message,
    ).toMatch(/^invalid REPLIKIT_LEDGER_B_DATABASE .*must differ from REPLIKIT_LEDGER_A_DATABASE/);
  });
});

describe('REPLIKIT_REPLICA_URLS', () => {
  const replicas = (value: string) =>
    loadConfig({ ...EXTERNAL, REPLIKIT_REPLICA_URLS: value }).REPLIKIT_REPLICA_URLS;

  it('names bare URLs by position and keeps given names', () => {
    expect(
      replicas(' postgres://a@h1/db , east=postgresql://b@h2:5433/db ,postgres://c@h3/db '),
    ).toEqual([
      { name: 'replica1', url: 'postgres://a@h1/db' },
      { name: 'east', url: 'postgresql://b@h2:5433/db' },
      { name: 'replica3', url: 'postgres://c@h3/db' },
    ]);
  });

  it('does not mistake "=" in a query string for a name', () => {
    expect(replicas('postgres://a@h1/db?sslmode=require&application_name=x')).toEqual([
      { name: 'replica1', url: 'postgres://a@h1/db?sslmode=require&application_name=x' },
    ]);
    expect(replicas('r=postgres://a@h1/db?sslmode=require')).toEqual([
      { name: 'r', url: 'postgres://a@h1/db?sslmode=require' },
    ]);
  });

  it.each([
    [',', /at least one replica/],
    ['r1=postgres://a@h/db,r1=postgres://b@h/db', /"r1" is used twice/],
    ['primary=postgres://a@h/db', /cannot be named "primary"/],
    ['1st=postgres://a@h/db', /must be a letter followed by/],
    ['r1=http://a@h/db', /entry 1 \(r1\) must be a postgres:\/\/ URL/],
  ])('rejects %j', (value, message) => {
    const err = configError({ ...EXTERNAL, REPLIKIT_REPLICA_URLS: value });
    expect(err.message).toMatch(/^invalid REPLIKIT_REPLICA_URLS /);
    expect(err.message).toMatch(message);
  });
});

describe('redactUrl', () => {
  it.each([
    ['postgres://app:s3cret@db:5432/app', 'postgres://app:***@db:5432/app'],
    ['a=postgres://u:p@h/d,postgres://v:q@h/d', 'a=postgres://u:***@h/d,postgres://v:***@h/d'],
    ['postgres://app@db/app', 'postgres://app@db/app'],
    ['postgres://db:5432/app', 'postgres://db:5432/app'],
  ])('%s', (input, expected) => {
    expect(redactUrl(input)).toBe(expected);
  });
});
