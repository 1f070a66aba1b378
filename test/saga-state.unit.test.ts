import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  defineSaga,
  nextAction,
  transition,
  type AttemptOutcome,
  type SagaDefinition,
  type SagaState,
  type SagaStep,
} from '../src/saga/index.js';
import { forcedCompensation, initialTransition, pivotIntent } from '../src/saga/saga-state.js';

const noop = (): Promise<void> => Promise.resolve();

function saga(stepCount: number, pivot?: number, localPivot = false): SagaDefinition<unknown> {
  const steps: SagaStep<unknown>[] = Array.from({ length: stepCount }, (_, index) => ({
    name: `s${index}`,
    run: noop,
    ...(pivot === undefined || index < pivot ? { compensate: noop } : {}),
    ...(index === pivot ? { pivot: true, ...(localPivot ? { local: true as const } : {}) } : {}),
  }));
  return defineSaga({ name: 'prop', version: 1, steps });
}

const outcome = fc.constantFrom<AttemptOutcome>(
  { kind: 'completed', output: null },
  { kind: 'completed', output: null },
  { kind: 'rejected', reason: 'no', message: 'refused' },
  { kind: 'failed', message: 'boom' },
  { kind: 'circuit_open', parkMs: 10 },
);

/** Drives a saga with the pure state machine, feeding outcomes in turn; records what completed. */
function simulate(definition: SagaDefinition<unknown>, outcomes: readonly AttemptOutcome[]) {
  let state: SagaState = initialTransition(definition).state;
  const ran: number[] = [];
  const compensated: number[] = [];
  let failedUnknown: number | undefined;
  for (let i = 0; i < 500; i++) {
    const action = nextAction(definition, state);
    if (action.kind === 'none') break;
    if (action.kind === 'finish') {
      state = { ...state, status: action.status };
      break;
    }
    const result = outcomes[i % outcomes.length] ?? { kind: 'completed', output: null };
    const next = transition(definition, state, action, result);
    if (action.kind === 'run' && result.kind === 'completed') ran.push(action.index);
    if (action.kind === 'compensate' && result.kind === 'completed') compensated.push(action.index);
    if (
      action.kind === 'run' &&
      result.kind === 'failed' &&
      next.state.status === 'compensating' &&
      state.status === 'running'
    )
      failedUnknown = action.index;
    state = next.state;
  }
  return { state, ran, compensated, failedUnknown };
}

