import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import type { MeasureReport } from '../src/measure/index.js';
import type { LocalStack } from '../src/stack/index.js';
import { killSpawned, signalGroup, spawnTs } from './support/process.js';
import { createTestDatabase, testStack, type TestDatabase } from './support/stack.js';

let stack: LocalStack;
let db: TestDatabase;
let dir: string;

beforeAll(async () => {
  stack = await testStack();
  db = await createTestDatabase('measure');
  dir = await mkdtemp(join(tmpdir(), 'replikit-measure-'));
});

afterAll(async () => {
  await db?.drop();
  await rm(dir, { recursive: true, force: true });
});

// A test that failed half way must not leave a measurement running.
afterEach(killSpawned);

function replicaUrl(name: string): string {
  const url = db.replicaUrls[name];
  if (url === undefined) throw new Error(`no ${name} in the test stack`);
  return url;
}

async function measureTables(): Promise<string[]> {
  const rows = await stack.query<{ tablename: string }>(
    'primary',
    `select tablename from pg_tables where tablename like 'replikit\\_measure\\_%'`,
    [],
    db.name,
  );
  return rows.map((row) => row.tablename);
}

function measure(args: readonly string[]) {
  return spawnTs(['src/cli/main.ts', 'measure', '--primary', db.primaryUrl, ...args]);
}

/** Stale share pooled over the delays t = 0..20 ms, from the `--json` report. */
function staleShareUpTo20ms(report: MeasureReport, replica: string): number {
  const curve = report.curves.find((c) => c.replica === replica);
  const points = curve?.points.filter((p) => p.delayMs <= 20) ?? [];
  const reads = points.reduce((sum, p) => sum + p.reads, 0);
  const stale = points.reduce((sum, p) => sum + p.stale, 0);
  expect(reads).toBeGreaterThan(10);
  return stale / reads;
}

describe('replikit measure', () => {
  it('refuses a replica given as the primary, and a primary given as a replica, with exit 2', async () => {
    const asPrimary = spawnTs([
      'src/cli/main.ts',
      'measure',
      '--primary',
      replicaUrl('replica1'),
      '--replica',
      replicaUrl('replica2'),
    ]);
    expect((await asPrimary.exit()).code).toBe(2);
    expect(asPrimary.output().trim().split('\n')).toEqual([
      expect.stringMatching(
        /^replikit: --primary \S+ is in recovery: it is a replica, not a primary$/,
      ),
    ]);

    const asReplica = measure(['--replica', db.primaryUrl]);
    expect((await asReplica.exit()).code).toBe(2);
    expect(asReplica.output().trim().split('\n')).toEqual([
      expect.stringMatching(
        /^replikit: --replica \S+ is not in recovery: it is a primary, not a replica$/,
      ),
    ]);
    expect(await measureTables()).toEqual([]);
  });

  it('measures a real pair: prints the summary, writes the SVG and drops its table', async () => {
    const out = join(dir, 'report.svg');
    const run = measure([
      '--replica',
      replicaUrl('replica1'),
      '--replica',
      replicaUrl('replica2'),
      '--duration',
      '3s',
      '--out',
      out,
    ]);
    expect((await run.exit()).code).toBe(0);
    const text = run.output();
    expect(text).toMatch(/replikit: measuring for 3 s in table replikit_measure_[0-9a-f]+/);
    expect(text).toContain('P(stale) of a read t ms after COMMIT');
    expect(text).toMatch(/^\s+all replicas\s+\d+\.\d% \d+\/\d+/m);
    expect(text).toContain('read-your-writes (wait up to 1000 ms)');
    expect(text).toContain('eventual:');
    const svg = await readFile(out, 'utf8');
    expect(svg).toContain('PBS t-visibility');
    expect(svg).toContain('Time behind');
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(await measureTables()).toEqual([]);
  });

  it('drops its table when stopped with Ctrl-C', async () => {
    const run = measure(['--replica', replicaUrl('replica1'), '--duration', '30s']);
    await run.waitFor(/in table replikit_measure_/, 30_000);
    expect(await measureTables()).toHaveLength(1);
    signalGroup(run, 'SIGINT');
    expect((await run.exit()).code).toBe(130);
    expect(await measureTables()).toEqual([]);
  });

  it('detects staleness: a 50 ms apply delay makes reads up to 20 ms after COMMIT stale', async () => {
    const args = ['--replica', replicaUrl('replica1'), '--duration', '3s', '--json'];
    const report = async (): Promise<MeasureReport> => {
      const run = measure(args);
      expect((await run.exit()).code).toBe(0);
      const json = run.output().slice(run.output().indexOf('{'));
      return JSON.parse(json.slice(0, json.lastIndexOf('}') + 1)) as MeasureReport;
    };
    const replica = (r: MeasureReport): string => r.replicas[0] ?? '';

    const normal = await report();
    let delayed: MeasureReport;
    try {
      await stack.setApplyDelay('replica1', 50);
      delayed = await report();
    } finally {
      await stack.resetFaults();
    }
    const delayedShare = staleShareUpTo20ms(delayed, replica(delayed));
    const normalShare = staleShareUpTo20ms(normal, replica(normal));
    expect(delayedShare).toBeGreaterThan(0.9);
    expect(normalShare).toBeLessThan(delayedShare - 0.3);
    // Every write became visible once the delay had passed: time behind is about 50 ms.
    expect(delayed.timeBehind[0]?.p50Ms).toBeGreaterThanOrEqual(45);
    expect(await measureTables()).toEqual([]);
  });
});
