/**
 * A coordinator process for the 2PC crash test: runs random transfers at some concurrency and,
 * with probability CRASH_P at each of the two dangerous points (after prepare, after the
 * decision), kills itself with SIGKILL, printing P or D first. Prints one "s" per transfer started (stdout to a pipe is
 * synchronous on Linux, so the count survives the kill) and "done" when it finishes uncrashed.
 */
import { createCoordinator } from '../../src/twopc/index.js';
import { randomTransfer, transfer } from './ledger.js';

const env = (name: string): string => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const crashP = Number(process.env['CRASH_P'] ?? '0');
/** Dies at once, saying where: P after prepare (before the decision), D after the decision. */
const crashAt = (point: 'P' | 'D') => (): void => {
  if (Math.random() >= crashP) return;
  process.stdout.write(point);
  process.kill(process.pid, 'SIGKILL');
};

const coordinator = createCoordinator({
  name: env('NAME'),
  coordinator: env('COORDINATOR_URL'),
  participants: { ledger_a: env('LEDGER_A_URL'), ledger_b: env('LEDGER_B_URL') },
  recoveryIntervalMs: 500,
  lockTimeoutMs: 500,
  maxAttempts: 10,
  faults: { afterPrepare: crashAt('P'), afterDecision: crashAt('D') },
});
await coordinator.start();

let remaining = Number(env('COUNT'));
await Promise.all(
  Array.from({ length: Number(process.env['CONCURRENCY'] ?? '8') }, async () => {
    while (remaining > 0) {
      remaining--;
      process.stdout.write('s');
      // Business failures (an account would go negative) roll back and are fine here.
      await coordinator.run((tx) => transfer(tx, randomTransfer())).catch(() => undefined);
    }
  }),
);
process.stdout.write('\ndone\n');
await coordinator.close();
