import { randomUUID } from 'node:crypto';

import { bulkhead, isBulkheadRejectedError } from 'cockatiel';
import { Router } from 'express';
import { z } from 'zod';

import { ReplikitError } from '../errors.js';
import { locationHeader, named, type ApiOperation } from '../http/openapi.js';
import { parseInput } from '../http/validation.js';
import { isConnectionError } from '../routing/connection-errors.js';
import type { Cluster } from '../routing/index.js';
import type { SagaDefinition, SagaEngine, SagaRecord } from '../saga/index.js';
import type { Logger } from '../telemetry/logger.js';
import {
  IDEMPOTENCY_HEADERS,
  idempotencyKeyHeader,
  idempotencyKeyReused,
  requestFingerprint,
} from './idempotency.js';
import type { TransferInput } from './transfer-saga.js';
import {
  TwoPhaseError,
  type Coordinator,
  type DistributedTransaction,
  type RunResult,
} from '../twopc/index.js';

/** The ledger databases by the first letter of their accounts' ids; the values are 2PC participant names. */
export const LEDGERS = { a: 'ledger_a', b: 'ledger_b' } as const;

/** A ledger's participant name: `ledger_a` or `ledger_b`. */
export type LedgerName = (typeof LEDGERS)[keyof typeof LEDGERS];

/** What the transfers demo needs; see {@link transfersRouter}. */
export interface TransfersOptions {
  /** Runs each transfer; its participants must be named `ledger_a` and `ledger_b`. */
  readonly coordinator: Pick<Coordinator, 'run'>;
  /** One routed cluster per ledger database, for reads and for the tokens handed out after a transfer. */
  readonly ledgers: Readonly<Record<LedgerName, Cluster>>;
  /**
   * Transfers run at once; the others wait for their turn (a queue is fairer than a pile-up on
   * the pools' connection timeouts). A transfer holds one connection to the coordinator's database
   * and one to each ledger, so keep this below the coordinator's pool size. Default 8, for the
   * default pool of 10.
   */
  readonly concurrency?: number;
  /** Transfers that may wait for a turn; beyond that, 503 `TRANSFERS_BUSY`. Default 200. */
  readonly queue?: number;
  /** The saga mode (`?mode=saga`); refused when absent. */
  readonly saga?: {
    readonly engine: Pick<SagaEngine, 'run' | 'wait'>;
    readonly definition: SagaDefinition<TransferInput>;
    /** How long to wait for the saga before answering 202. Default 2000 ms. */
    readonly waitMs?: number;
  };
}

/** An account as the API shows it. */
export interface Account {
  readonly id: string;
  readonly ledger: LedgerName;
  readonly balance: number;
  readonly updatedAt: string;
}

/** A committed transfer as `POST /transfers` answers it. */
export interface Transfer {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly amount: number;
  /** How it was made: one distributed transaction, or a saga (debit, credit, refund on failure). */
  readonly mode: '2pc' | 'saga';
  /** The distributed transaction that committed it (2PC). */
  readonly transaction?: string;
  /** The saga that made it (saga mode); `GET /sagas/<id>` shows its steps. */
  readonly sagaId?: string;
  /** The saga's status: `completed`, or `running` when it did not finish within the wait. */
  readonly status?: string;
  /**
   * Ledgers whose COMMIT PREPARED has not gone through yet. The transfer is committed (the
   * decision is recorded) and recovery finishes these within seconds, but until then a read of
   * such a ledger may not show it, token or not. Always empty in saga mode.
   */
  readonly pending: readonly LedgerName[];
}

/** Largest amount one transfer may move. */
export const MAX_TRANSFER_AMOUNT = 1_000_000;

const accountId = z
  .string()
  .regex(/^[ab][0-9]{1,9}$/, 'must be an account id: a or b followed by digits, such as a3 or b7');

