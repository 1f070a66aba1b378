import { STATUS_CODES } from 'node:http';

import { describe, expect, it } from 'vitest';

import { ConfigError } from '../src/app/config.js';
import { ReplikitError } from '../src/errors.js';
import { ERROR_STATUS, toProblemDetails } from '../src/http/problem-details.js';

/** An error as body-parser raises it (through http-errors). */
function bodyParserError(type: string, status: number, extra: object = {}): Error {
  return Object.assign(new Error(`body-parser says ${type}`), {
    type,
    status,
    statusCode: status,
    expose: true,
    ...extra,
  });
}

describe('toProblemDetails', () => {
  it('maps a client-error code to its status, with message and details', () => {
    const err = new ReplikitError('NOT_FOUND', 'no user 42', { details: { id: 42 } });
    expect(toProblemDetails(err, { instance: '/users/42' })).toEqual({
      problem: {
        type: 'urn:replikit:problem:NOT_FOUND',
        title: 'Not Found',
        status: 404,
        detail: 'no user 42',
        instance: '/users/42',
        code: 'NOT_FOUND',
        details: { id: 42 },
      },
      log: false,
    });
  });

  it('keeps details of server errors out of the answer, and asks for a log line', () => {
    const err = new ReplikitError('NO_NODE_AVAILABLE', 'no node can serve this read', {
      details: { url: 'postgres://app:secret@db/app' },
    });
    const { problem, log } = toProblemDetails(err);
    expect(problem).toMatchObject({
      status: 503,
      title: 'Service Unavailable',
      code: 'NO_NODE_AVAILABLE',
    });
    expect(problem.details).toBeUndefined();
    expect(JSON.stringify(problem)).not.toContain('secret');
    expect(log).toBe(true);
  });

  it('answers 500 without the message for a code nobody mapped', () => {
    const err = new ReplikitError('SOMETHING_INTERNAL', 'pool 7 has a corrupt free list at 0x1f');
    const { problem, log } = toProblemDetails(err);
    expect(problem.status).toBe(500);
    expect(problem.code).toBe('SOMETHING_INTERNAL');
    expect(problem.detail).not.toContain('0x1f');
    expect(log).toBe(true);
  });

  it('answers a transaction PostgreSQL rolled back with 500 (logged), and a reused idempotency key with 422', () => {
    const rolledBack = toProblemDetails(
      new ReplikitError('TRANSACTION_ROLLED_BACK', 'the transaction was rolled back'),
    );
    expect(rolledBack.problem).toMatchObject({ status: 500, code: 'TRANSACTION_ROLLED_BACK' });
    expect(rolledBack.log).toBe(true);
    const reused = toProblemDetails(
      new ReplikitError('IDEMPOTENCY_KEY_REUSED', 'used for a different request', {
        details: { key: 'k1' },
      }),
    );
    expect(reused.problem).toMatchObject({ status: 422, details: { key: 'k1' } });
    expect(reused.log).toBe(false);
  });

  it('tells a client when to try a 503 again: the expected wait when known, else 1 s', () => {
    const busy = toProblemDetails(new ReplikitError('REPLICA_WAIT_BUSY', 'busy'));
    expect(busy.retryAfterSeconds).toBe(1);
    const late = toProblemDetails(
      new ReplikitError('REPLICA_WAIT_TIMEOUT', 'late', { details: { expectedWaitMs: 2300 } }),
    );
    expect(late.retryAfterSeconds).toBe(3);
    expect(
      toProblemDetails(new ReplikitError('NOT_FOUND', 'no')).retryAfterSeconds,
    ).toBeUndefined();
  });

  it('lets an application map its own codes', () => {
    const err = new ReplikitError('TEAPOT', 'short and stout');
    const { problem } = toProblemDetails(err, { statusByCode: { TEAPOT: 418 } });
    expect(problem).toMatchObject({ status: 418, detail: 'short and stout' });
  });

  it('maps subclasses by their code', () => {
    const { problem } = toProblemDetails(new ConfigError('PORT', 'invalid PORT'));
    expect(problem).toMatchObject({ status: 500, code: 'CONFIG_INVALID' });
  });

  it.each([
    ['entity.parse.failed', 400, 400, /not valid JSON/],
    ['entity.too.large', 413, 413, /larger than the 100 bytes/],
    ['charset.unsupported', 415, 415, /charset/],
    ['encoding.unsupported', 415, 415, /content encoding/],
    ['request.aborted', 400, 400, /aborted/],
  ])('maps body-parser %s to %i', (type, raised, status, detail) => {
    const { problem, log } = toProblemDetails(bodyParserError(type, raised, { limit: 100 }));
    expect(problem).toMatchObject({
      type: 'about:blank',
      status,
      title: STATUS_CODES[status],
    });
    expect(problem.detail).toMatch(detail);
    expect(log).toBe(false);
  });

  it('keeps the status of other client errors, showing only exposed messages', () => {
    const exposed = Object.assign(new Error('Method Not Allowed here'), {
      status: 405,
      expose: true,
    });
    const hidden = Object.assign(new Error('internal reason'), { status: 403, expose: false });
    expect(toProblemDetails(exposed).problem).toMatchObject({
      status: 405,
      detail: 'Method Not Allowed here',
    });
    expect(toProblemDetails(hidden).problem).toEqual({
      type: 'about:blank',
      title: 'Forbidden',
      status: 403,
    });
  });

  it.each([
    ['an Error', new Error('connection string postgres://app:secret@db')],
    ['an http error with status 502', Object.assign(new Error('upstream secret'), { status: 502 })],
    ['a string', 'secret'],
    ['undefined', undefined],
    ['null', null],
  ])('answers a generic 500 for %s, revealing nothing', (_, thrown) => {
    const { problem, log } = toProblemDetails(thrown, { instance: '/x' });
    expect(problem).toEqual({
      type: 'about:blank',
      title: 'Internal Server Error',
      status: 500,
      detail: 'The service failed to handle this request; the error has been logged.',
      instance: '/x',
    });
    expect(log).toBe(true);
  });

  it('has a valid HTTP error status for every mapped code', () => {
    for (const [code, status] of Object.entries(ERROR_STATUS)) {
      expect(code).toMatch(/^[A-Z][A-Z0-9_]*$/);
      expect(STATUS_CODES[status], code).toBeDefined();
      expect(status).toBeGreaterThanOrEqual(400);
    }
  });
});
