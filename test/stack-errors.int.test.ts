import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LocalStack, StackError } from '../src/stack/index.js';

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'replikit-stack-errors-'));
  // mkdtemp makes it private; the unprivileged server account must reach it when we run as root.
  await chmod(root, 0o755);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function failure(promise: Promise<unknown>): Promise<StackError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(StackError);
    return err as StackError;
  }
  throw new Error('expected the stack to refuse');
}

describe('local stack refuses clearly', () => {
  it('when a fixed port is taken', async () => {
    const server: Server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    try {
      const err = await failure(LocalStack.start({ dir: join(root, 'port'), basePort: port }));
      expect(err.code).toBe('STACK_PORT_IN_USE');
      expect(err.message).toContain(`port ${port}`);
      expect(err.message).not.toContain('\n');
    } finally {
      server.close();
    }
  });

  it('when the binaries are missing', async () => {
    const err = await failure(
      LocalStack.start({ dir: join(root, 'bin'), pgBin: join(root, 'no-such-bin') }),
    );
    expect(err.code).toBe('STACK_BINARY_MISSING');
    expect(err.message).toContain('no-such-bin');
  });

  it('when the data folder was made by another major version', async () => {
    const dir = join(root, 'old');
    await mkdir(join(dir, 'primary'), { recursive: true });
    await writeFile(join(dir, 'primary', 'PG_VERSION'), '9\n');
    const err = await failure(LocalStack.start({ dir }));
    expect(err.code).toBe('STACK_INCOMPATIBLE_DATA');
    expect(err.message).toMatch(/PostgreSQL 9, but the binaries are PostgreSQL \d+/);
  });

  it('when asked about a stack that does not exist', async () => {
    const err = await failure(LocalStack.open({ dir: join(root, 'none') }));
    expect(err.code).toBe('STACK_NOT_INITIALISED');
  });
});