const transferBody = z
  .strictObject({
    from: accountId,
    to: accountId,
    amount: z
      .number()
      .int('must be a whole number')
      .min(1, 'must be at least 1')
      .max(MAX_TRANSFER_AMOUNT, `must be at most ${MAX_TRANSFER_AMOUNT}`),
  })
  .superRefine((body, ctx) => {
    if (body.from === body.to) {
      ctx.addIssue({ code: 'custom', path: ['to'], message: 'must differ from from' });
    } else if (body.from[0] === body.to[0]) {
      ctx.addIssue({
        code: 'custom',
        path: ['to'],
        message:
          'must be in the other ledger (a… to b… or b… to a…): transfers here show two-phase commit across two databases',
      });
    }
  });

const transferQuery = z.strictObject({
  mode: z.enum(['2pc', 'saga'], { error: 'must be 2pc or saga' }).default('2pc'),
});

const accountParam = z.strictObject({ id: accountId });

interface AccountRow {
  id: string;
  balance: string;
  updated_at: Date;
}

/** Where idempotency keys live: ledger A, which takes part in every transfer (from and to differ in ledger). */
const KEYS_LEDGER: LedgerName = LEDGERS.a;

/** A transfer's idempotency key as stored; see the `0004-transfer-keys` migration. */
interface KeyRow {
  transfer_id: string;
  fingerprint: string;
  transaction: string | null;
}

/** The errors a transfer may fail with on purpose: answered as they are, never as an aborted 2PC. */
const TRANSFER_ERRORS = new Set(['NOT_FOUND', 'INSUFFICIENT_FUNDS']);

const CHECK_VIOLATION = '23514';

/** The ledger that holds an account: `a…` in ledger A, `b…` in ledger B. */
export function ledgerOf(account: string): LedgerName {
  return account.startsWith('a') ? LEDGERS.a : LEDGERS.b;
}

function noAccount(id: string): ReplikitError {
  return new ReplikitError('NOT_FOUND', `no account ${id}`, { details: { account: id } });
}

/**
 * Adds `delta` to an account's balance and records the transfer on that account's ledger. The
 * balance check constraint refuses a balance below zero: the debit that would overdraw fails.
 */
async function post(
  tx: DistributedTransaction,
  transfer: { id: string; account: string; delta: number },
): Promise<void> {
  const ledger = ledgerOf(transfer.account);
  try {
    const { rowCount } = await tx.query(
      ledger,
      'update accounts set balance = balance + $1, updated_at = now() where id = $2',
      [transfer.delta, transfer.account],
    );
    if (rowCount === 0) throw noAccount(transfer.account);
  } catch (err) {
    if ((err as { code?: unknown }).code !== CHECK_VIOLATION) throw err;
    throw new ReplikitError(
      'INSUFFICIENT_FUNDS',
      `account ${transfer.account} holds less than ${-transfer.delta}; nothing was transferred`,
      { cause: err, details: { account: transfer.account, amount: -transfer.delta } },
    );
  }
  await tx.query(ledger, 'insert into transfers (id, amount) values ($1, $2)', [
    transfer.id,
    transfer.delta,
  ]);
}

/**
 * What the client of a failed transfer is told. A business error raised inside the transaction
 * comes out as the cause of `TWOPC_ABORTED`: it is answered as itself. The coordinator's own
 * messages quote database errors, written for whoever runs the service (they are logged with the
 * cause); the client learns what happened to its transfer and what it may do next.
 */
