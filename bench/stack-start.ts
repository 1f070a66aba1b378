/**
 * Cold and warm start times of the local stack (primary + 2 replicas, streaming).
 *
 *   npm run bench:stack            # embedded PostgreSQL
 *   REPLIKIT_PG_BIN=/usr/lib/postgresql/15/bin npm run bench:stack
 *
 * Cold: an empty folder (initdb, slots, copies, first start). Warm: the same folder, servers stopped.
 * Prints medians; the machine is shared, so single runs mean little.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { LocalStack } from '../src/stack/index.js';
import { median } from './support/report.js';

const { values } = parseArgs({
  options: { cold: { type: 'string', default: '3' }, warm: { type: 'string', default: '5' } },
});

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

const root = await mkdtemp(join(tmpdir(), 'replikit-bench-stack-'));
await chmod(root, 0o755);
const cold: number[] = [];
const warm: number[] = [];
let version = '';
try {
  for (let i = 0; i < Number(values.cold); i++) {
    const dir = join(root, `cold-${i}`);
    let stack: LocalStack | undefined;
    cold.push(await timed(async () => (stack = await LocalStack.start({ dir }))));
    version = stack!.binaries.version;
    await stack!.stop();
    process.stderr.write(`cold ${i + 1}/${values.cold}: ${cold.at(-1)!.toFixed(0)} ms\n`);
  }
  const dir = join(root, 'cold-0');
  for (let i = 0; i < Number(values.warm); i++) {
    let stack: LocalStack | undefined;
    warm.push(await timed(async () => (stack = await LocalStack.start({ dir }))));
    await stack!.stop();
    process.stderr.write(`warm ${i + 1}/${values.warm}: ${warm.at(-1)!.toFixed(0)} ms\n`);
  }
} finally {
  await rm(root, { recursive: true, force: true });
}

console.log(
  `| ${version} | cold start (median of ${cold.length}) | ${median(cold).toFixed(0)} ms |`,
);
console.log(
  `| ${version} | warm start (median of ${warm.length}) | ${median(warm).toFixed(0)} ms |`,
);
