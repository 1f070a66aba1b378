#!/usr/bin/env node
import { parseArgs } from 'node:util';

import { ReplikitError } from '../errors.js';
import { measureCommand } from './measure-command.js';
import { stackCommand } from './stack-command.js';

const USAGE = `usage: replikit <command>

commands:
  stack up      start a local PostgreSQL primary and replicas (Ctrl-C stops them; --detach leaves them running)
  stack down    stop the local stack (--purge also deletes its data)
  stack status  show every node's role, state and URL (--json for scripts)
  stack promote NODE   fail over: make replica NODE the primary
  stack rebuild NODE   make NODE anew as a replica of the current primary
  measure       a staleness report for a primary and its replicas (--primary URL --replica URL)

run "replikit stack --help" or "replikit measure --help" for the options`;

/**
 * Exit codes: 0 success, 1 something is wrong with the stack or a server, 2 the command line was
 * wrong (for `measure`, also: the servers are not a primary and replicas of it).
 */
async function main(argv: readonly string[]): Promise<number> {
  const { positionals } = parseArgs({ args: [...argv], strict: false, allowPositionals: true });
  const [command, ...rest] = positionals;
  if (command === 'stack') return stackCommand(argv.slice(argv.indexOf('stack') + 1));
  if (command === 'measure') return measureCommand(argv.slice(argv.indexOf('measure') + 1));
  if (command === undefined && (argv.includes('--help') || argv.includes('-h'))) {
    console.log(USAGE);
    return 0;
  }
  console.error(
    command === undefined
      ? USAGE
      : `replikit: unknown command "${[command, ...rest].join(' ')}"\n\n${USAGE}`,
  );
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ReplikitError) console.error(`replikit: ${err.message}`);
    else if (
      err instanceof TypeError &&
      (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')
    ) {
      console.error(`replikit: ${err.message}\n\n${USAGE}`);
      process.exitCode = 2;
      return;
    } else console.error(err);
    process.exitCode = 1;
  },
);
