/**
 * Command-line options of `npm run load`, parsed and checked without I/O.
 */
import { parseArgs } from 'node:util';

import { DEFAULT_BOUND_MS, DELAYS_MS, SAGA_DEFAULTS } from '../shared/scenarios.js';

export const DEFAULT_URL = 'http://127.0.0.1:3000';

export const USAGE = `usage: npm run load -- <staleness|sagas> [options]

  --url <url>             the running service (default ${DEFAULT_URL}); 127.0.0.1, ::1 or localhost only
  --local                 start the service in this process on the bench stack instead
  --stack-dir <dir>       the stack --local uses (default .replikit/bench)
  --duration <time>       staleness: longest run (default 2m); sagas: how long orders arrive (default 30s)
  --out <file>            also write the JSON summary there (it always goes to stdout)

staleness:
  --iterations <n>        writes, each read back once (default 1000)
  --vus <n>               concurrent writers, a user each (default 4)
  --delays <ms,...>       the t values (default ${DELAYS_MS.join(',')})
  --bound-ms <ms>         the bound of bounded-staleness (default ${DEFAULT_BOUND_MS})

sagas:
  --rate <n>              orders per second (default ${SAGA_DEFAULTS.rate})
  --max-in-flight <n>     orders in flight at most; an arrival past it is dropped (default ${SAGA_DEFAULTS.maxInFlight})
  --failure-share <0..1>  share of orders built to be refused (default ${SAGA_DEFAULTS.failureShare})

Exit code 0 when every threshold passed, 99 when one failed (as k6), 1 on an error, 2 on bad usage.`;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** `500ms`, `90s`, `2m`, `1m30s` or a bare number of seconds, in milliseconds. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let rest = trimmed;
  while (rest !== '') {
    const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)/.exec(rest);
    if (match === null) throw new UsageError(`bad duration "${text}" (try 500ms, 90s or 2m)`);
    total += Number(match[1]) * units[match[2]!]!;
    rest = rest.slice(match[0].length);
  }
  if (trimmed === '') throw new UsageError('empty duration');
  return total;
}

/** Load goes to this machine only: the URL's host must be a loopback address. */
export function loopbackUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`bad --url "${text}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`--url must be http(s), got ${url.protocol}`);
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (!(host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host))) {
    throw new UsageError(
      `--url must point at this machine (127.0.0.1, ::1, localhost), got ${host}`,
    );
  }
  return url.origin;
}

function whole(name: string, text: string, min: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) {
    throw new UsageError(`--${name} must be a whole number ≥ ${min}, got "${text}"`);
  }
  return value;
}

export interface CommonOptions {
  /** The service, or undefined with `--local`. */
  readonly url: string | undefined;
  readonly stackDir: string;
  readonly out: string | undefined;
}

export interface StalenessOptions extends CommonOptions {
  readonly scenario: 'staleness';
  readonly iterations: number;
  readonly vus: number;
  readonly maxDurationMs: number;
  readonly delaysMs: readonly number[];
  readonly boundMs: number;
}

export interface SagasOptions extends CommonOptions {
  readonly scenario: 'sagas';
  readonly rate: number;
  readonly durationMs: number;
  readonly maxInFlight: number;
  readonly failureShare: number;
}

export type LoadOptions = StalenessOptions | SagasOptions;

/** Parses `argv` (without node and the script). */
export function parseOptions(argv: readonly string[]): LoadOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        local: { type: 'boolean', default: false },
        'stack-dir': { type: 'string', default: '.replikit/bench' },
        duration: { type: 'string' },
        out: { type: 'string' },
        iterations: { type: 'string', default: '1000' },
        vus: { type: 'string', default: '4' },
        delays: { type: 'string', default: DELAYS_MS.join(',') },
        'bound-ms': { type: 'string', default: String(DEFAULT_BOUND_MS) },
        rate: { type: 'string', default: String(SAGA_DEFAULTS.rate) },
        'max-in-flight': { type: 'string', default: String(SAGA_DEFAULTS.maxInFlight) },
        'failure-share': { type: 'string', default: String(SAGA_DEFAULTS.failureShare) },
      },
    });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const { values, positionals } = parsed;
  const [scenario, ...extra] = positionals;
  if (scenario !== 'staleness' && scenario !== 'sagas') {
    throw new UsageError(
      scenario === undefined ? 'name a scenario' : `unknown scenario "${scenario}"`,
    );
  }
  if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`);
  if (values.local && values.url !== undefined) {
    throw new UsageError('give --url or --local, not both');
  }
  const common: CommonOptions = {
    url: values.local ? undefined : loopbackUrl(values.url ?? DEFAULT_URL),
    stackDir: values['stack-dir'],
    out: values.out,
  };
  if (scenario === 'staleness') {
    const delaysMs = values.delays.split(',').map((text) => whole('delays', text.trim(), 0));
    return {
      ...common,
      scenario,
      iterations: whole('iterations', values.iterations, 1),
      vus: whole('vus', values.vus, 1),
      maxDurationMs: parseDuration(values.duration ?? '2m'),
      delaysMs,
      boundMs: whole('bound-ms', values['bound-ms'], 0),
    };
  }
  const failureShare = Number(values['failure-share']);
  if (!(failureShare >= 0 && failureShare <= 1)) {
    throw new UsageError(
      `--failure-share must be between 0 and 1, got "${values['failure-share']}"`,
    );
  }
  return {
    ...common,
    scenario,
    rate: whole('rate', values.rate, 1),
    durationMs: parseDuration(values.duration ?? '30s'),
    maxInFlight: whole('max-in-flight', values['max-in-flight'], 1),
    failureShare,
  };
}
