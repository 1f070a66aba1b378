import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

/** A child process whose output is collected, with a way to wait for a line. */
export interface Spawned {
  readonly child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
  exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `node --import tsx <args>` in a process group of its own, as a terminal would, so a test
 * can send it the Ctrl-C a person would (to the whole group).
 */
export function spawnTs(args: readonly string[], env: NodeJS.ProcessEnv = {}): Spawned {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    env: { ...process.env, ...env },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let text = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer): void => {
    text += chunk.toString('utf8');
    for (const listener of listeners) listener();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      for (const listener of listeners) listener();
      resolve({ code, signal });
    });
  });
  return {
    child,
    output: () => text,
    exit: () => exited,
    waitFor: (pattern, timeoutMs = 60_000) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const match = pattern.exec(text);
          if (match !== null) {
            cleanup();
            resolve(match[0]);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            cleanup();
            reject(new Error(`process exited before printing ${String(pattern)}:\n${text}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no ${String(pattern)} within ${timeoutMs} ms:\n${text}`));
        }, timeoutMs);
        const cleanup = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      }),
  };
}

/** Children started by {@link spawnTs} that have not exited. */
const running = new Set<ChildProcess>();

/**
 * Kills (SIGKILL, whole process group) every child {@link spawnTs} started that is still running:
 * for `afterEach`, so that a test that failed half way leaves no service or worker behind.
 */
export async function killSpawned(): Promise<void> {
  const left = [...running];
  for (const child of left) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await Promise.all(
    left.map((child) =>
      child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve()
        : new Promise<void>((resolve) => child.once('exit', () => resolve())),
    ),
  );
}

/** Sends `signal` to the child's whole process group, as a terminal's Ctrl-C does. */
export function signalGroup(spawned: Spawned, signal: NodeJS.Signals): void {
  const pid = spawned.child.pid;
  if (pid !== undefined) process.kill(-pid, signal);
}

/**
 * Pids of PostgreSQL servers (postmasters) whose data folder lies under `dir` (read from /proc).
 * A backend forked a moment ago still shows its postmaster's command line until it sets its
 * process title: processes whose parent is one of the servers found are left out.
 */
export function postgresProcessesUnder(dir: string): number[] {
  const found = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmdline[0]?.endsWith('postgres') === true && cmdline.some((arg) => arg.startsWith(dir))) {
        // The parent pid is the 4th field of /proc/<pid>/stat, after the command in parentheses.
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        found.set(Number(entry), ppid);
      }
    } catch {
      // the process ended while we looked
    }
  }
  return [...found].filter(([, ppid]) => !found.has(ppid)).map(([pid]) => pid);
}
