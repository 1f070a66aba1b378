/**
 * A projection runner process for the kill test: runs the `countsProjection` named NAME on
 * DATABASE_URL. With KILL_AT_BATCH=n it kills itself with SIGKILL in its n-th batch, after the
 * batch's read-model writes and before its commit, printing "K" first. Prints "running" once it
 * holds the lock, "standby" while another process does; stops cleanly on SIGTERM.
 */
import { createEventStore } from '../../src/events/index.js';
import { countsProjection } from './events.js';

const url = process.env['DATABASE_URL'];
const name = process.env['NAME'];
if (url === undefined || name === undefined) throw new Error('DATABASE_URL and NAME must be set');
const killAt = Number(process.env['KILL_AT_BATCH'] ?? '0');

let batches = 0;
const store = createEventStore({ connection: url });
const runner = store.startProjection(countsProjection(name), {
  batchSize: Number(process.env['BATCH_SIZE'] ?? '50'),
  pollIntervalMs: 10,
  lockRetryMs: 50,
  faults: {
    beforeCommit: () => {
      batches++;
      if (killAt > 0 && batches >= killAt) {
        process.stdout.write('K\n');
        process.kill(process.pid, 'SIGKILL');
      }
    },
  },
});

let said = '';
const timer = setInterval(() => {
  const state = runner.state.state;
  if (state !== said && (state === 'running' || state === 'standby')) {
    said = state;
    process.stdout.write(`${state}\n`);
  }
}, 5);

process.once('SIGTERM', () => {
  clearInterval(timer);
  void store.close().then(() => {
    process.stdout.write('stopped\n');
    process.exit(0);
  });
});