function forClient(err: unknown, id: string): unknown {
  if (isBulkheadRejectedError(err)) {
    return new ReplikitError(
      'TRANSFERS_BUSY',
      'too many transfers are waiting for their turn; nothing changed, try again shortly',
      { cause: err },
    );
  }
  if (!(err instanceof TwoPhaseError)) {
    // The coordinator's own database could not give it a connection: it never began.
    return isConnectionError(err)
      ? new ReplikitError(
          'TWOPC_ABORTED',
          `transfer ${id} could not begin (the coordinator's database is unreachable); nothing changed, so sending it again is safe`,
          { cause: err, details: { id } },
        )
      : err;
  }
  if (err.cause instanceof ReplikitError && TRANSFER_ERRORS.has(err.cause.code)) return err.cause;
  const details = { id, transaction: err.details['transaction'] };
  switch (err.code) {
    case 'TWOPC_ABORTED':
    case 'TWOPC_PREPARE_TIMEOUT':
      return new ReplikitError(
        err.code,
        `transfer ${id} was rolled back on both ledgers (${err.code === 'TWOPC_ABORTED' ? 'a ledger failed' : 'a ledger took too long to prepare'}); nothing changed, so sending it again is safe`,
        { cause: err, details },
      );
    case 'TWOPC_IN_DOUBT':
      return new ReplikitError(
        err.code,
        `the outcome of transfer ${id} is not known yet: recovery commits or rolls back both ledgers within seconds; read both balances with X-Consistency: strong before sending it again`,
        { cause: err, details },
      );
    default:
      return err;
  }
}

/**
 * The two-phase commit demo: money moves between accounts of two ledger databases, atomically.
 * Accounts are named after their ledger: `a1`…`a10` live in ledger A, `b1`…`b10` in ledger B.
 *
 * - `POST /transfers?mode=saga` does the same with a saga: debit, then credit, and a refund of the
 *   debit when the credit is refused; no locks held across the databases, but for a moment the
 *   money has left one account and not reached the other. 201 once completed, 202 (with
 *   `Location: /sagas/<id>`) when it did not finish within the wait.
 * - `POST /transfers` `{ from, to, amount }` (`?mode=2pc`, the default) → 201
 *   {@link Transfer}; both balances and a `transfers` row on each ledger change in one distributed
 *   transaction, and the response's `X-Consistency-Token` covers both. `from` and `to` must be in
 *   different ledgers; `amount` is a whole number from 1 to 1,000,000.
 * - Either mode takes an `Idempotency-Key` header: a request sent again with the same key (or
 *   racing the first) answers the first transfer, with `Idempotent-Replayed: true`, and moves
 *   nothing. The key lives in ledger A (`transfer_keys`): a 2PC transfer writes it in its own
 *   distributed transaction, so it exists exactly when the transfer committed; a saga transfer
 *   writes it before starting the saga under the same key, and a retry starts or finds that saga.
 * - `GET /accounts/:id` → 200 {@link Account}, read through that ledger's cluster (routed by
 *   `X-Consistency`, read-your-writes by default).
 *
 * Failures, as `application/problem+json`:
 * - 400 `VALIDATION_FAILED`: malformed input, an unknown `mode`, `from` = `to`, or both in one ledger;
 * - 404 `NOT_FOUND`: an account that does not exist (nothing changed);
 * - 409 `INSUFFICIENT_FUNDS`: `from` holds less than `amount` (nothing changed; retry once it holds enough);
 * - 422 `IDEMPOTENCY_KEY_REUSED`: the key came before with another body or mode (nothing changed);
 * - 503 `TWOPC_ABORTED` / `TWOPC_PREPARE_TIMEOUT`: a ledger failed or was too slow; everything was
 *   rolled back, so sending the same transfer again is safe;
 * - 503 `TRANSFERS_BUSY`: too many transfers queued (nothing changed; retry shortly);
 * - 503 `TWOPC_IN_DOUBT`: the outcome is not known yet; recovery commits or rolls back both ledgers
 *   within seconds. Do not send it again blindly: read both balances (`X-Consistency: strong`) first.
 */
