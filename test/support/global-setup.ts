import { resolve } from 'node:path';

import type { TestProject } from 'vitest/node';

import { LocalStack } from '../../src/stack/index.js';
import { rollbackPrepared } from './stack.js';

/** Where the test stack lives; apart from the `npm start` stack so both can run at once. */
export const TEST_STACK_DIR = resolve(process.env['REPLIKIT_TEST_STACK_DIR'] ?? '.replikit/test');

declare module 'vitest' {
  export interface ProvidedContext {
    stackDir: string;
  }
}

let stack: LocalStack | undefined;

/** Starts (or adopts) the shared test stack once per run and stops it at the end. */
export async function setup(project: TestProject): Promise<void> {
  const started = Date.now();
  stack = await LocalStack.start({
    dir: TEST_STACK_DIR,
    log: (line) => console.log(`[stack] ${line}`),
  });
  // A previous run that died mid-test may have left a replica paused or delayed.
  await stack.resetFaults();
  // A run that died mid-test may also have left prepared transactions holding locks.
  await rollbackPrepared(stack);
  console.log(`[stack] ready in ${Date.now() - started} ms`);
  project.provide('stackDir', TEST_STACK_DIR);
}

export async function teardown(): Promise<void> {
  await stack?.stop();
}
