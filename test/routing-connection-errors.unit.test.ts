import fc from 'fast-check';
import pg from 'pg';
import { describe, expect, it } from 'vitest';

import { isConnectionError } from '../src/routing/connection-errors.js';

/** An error as the server sends it, parsed by pg: a message and a SQLSTATE. */
function serverError(code: string, message: string): pg.DatabaseError {
  const err = new pg.DatabaseError(message, message.length, 'error');
  err.code = code;
  err.severity = 'ERROR';
  return err;
}

/** An error as Node's net module raises it. */
function systemError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${syscall} ${code} 127.0.0.1:5432`), {
    code,
    syscall,
    errno: -1,
    address: '127.0.0.1',
    port: 5432,
  });
}

describe('isConnectionError', () => {
  it.each([
    ['a refused connection', systemError('ECONNREFUSED', 'connect')],
    ['a reset connection', systemError('ECONNRESET', 'read')],
    ['a connection failure (08006)', serverError('08006', 'connection failure')],
    ['a connection that never opened (08001)', serverError('08001', 'could not connect')],
    [
      'an administrator shutdown (57P01)',
      serverError('57P01', 'terminating connection due to administrator command'),
    ],
    ['a server starting up (57P03)', serverError('57P03', 'the database system is starting up')],
    [
      'a recovery conflict on a standby (40001)',
      serverError('40001', 'canceling statement due to conflict with recovery'),
    ],
    ['pg losing the socket', new Error('Connection terminated unexpectedly')],
    ['pg closing a client under a query', new Error('Connection terminated')],
  ])('is true for %s', (_what, err) => {
    expect(isConnectionError(err)).toBe(true);
  });

  it.each([
    ['a syntax error (42601)', serverError('42601', 'syntax error at or near "SELEC"')],
    [
      'a unique violation (23505)',
      serverError('23505', 'duplicate key value violates unique constraint "users_pkey"'),
    ],
    ['a missing table (42P01)', serverError('42P01', 'relation "missing" does not exist')],
    ['a division by zero (22012)', serverError('22012', 'division by zero')],
    [
      'a statement timeout (57014)',
      serverError('57014', 'canceling statement due to statement timeout'),
    ],
    ['a deadlock (40P01)', serverError('40P01', 'deadlock detected')],
    ['a plain error', new Error('boom')],
    ['a TypeError', new TypeError('cannot read properties of undefined')],
  ])('is false for %s', (_what, err) => {
    expect(isConnectionError(err)).toBe(false);
  });

  it.each([
    ['a string', 'ECONNREFUSED'],
    ['a message-like string', 'Connection terminated unexpectedly'],
    ['an error-shaped object', { code: 'ECONNRESET', message: 'Connection terminated' }],
    ['null', null],
    ['undefined', undefined],
    ['a number', 8006],
  ])('is false for a non-Error: %s', (_what, value) => {
    expect(isConnectionError(value)).toBe(false);
  });

  it('is true for every SQLSTATE of class 08 (connection exception)', () => {
    const sqlstateChar = fc.constantFrom(...'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'.split(''));
    fc.assert(
      fc.property(fc.string({ unit: sqlstateChar, minLength: 3, maxLength: 3 }), (rest) => {
        expect(isConnectionError(serverError(`08${rest}`, 'connection exception'))).toBe(true);
      }),
      { numRuns: 100 },
    );
  });

  it('is false for SQLSTATEs of query errors, whatever their class', () => {
    // Classes 22 (data), 23 (integrity), 42 (syntax or access), 2B/25/P0 (transaction, PL/pgSQL).
    const sqlstateChar = fc.constantFrom(...'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ'.split(''));
    const queryClass = fc.constantFrom('22', '23', '42', '2B', '25', 'P0');
    fc.assert(
      fc.property(
        queryClass,
        fc.string({ unit: sqlstateChar, minLength: 3, maxLength: 3 }),
        (cls, rest) => {
          expect(isConnectionError(serverError(`${cls}${rest}`, 'the query is wrong'))).toBe(false);
        },
      ),
      { numRuns: 100 },
    );
  });

  it("trusts a query error's SQLSTATE over a message that mentions a connection", () => {
    // A relation may be named anything; the server's SQLSTATE says what went wrong.
    expect(
      isConnectionError(serverError('42P01', 'relation "connection terminated" does not exist')),
    ).toBe(false);
    // The control: pg's own message for a dropped connection, which carries no SQLSTATE, still counts.
    expect(isConnectionError(new Error('Connection terminated unexpectedly'))).toBe(true);
  });
});