export function transfersRouter(options: TransfersOptions & { readonly logger: Logger }): Router {
  const { coordinator, ledgers, logger } = options;
  const admission = bulkhead(options.concurrency ?? 8, options.queue ?? 200);
  const router = Router();

  /** The saga mode: debit, credit, and a refund of the debit when the credit is refused. */
  async function bySaga(
    id: string,
    from: string,
    to: string,
    amount: number,
    key: string | undefined,
  ): Promise<[number, Transfer]> {
    const saga = options.saga;
    if (saga === undefined)
      throw new ReplikitError(
        'VALIDATION_FAILED',
        'invalid query: mode: the saga mode is not set up here',
        {
          details: { issues: [{ path: 'mode', message: 'not available' }] },
        },
      );
    // Under a key, one saga per key: a retry (or a request racing the first) gets the first's,
    // and starts it if the request that wrote the key died before it could.
    const started = await saga.engine.run(
      saga.definition,
      { transferId: id, from, to, amount },
      key === undefined ? {} : { key: `transfer:${key}` },
    );
    const record: SagaRecord = await saga.engine.wait(started.id, {
      timeoutMs: saga.waitMs ?? 2000,
    });
    const failure = record.state.failure;
    if (record.state.status === 'compensated' && failure !== null) {
      // Refused before any money moved for good: answered as the 2PC mode answers it.
      if (failure.reason === 'insufficient_funds')
        throw new ReplikitError(
          'INSUFFICIENT_FUNDS',
          `account ${from} holds less than ${amount}; nothing was transferred`,
          { details: { account: from, amount, sagaId: record.id } },
        );
      if (failure.reason === 'no_account') throw noAccount(failure.step === 'debit' ? from : to);
    }
    const transfer: Transfer = {
      id,
      from,
      to,
      amount,
      mode: 'saga',
      sagaId: record.id,
      status: record.state.status,
      pending: [],
    };
    return [record.state.status === 'completed' ? 201 : 202, transfer];
  }

  /** The transfer a key names, read on ledger A's primary. */
  async function findKey(key: string): Promise<KeyRow | undefined> {
    const { rows } = await ledgers[KEYS_LEDGER].read<KeyRow & Record<string, unknown>>(
      'select transfer_id, fingerprint, transaction from transfer_keys where key = $1',
      [key],
      { consistency: { level: 'strong' } },
    );
    return rows[0];
  }

  router.post('/transfers', async (req, res) => {
    const { mode } = parseInput(transferQuery, req.query, 'query');
    const { from, to, amount } = parseInput(transferBody, req.body, 'body');
    const key = parseInput(idempotencyKeyHeader, req.get(IDEMPOTENCY_HEADERS.key), 'header');
    const fingerprint = requestFingerprint({ mode, from, to, amount });
    let id: string = randomUUID();
    /** Answers with the transfer `found` names; 422 when its key was sent with another request. */
    const replay = (found: KeyRow, sent: string): KeyRow => {
      if (found.fingerprint !== fingerprint) throw idempotencyKeyReused(sent);
      id = found.transfer_id;
      res.set(IDEMPOTENCY_HEADERS.replayed, 'true');
      return found;
    };
    if (mode === 'saga') {
      if (key !== undefined) {
        // The key is written before the saga starts: a request that dies in between leaves a key
        // whose saga the retry starts (the saga's own key makes that once).
        const { rows } = await ledgers[KEYS_LEDGER].write<{ transfer_id: string }>(
          `insert into transfer_keys (key, fingerprint, transfer_id, mode) values ($1, $2, $3, 'saga')
           on conflict (key) do nothing returning transfer_id`,
          [key, fingerprint, id],
        );
        if (rows[0] === undefined) {
          const found = await findKey(key);
          // Keys are never deleted: the row that conflicted is there.
          if (found === undefined) throw new Error(`idempotency key ${key} vanished`);
          replay(found, key);
        }
      }
      const [status, transfer] = await bySaga(id, from, to, amount, key);
      // The saga's steps wrote through its own pools: a write through each ledger's cluster takes
      // a token at or past them (one WAL), so that a read with it shows the transfer.
      await Promise.all(Object.values(ledgers).map((ledger) => ledger.write('select 1'))).catch(
        (err: unknown) =>
          logger.warn({ err, transfer: id }, 'no consistency token after a transfer'),
      );
      if (status === 202) res.location(`/sagas/${transfer.sagaId ?? ''}`);
      res.status(status).json(transfer);
      return;
    }
    // Each side in ledger order (a, then b), whichever way the money goes: two transfers in
    // opposite directions then lock their rows in the same order. In the other order they could
    // each hold a row in one database and wait for the other's in the second, a deadlock neither
    // server can see (each holds only half of it) that only lock_timeout would break, seconds later.
    const sides = [
      { id, account: from, delta: -amount },
      { id, account: to, delta: amount },
    ].sort((x, y) => ledgerOf(x.account).localeCompare(ledgerOf(y.account)));
    let run: Pick<RunResult<void>, 'transaction' | 'pending'>;
    /** The first transfer under the key: committed, so nothing is pending that a token can wait for. */
    const replayRun = (found: KeyRow, sent: string): typeof run => ({
      transaction: replay(found, sent).transaction ?? '',
      pending: [],
    });
    const found = key === undefined ? undefined : await findKey(key);
    if (found !== undefined && key !== undefined) {
      run = replayRun(found, key);
    } else {
      try {
        run = await admission.execute(() =>
          coordinator.run(async (tx) => {
            if (key !== undefined) {
              // First, and in the same distributed transaction as the money: the key exists if
              // and only if this transfer commits. A request with the same key running at the
              // same time waits here for this one's outcome, then finds the key taken (or not).
              const claimed = await tx.query(
                KEYS_LEDGER,
                `insert into transfer_keys (key, fingerprint, transfer_id, mode, transaction)
                 values ($1, $2, $3, '2pc', $4) on conflict (key) do nothing`,
                [key, fingerprint, id, tx.id],
              );
              if (claimed.rowCount === 0) throw new Error(`idempotency key ${key} is taken`);
            }
            for (const side of sides) await post(tx, side);
          }),
        );
      } catch (err) {
        // Whatever failed, a transfer under the same key may have committed meanwhile: answer it.
        const committed = key === undefined ? undefined : await findKey(key).catch(() => undefined);
        if (committed === undefined || key === undefined) throw forClient(err, id);
        run = replayRun(committed, key);
      }
    }

    // The commit went through the coordinator's own connections, not a cluster, so the session
    // has no token for it yet. A WAL position read on the primary after COMMIT PREPARED returned
    // is at or past that commit's record: a replica that has replayed it shows the transfer. The
    // ledgers are databases on the same primary, one WAL, so `select 1` through each ledger's
    // cluster (which takes its token after the statement) is all it takes. The `pending` ledgers
    // have not committed yet: no token can cover them.
    try {
      await Promise.all(Object.values(ledgers).map((ledger) => ledger.write('select 1')));
    } catch (err) {
      // The transfer is committed: failing the request now would invite a second one.
      logger.warn(
        { err, transfer: id },
        'no consistency token after a committed transfer; reads may not show it at once',
      );
    }
    const transfer: Transfer = {
      id,
      from,
      to,
      amount,
      mode: '2pc',
      transaction: run.transaction,
      pending: run.pending as LedgerName[],
    };
    res.status(201).json(transfer);
  });

  router.get('/accounts/:id', async (req, res) => {
    const { id } = parseInput(accountParam, req.params, 'path');
    const ledger = ledgerOf(id);
    const { rows } = await ledgers[ledger].read<AccountRow>(
      'select id, balance::text as balance, updated_at from accounts where id = $1',
      [id],
    );
    const row = rows[0];
    if (row === undefined) throw noAccount(id);
    const account: Account = {
      id: row.id,
      ledger,
      balance: Number(row.balance),
      updatedAt: row.updated_at.toISOString(),
    };
    res.json(account);
  });

  return router;
}