describe('saga state machine', () => {
  it('compensates in the reverse order of completion, each step once (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(outcome, { minLength: 1, maxLength: 30 }),
        (steps, outcomes) => {
          const definition = saga(steps);
          const { state, ran, compensated, failedUnknown } = simulate(definition, outcomes);
          if (state.status === 'compensated' || state.status === 'compensating') {
            const undo = [...ran, ...(failedUnknown === undefined ? [] : [failedUnknown])]
              .sort((a, b) => b - a)
              .slice(0, compensated.length);
            expect(compensated).toEqual(undo);
          }
          if (state.status === 'compensated') {
            expect(compensated.length).toBe(ran.length + (failedUnknown === undefined ? 0 : 1));
          }
          if (state.status === 'completed') {
            expect(ran).toEqual(definition.steps.map((_, index) => index));
            expect(compensated).toEqual([]);
          }
          expect(new Set(compensated).size).toBe(compensated.length);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('never compensates a step at or past a completed pivot (property)', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 2, max: 6 })
          .chain((steps) => fc.tuple(fc.constant(steps), fc.integer({ min: 0, max: steps - 1 }))),
        fc.array(outcome, { minLength: 1, maxLength: 30 }),
        ([steps, pivot], outcomes) => {
          const definition = saga(steps, pivot);
          const { state, ran, compensated } = simulate(definition, outcomes);
          expect(compensated.every((index) => index < pivot)).toBe(true);
          if (ran.includes(pivot)) expect(compensated).toEqual([]);
          expect([
            'completed',
            'compensated',
            'needs_attention',
            'running',
            'compensating',
          ]).toContain(state.status);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('a rejected step is not compensated; one that failed with an unknown outcome is', () => {
    const definition = saga(3);
    let state = initialTransition(definition).state;
    state = transition(
      definition,
      state,
      { kind: 'run', index: 0 },
      { kind: 'completed', output: 1 },
    ).state;
    const rejected = transition(
      definition,
      state,
      { kind: 'run', index: 1 },
      { kind: 'rejected', reason: 'no', message: 'refused' },
    );
    expect(rejected.state).toMatchObject({ status: 'compensating', pending: [0] });
    expect(rejected.state.failure).toEqual({ step: 's1', reason: 'no', message: 'refused' });
    let failing = state;
    for (let attempt = 1; attempt <= 3; attempt++) {
      const next = transition(
        definition,
        failing,
        { kind: 'run', index: 1 },
        { kind: 'failed', message: 'x' },
      );
      if (attempt < 3) {
        expect(next.state).toMatchObject({ status: 'running', attempt: attempt + 1 });
        expect(next.delayMs).toBeGreaterThanOrEqual(0);
      }
      failing = next.state;
    }
    expect(failing).toMatchObject({ status: 'compensating', pending: [1, 0] });
    expect(failing.failure?.reason).toBe('retries_exhausted');
  });

  it('a pivot whose outcome stays unknown needs attention instead of compensating', () => {
    const definition = saga(2, 1);
    let state = initialTransition(definition).state;
    state = transition(
      definition,
      state,
      { kind: 'run', index: 0 },
      { kind: 'completed', output: 1 },
    ).state;
    for (let attempt = 1; attempt <= 3; attempt++) {
      state = transition(
        definition,
        state,
        { kind: 'run', index: 1 },
        { kind: 'failed', message: 'x' },
      ).state;
    }
    expect(state).toMatchObject({ status: 'needs_attention', pending: [] });
    expect(state.attention).toMatchObject({ phase: 'forward', step: 's1' });
    // A refusal at the pivot is definite: it did nothing, so the steps before it are undone.
    const refused = transition(
      definition,
      { ...state, status: 'running', attempt: 1, attention: null },
      { kind: 'run', index: 1 },
      { kind: 'rejected', reason: 'no', message: 'refused' },
    );
    expect(refused.state).toMatchObject({ status: 'compensating', pending: [0] });
  });

  it('forced compensation is accepted only while the pivot has not happened and cannot happen (property)', () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 2, max: 5 })
          .chain((steps) => fc.tuple(fc.constant(steps), fc.integer({ min: 0, max: steps - 1 }))),
        fc.boolean(),
        fc.array(outcome, { minLength: 1, maxLength: 30 }),
        fc.nat(40),
        ([steps, pivot], localPivot, outcomes, at) => {
          const definition = saga(steps, pivot, localPivot);
          let state: SagaState = initialTransition(definition).state;
          // Whether the pivot may have taken effect: a remote call that completed or failed (a
          // refusal did nothing), or a local transaction that committed (only a completed one does).
          let pivotMayHaveRun = false;
          for (let i = 0; i < Math.min(at, 500); i++) {
            const action = nextAction(definition, state);
            if (action.kind !== 'run' && action.kind !== 'compensate') break;
            const result = outcomes[i % outcomes.length] ?? { kind: 'completed', output: null };
            if (action.kind === 'run') {
              // As the engine does: the intent first, then the call.
              state = pivotIntent(definition, state, action.index)?.state ?? state;
              if (action.index === pivot)
                pivotMayHaveRun ||=
                  result.kind === 'completed' || (result.kind === 'failed' && !localPivot);
            }
            state = transition(definition, state, action, result).state;
          }
          const decision = forcedCompensation(definition, state);
          // Continuing a compensation the saga itself began is not a forced one.
          const forced = state.status !== 'compensating' && state.attention?.phase !== 'compensate';
          if (decision.kind === 'accepted' && forced) expect(pivotMayHaveRun).toBe(false);
          if (decision.kind === 'refused' && decision.reason === 'pivot_in_doubt') {
            expect(localPivot).toBe(false);
            expect(state.stepIndex).toBe(pivot);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('forced compensation: refused once a remote pivot’s intent is logged, accepted at a local pivot', () => {
    const remote = saga(2, 1);
    const atPivot = transition(
      remote,
      initialTransition(remote).state,
      { kind: 'run', index: 0 },
      { kind: 'completed', output: 1 },
    ).state;
    expect(forcedCompensation(remote, atPivot)).toMatchObject({
      kind: 'accepted',
      transition: { state: { status: 'compensating', pending: [0] } },
    });
    const intent = pivotIntent(remote, atPivot, 1);
    expect(intent?.log).toEqual([
      { index: 1, phase: 'run', name: 's1', status: 'running', attempts: 1, finished: false },
    ]);
    expect(pivotIntent(remote, atPivot, 0)).toBeUndefined();
    const started = intent?.state ?? atPivot;
    expect(pivotIntent(remote, started, 1)).toBeUndefined();
    expect(forcedCompensation(remote, started)).toEqual({
      kind: 'refused',
      reason: 'pivot_in_doubt',
    });
    const local = saga(2, 1, true);
    expect(pivotIntent(local, atPivot, 1)).toBeUndefined();
    expect(forcedCompensation(local, atPivot).kind).toBe('accepted');
  });

  it('a parked step keeps its attempt and waits', () => {
    const definition = saga(2);
    const state = initialTransition(definition).state;
    const parked = transition(
      definition,
      state,
      { kind: 'run', index: 0 },
      { kind: 'circuit_open', parkMs: 750 },
    );
    expect(parked.state).toEqual(state);
    expect(parked.delayMs).toBe(750);
    expect(parked.log[0]).toMatchObject({ status: 'parked', attempts: 1 });
  });
});

describe('defineSaga', () => {
  it.each([
    [
      'a bad name',
      { name: 'Order!', version: 1, steps: [{ name: 'a', run: noop, compensate: noop }] },
      /name/,
    ],
    ['no steps', { name: 'o', version: 1, steps: [] }, /at least one step/],
    [
      'version 0',
      { name: 'o', version: 0, steps: [{ name: 'a', run: noop, compensate: noop }] },
      /version/,
    ],
    [
      'duplicate steps',
      {
        name: 'o',
        version: 1,
        steps: [
          { name: 'a', run: noop, compensate: noop },
          { name: 'a', run: noop, compensate: noop },
        ],
      },
      /two steps are named "a"/,
    ],
    [
      'a step without compensation before the pivot',
      { name: 'o', version: 1, steps: [{ name: 'a', run: noop }] },
      /needs a compensate/,
    ],
    [
      'a compensation after the pivot',
      {
        name: 'o',
        version: 1,
        steps: [
          { name: 'a', run: noop, pivot: true },
          { name: 'b', run: noop, compensate: noop },
        ],
      },
      /after the pivot/,
    ],
    [
      'two pivots',
      {
        name: 'o',
        version: 1,
        steps: [
          { name: 'a', run: noop, pivot: true },
          { name: 'b', run: noop, pivot: true },
        ],
      },
      /only one step/,
    ],
  ])('refuses %s', (_, options, message) => {
    expect(() => defineSaga(options as Parameters<typeof defineSaga>[0])).toThrow(message);
  });

  it('records the pivot', () => {
    expect(saga(3, 1).pivotIndex).toBe(1);
    expect(saga(3).pivotIndex).toBe(3);
    expect(saga(3).key).toBe('prop@1');
  });
});
