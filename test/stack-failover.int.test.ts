import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { LocalStack, StackError } from '../src/stack/index.js';
import { killSpawned, spawnTs } from './support/process.js';
import { eventually } from './support/stack.js';

// A stack of its own: promotion rewrites roles, which the shared test stack must never see.
let root: string;
let stack: LocalStack;

async function sees(node: string, value: string): Promise<boolean | undefined> {
  const rows = await stack.query(node, 'select 1 from items where value = $1', [value]);
  return rows.length === 1 ? true : undefined;
}

async function write(value: string): Promise<void> {
  await stack.query(stack.primary.name, 'insert into items (value) values ($1)', [value]);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'replikit-stack-failover-'));
  await chmod(root, 0o755);
  stack = await LocalStack.start({ dir: join(root, 'stack') });
  await stack.query('primary', 'create table items (id serial primary key, value text not null)');
  await stack.waitForReplicas();
});

afterAll(async () => {
  await killSpawned();
  await stack?.stop();
  await rm(root, { recursive: true, force: true });
});

describe('local stack failover', () => {
  it('promotes a replica: the old primary stops, the other replica follows the new timeline', async () => {
    await write('before');
    await stack.waitForReplicas();

    const result = await stack.promote('replica1');

    expect(result).toMatchObject({
      primary: 'replica1',
      timeline: 2,
      following: ['replica2'],
      diverged: ['primary'],
      stopped: [],
    });
    expect(stack.primary.name).toBe('replica1');
    const status = await stack.status();
    expect(status.map((node) => [node.name, node.role, node.running, node.inRecovery])).toEqual([
      ['primary', 'replica', false, undefined],
      ['replica1', 'primary', true, false],
      ['replica2', 'replica', true, true],
    ]);
    // The state file tells the truth to the next process that opens the stack.
    const state = JSON.parse(await readFile(join(stack.dir, 'stack.json'), 'utf8')) as {
      primary: string;
      replicas: string[];
      diverged: string[];
    };
    expect(state).toMatchObject({
      primary: 'replica1',
      replicas: ['primary', 'replica2'],
      diverged: ['primary'],
    });
    const reopened = await LocalStack.open({ dir: stack.dir });
    expect(reopened.primary.name).toBe('replica1');

    // Writes on the new primary reach the replica that follows it, on timeline 2.
    await write('after-promotion');
    expect(await eventually(() => sees('replica2', 'after-promotion'))).toBe(true);
    const [receiver] = await stack.query<{ tli: number }>(
      'replica2',
      'select received_tli as tli from pg_stat_wal_receiver',
    );
    expect(receiver?.tli).toBe(2);
  });

  it('refuses to promote the primary or rebuild it, with a clear reason', async () => {
    await expect(stack.promote('replica1')).rejects.toMatchObject({
      code: 'STACK_UNKNOWN_NODE',
      message: 'replica1 is not a replica',
    });
    await expect(stack.rebuild('replica1')).rejects.toThrow(
      /^replica1 is the primary; promote another node first/,
    );
    await expect(stack.promote('primary')).rejects.toMatchObject({ code: 'STACK_DIVERGED' });
    await expect(stack.promote('nope')).rejects.toBeInstanceOf(StackError);
  });

  it('rebuilds the old primary as a replica of the new one, from a live backup', async () => {
    await stack.rebuild('primary');

    expect(stack.diverged).toEqual([]);
    const status = await stack.status();
    expect(status.find((node) => node.name === 'primary')).toMatchObject({
      role: 'replica',
      running: true,
      inRecovery: true,
    });
    // It holds what was written before and after the failover, and follows new writes.
    expect(await sees('primary', 'before')).toBe(true);
    expect(await sees('primary', 'after-promotion')).toBe(true);
    await write('after-rebuild');
    expect(await eventually(() => sees('primary', 'after-rebuild'))).toBe(true);
    await stack.waitForReplicas();

    // And the stack can fail over again, back to the node named primary.
    const again = await stack.promote('primary');
    expect(again).toMatchObject({ primary: 'primary', timeline: 3, diverged: ['replica1'] });
    await stack.rebuild('replica1');
    await write('third-timeline');
    await stack.waitForReplicas();
    expect(await sees('replica1', 'third-timeline')).toBe(true);
    expect(await sees('replica2', 'third-timeline')).toBe(true);
  });

  it('does both from the command line, with progress lines and clear refusals', async () => {
    const cli = (...args: string[]) =>
      spawnTs(['src/cli/main.ts', 'stack', ...args, '--dir', stack.dir]);

    const missing = cli('promote');
    expect((await missing.exit()).code).toBe(2);
    expect(missing.output()).toContain('stack promote needs a node name');

    const promote = cli('promote', 'replica2');
    expect((await promote.exit()).code).toBe(0);
    expect(promote.output()).toMatch(/^replikit: promoting replica2$/m);
    expect(promote.output()).toMatch(
      /^replikit: replica2 is the primary \(timeline 4, forked at /m,
    );
    expect(promote.output()).toMatch(/^replica2\s+primary\s+running/m);
    expect(promote.output()).toMatch(
      /^primary\s+replica\s+stopped .*\(diverged: "replikit stack rebuild primary"\)$/m,
    );

    const again = cli('promote', 'primary');
    expect((await again.exit()).code).toBe(1);
    expect(again.output().trim().split('\n').at(-1)).toBe(
      'replikit: primary has diverged from the primary\'s timeline; rebuild it ("replikit stack rebuild primary") before promoting it',
    );

    const rebuild = cli('rebuild', 'primary');
    expect((await rebuild.exit()).code).toBe(0);
    expect(rebuild.output()).toMatch(/^replikit: primary streams from replica2$/m);
    expect(rebuild.output()).toMatch(/^primary\s+replica\s+running\s+postgres:\S+$/m);
  });
});