const ledgerName = z.enum([LEDGERS.a, LEDGERS.b]);

/** An {@link Account} as the API describes it. */
export const accountSchema = z.strictObject({
  id: z.string(),
  ledger: ledgerName,
  balance: z.number().int().min(0),
  updatedAt: z.iso.datetime(),
}) satisfies z.ZodType<Account>;

/** A {@link Transfer} as the API describes it. */
export const transferSchema = z.strictObject({
  id: z.uuid(),
  from: z.string(),
  to: z.string(),
  amount: z.number().int().min(1),
  mode: z.enum(['2pc', 'saga']),
  transaction: z.string().optional().describe('2PC: the distributed transaction that committed it'),
  sagaId: z.uuid().optional().describe('Saga mode: the saga that made it (`GET /sagas/<id>`)'),
  status: z
    .string()
    .optional()
    .describe('Saga mode: `completed`, or `running` when it did not finish within the wait'),
  pending: z
    .array(ledgerName)
    .describe(
      'Ledgers whose COMMIT PREPARED recovery has yet to finish: committed, but a read there may miss it for a few seconds',
    ),
}) satisfies z.ZodType<Transfer>;

const transfer = named('Transfer', transferSchema);
const replayed = {
  name: IDEMPOTENCY_HEADERS.replayed,
  description:
    "`true` when this is the first request's answer under the same key: nothing moved now.",
  schema: z.literal('true'),
};

