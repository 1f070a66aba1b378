import type { HistoryRecorder, Observation } from '../../../src/verify/index.js';

/** Where the service processes listen; `undefined` while one is down. */
export interface ServiceUrls {
  readonly urls: (string | undefined)[];
}

/** The registers: user ids, register `i` being `ids[i]`. */
export interface Registers {
  readonly ids: readonly string[];
}

/** The name a user is created with: the register's initial value. */
export const INITIAL_NAME = 'init';

const REQUEST_TIMEOUT_MS = 5000;

/** A unique value per write across every session of a run. */
export class ValueSource {
  #next = 1;
  next(): number {
    return this.#next++;
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error ? `${err.message}: ${cause.message}` : err.message;
  }
  return String(err);
}

/**
 * One client session (a Jepsen process): it carries its consistency token from response to
 * request, whichever service process it talks to, and records every operation in the history.
 */
export class Session {
  readonly process: number;
  #token: string | undefined;
  readonly #history: HistoryRecorder;
  readonly #services: ServiceUrls;
  readonly #registers: Registers;
  readonly #keyOf: Map<string, number>;
  readonly #random: () => number;

  constructor(options: {
    process: number;
    history: HistoryRecorder;
    services: ServiceUrls;
    registers: Registers;
    random: () => number;
  }) {
    this.process = options.process;
    this.#history = options.history;
    this.#services = options.services;
    this.#registers = options.registers;
    this.#keyOf = new Map(options.registers.ids.map((id, key) => [id, key]));
    this.#random = options.random;
  }

  /** A service process that is up, picked at random: the session switches between them. */
  #service(): { index: number; url: string } | undefined {
    const up = this.#services.urls
      .map((url, index) => ({ index, url }))
      .filter((entry): entry is { index: number; url: string } => entry.url !== undefined);
    return up[Math.floor(this.#random() * up.length)];
  }

  #headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.#token === undefined ? extra : { ...extra, 'x-consistency-token': this.#token };
  }

  #keepToken(response: Response): string | undefined {
    this.#token = response.headers.get('x-consistency-token') ?? this.#token;
    return this.#token;
  }

  /**
   * Writes `value` to register `key`. Acknowledged (200) is `ok` with the new version; a 4xx is
   * `fail` (the write was refused); anything else, a lost connection or a timeout is `info`: the
   * write may or may not have committed.
   */
  async write(key: number, value: number): Promise<boolean> {
    const service = this.#service();
    if (service === undefined) return false;
    const done = this.#history.invoke(this.process, {
      f: 'write',
      key,
      value,
      service: service.index,
    });
    try {
      const response = await fetch(`${service.url}/users/${this.#registers.ids[key]}`, {
        method: 'PATCH',
        headers: this.#headers({ 'content-type': 'application/json' }),
        body: JSON.stringify({ name: `v${value}` }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const text = await response.text();
      const token = this.#keepToken(response);
      const facts = token === undefined ? {} : { token };
      if (response.status === 200) {
        done({ type: 'ok', version: (JSON.parse(text) as { version: number }).version }, facts);
      } else if (response.status >= 400 && response.status < 500) {
        done({ type: 'fail', error: `${response.status} ${text.slice(0, 200)}` }, facts);
      } else {
        done({ type: 'info', error: `${response.status} ${text.slice(0, 200)}` }, facts);
      }
    } catch (err) {
      done({ type: 'info', error: describe(err) });
    }
    return true;
  }

  /**
   * Reads every register with `X-Consistency: send`, recorded as a read at `level` (the same,
   * unless a control mislabels it on purpose). Anything but a 200 is `fail`: a read changes nothing.
   */
  async read(send: string, level = send, final = false): Promise<boolean> {
    const service = this.#service();
    if (service === undefined) return false;
    const done = this.#history.invoke(this.process, {
      f: 'read',
      level,
      ...(final ? { final: true } : {}),
      service: service.index,
    });
    try {
      const response = await fetch(`${service.url}/users?limit=100`, {
        headers: this.#headers({ 'x-consistency': send }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      const text = await response.text();
      const token = this.#keepToken(response);
      const servedBy = response.headers.get('x-served-by') ?? undefined;
      const facts = {
        ...(token === undefined ? {} : { token }),
        ...(servedBy === undefined ? {} : { servedBy }),
      };
      if (response.status !== 200) {
        done({ type: 'fail', error: `${response.status} ${text.slice(0, 200)}` }, facts);
        return true;
      }
      const body = JSON.parse(text) as { items: { id: string; name: string; version: number }[] };
      const value: Record<number, Observation> = {};
      for (const item of body.items) {
        const key = this.#keyOf.get(item.id);
        if (key === undefined) continue;
        value[key] = {
          value: item.name === INITIAL_NAME ? null : Number(item.name.slice(1)),
          version: item.version,
        };
      }
      done({ type: 'ok', value }, facts);
    } catch (err) {
      done({ type: 'fail', error: describe(err) });
    }
    return true;
  }
}
