import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { postgresProcessesUnder, signalGroup, killSpawned, spawnTs } from './support/process.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'replikit-cli-'));
  await chmod(dir, 0o755);
});

afterAll(async () => {
  const down = spawnTs(['src/cli/main.ts', 'stack', 'down', '--purge', '--dir', dir]);
  await down.exit();
  await rm(dir, { recursive: true, force: true });
});

// A test that failed half way must not leave a service or worker running.
afterEach(killSpawned);

describe('replikit stack', () => {
  it('up runs a primary and two replicas until Ctrl-C, then leaves no server behind', async () => {
    const up = spawnTs(['src/cli/main.ts', 'stack', 'up', '--dir', dir]);
    await up.waitFor(/press Ctrl-C to stop/, 90_000);
    expect(up.output()).toMatch(
      /^primary\s+primary\s+running\s+postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/m,
    );
    expect(up.output()).toMatch(/^replica1\s+replica\s+running/m);
    expect(up.output()).toMatch(/^replica2\s+replica\s+running/m);
    expect(postgresProcessesUnder(dir)).toHaveLength(3);

    // A terminal's Ctrl-C reaches the whole group, and impatient people press it twice.
    signalGroup(up, 'SIGINT');
    await sleep(50);
    signalGroup(up, 'SIGINT');
    expect(await up.exit(), up.output()).toEqual({ code: 0, signal: null });
    expect(postgresProcessesUnder(dir)).toEqual([]);
  });

  it('a burst of Ctrl-C while it stops still stops every server and exits 0', async () => {
    const up = spawnTs(['src/cli/main.ts', 'stack', 'up', '--dir', dir]);
    await up.waitFor(/press Ctrl-C to stop/, 90_000);
    // Signals to the group can land on a pg_ctl that the CLI forked and that has not yet moved to
    // a group of its own; a burst makes that window likely instead of rare.
    signalGroup(up, 'SIGINT');
    let exited = false;
    const exit = up.exit().finally(() => {
      exited = true;
    });
    // Until the servers are stopped: what is left then is Node's own exit, whose teardown (like
    // any process's) a signal can still interrupt.
    for (let i = 0; i < 400 && !exited && !/replikit: stopped/.test(up.output()); i++) {
      try {
        signalGroup(up, 'SIGINT');
      } catch {
        break; // the group is gone
      }
      await sleep(2);
    }
    expect(await exit, up.output()).toEqual({ code: 0, signal: null });
    expect(postgresProcessesUnder(dir)).toEqual([]);
  });

  it('status --json lists every node with its role and URL, and exits 1 when nodes are down', async () => {
    const up = spawnTs(['src/cli/main.ts', 'stack', 'up', '--detach', '--dir', dir]);
    expect((await up.exit()).code).toBe(0);

    const status = spawnTs(['src/cli/main.ts', 'stack', 'status', '--json', '--dir', dir]);
    expect((await status.exit()).code).toBe(0);
    const parsed = JSON.parse(status.output()) as {
      nodes: { name: string; role: string; url: string; running: boolean }[];
    };
    expect(parsed.nodes.map(({ name, role, running }) => ({ name, role, running }))).toEqual([
      { name: 'primary', role: 'primary', running: true },
      { name: 'replica1', role: 'replica', running: true },
      { name: 'replica2', role: 'replica', running: true },
    ]);
    for (const node of parsed.nodes)
      expect(node.url).toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/);

    const down = spawnTs(['src/cli/main.ts', 'stack', 'down', '--dir', dir]);
    expect((await down.exit()).code).toBe(0);
    expect(postgresProcessesUnder(dir)).toEqual([]);
    const after = spawnTs(['src/cli/main.ts', 'stack', 'status', '--dir', dir]);
    expect((await after.exit()).code).toBe(1);
    expect(after.output()).toMatch(/^primary\s+primary\s+stopped/m);
  });

  it('fails with one clear line and exit 1 when the port is taken', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as AddressInfo).port;
    try {
      const up = spawnTs([
        'src/cli/main.ts',
        'stack',
        'up',
        '--detach',
        '--dir',
        join(dir, 'other'),
        '--port',
        String(port),
      ]);
      expect((await up.exit()).code).toBe(1);
      expect(up.output().trim().split('\n').at(-1)).toBe(
        `replikit: port ${port} (for primary) is already in use; choose another base port (--port / REPLIKIT_STACK_PORT) or stop what holds it`,
      );
    } finally {
      holder.close();
    }
  });

  it('rejects a bad command line with exit 2', async () => {
    const bad = spawnTs(['src/cli/main.ts', 'stack', 'up', '--port', 'abc', '--dir', dir]);
    expect((await bad.exit()).code).toBe(2);
    expect(bad.output()).toContain('--port must be a port number');
  });
});
