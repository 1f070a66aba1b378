import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import { StackError } from './stack-error.js';

const run = promisify(execFile);

/** The operating-system account PostgreSQL runs as when replikit itself runs as root. */
export interface ServerUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

async function lookUp(name: string): Promise<ServerUser | undefined> {
  try {
    const [uid, gid] = await Promise.all([run('id', ['-u', name]), run('id', ['-g', name])]);
    return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch {
    return undefined;
  }
}

/**
 * PostgreSQL refuses to run as root. When this process is root, the servers run as `requested`
 * (or `REPLIKIT_PG_USER`), else as `postgres` when that account exists, else as `nobody`.
 * Returns `undefined` when this process is not root: the servers then run as the current user.
 */
export async function resolveServerUser(requested?: string): Promise<ServerUser | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const wanted = requested ?? process.env['REPLIKIT_PG_USER'];
  const candidates = wanted === undefined ? ['postgres', 'nobody'] : [wanted];
  for (const name of candidates) {
    const user = await lookUp(name);
    if (user !== undefined && user.uid !== 0) return user;
  }
  throw new StackError(
    'STACK_START_FAILED',
    wanted === undefined
      ? 'running as root, but neither a postgres nor a nobody account exists to run PostgreSQL as; set REPLIKIT_PG_USER'
      : `running as root, and the account ${wanted} (REPLIKIT_PG_USER) does not exist or is root`,
  );
}

/**
 * Checks that `user` can reach `path` (every folder above it searchable, the path itself
 * executable or writable as asked), so a stack started as root fails with a clear message instead
 * of an obscure one from PostgreSQL.
 */
export async function assertReachable(
  user: ServerUser | undefined,
  path: string,
  access: 'execute' | 'write',
): Promise<void> {
  if (user === undefined) return;
  try {
    await run('test', [access === 'execute' ? '-x' : '-w', path], { uid: user.uid, gid: user.gid });
  } catch (cause) {
    throw new StackError(
      'STACK_UNREACHABLE_PATH',
      `PostgreSQL runs as the unprivileged account ${user.name} (this process is root), but that account cannot ${access === 'execute' ? 'run' : 'write to'} ${path}; make the folders above it searchable (chmod o+x) or choose another folder with REPLIKIT_STACK_DIR`,
      { cause, details: { path, user: user.name } },
    );
  }
}