/** The routes of {@link transfersRouter}, for the service's OpenAPI document. */
export const TRANSFERS_API: readonly ApiOperation[] = [
  {
    method: 'post',
    path: '/transfers',
    operationId: 'transfer',
    summary: 'Move money from an account of one ledger to an account of the other',
    description:
      "One distributed transaction across both ledgers (`mode=2pc`, the default), or a saga (`mode=saga`: debit, credit, and a refund when the credit is refused). The answer's token covers both ledgers.",
    tags: ['transfers'],
    session: true,
    query: transferQuery,
    headers: [
      {
        name: IDEMPOTENCY_HEADERS.key,
        description:
          "The client's name for this transfer (1–200 characters): a retry, or a request racing the first, answers the first transfer and moves nothing.",
        schema: idempotencyKeyHeader,
      },
    ],
    body: named('TransferRequest', transferBody),
    responses: {
      201: { description: 'Committed on both ledgers.', schema: transfer, headers: [replayed] },
      202: {
        description: 'Saga mode: the saga did not finish within the wait.',
        schema: transfer,
        headers: [locationHeader('`/sagas/<id>`'), replayed],
      },
    },
    problems: {
      VALIDATION_FAILED:
        'a field is missing or malformed, `from` = `to`, both accounts are in one ledger, or the mode is unknown',
      NOT_FOUND: 'no such account; nothing changed',
      INSUFFICIENT_FUNDS: '`from` holds less than `amount`; nothing changed',
      IDEMPOTENCY_KEY_REUSED: 'the key came before with another transfer; nothing changed',
      TWOPC_ABORTED: 'a ledger failed; everything rolled back, sending it again is safe',
      TWOPC_PREPARE_TIMEOUT: 'a ledger was too slow to prepare; everything rolled back',
      TRANSFERS_BUSY: 'too many transfers waiting; nothing begun, send it again shortly',
      TWOPC_IN_DOUBT:
        'the outcome is not known for a few seconds: read both balances (`strong`) before sending it again',
      TWOPC_PARTIAL_COMMIT:
        'someone settled a ledger against the decision; do not send it again, tell the operator',
    },
  },
  {
    method: 'get',
    path: '/accounts/:id',
    operationId: 'getAccount',
    summary: 'Read an account',
    description: "Read through its ledger's cluster, routed by `X-Consistency`.",
    tags: ['transfers'],
    session: true,
    params: accountParam,
    responses: { 200: { description: 'The account.', schema: named('Account', accountSchema) } },
    problems: {
      VALIDATION_FAILED: 'the id is not an account id (`a` or `b` and digits)',
      NOT_FOUND: 'no such account',
    },
  },
];
