import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import {
  formatConsistency,
  parseConsistency,
  type Consistency,
} from '../src/routing/consistency.js';
import { RoutingError } from '../src/routing/routing-error.js';

const DAY_MS = 24 * 60 * 60 * 1000;

const bounds = fc.oneof(
  fc.integer({ min: 0, max: DAY_MS }),
  fc.constantFrom(0, 1, 500, 2000, DAY_MS),
);
const consistencies: fc.Arbitrary<Consistency> = fc.oneof(
  fc.constant({ level: 'strong' as const }),
  fc.constant({ level: 'read-your-writes' as const }),
  fc.constant({ level: 'monotonic' as const }),
  fc.constant({ level: 'eventual' as const }),
  bounds.map((maxStalenessMs) => ({ level: 'bounded-staleness' as const, maxStalenessMs })),
  bounds.map((windowMs) => ({ level: 'sticky-window' as const, windowMs })),
);
/** What trim() removes: HTTP's optional whitespace and then some. */
const whitespace = fc.string({
  unit: fc.constantFrom(' ', '\t', '\n', '\r', '\u00a0'),
  maxLength: 4,
});

function parseError(text: string): RoutingError {
  let caught: unknown;
  try {
    parseConsistency(text);
  } catch (err) {
    caught = err;
  }
  expect(caught, `parseConsistency(${JSON.stringify(text)}) should throw`).toBeInstanceOf(
    RoutingError,
  );
  expect((caught as RoutingError).code).toBe('CONSISTENCY_INVALID');
  return caught as RoutingError;
}

/** The length of the longest run of `input` that appears verbatim in `message`. */
function longestEcho(message: string, input: string): number {
  let longest = 0;
  let previous = new Array<number>(input.length + 1).fill(0);
  for (let i = 1; i <= message.length; i++) {
    const current = new Array<number>(input.length + 1).fill(0);
    for (let j = 1; j <= input.length; j++) {
      if (message[i - 1] === input[j - 1]) {
        current[j] = previous[j - 1]! + 1;
        if (current[j]! > longest) longest = current[j]!;
      }
    }
    previous = current;
  }
  return longest;
}

describe('parseConsistency', () => {
  it.each<[string, Consistency]>([
    ['strong', { level: 'strong' }],
    ['read-your-writes', { level: 'read-your-writes' }],
    ['monotonic', { level: 'monotonic' }],
    ['eventual', { level: 'eventual' }],
    ['bounded-staleness=500', { level: 'bounded-staleness', maxStalenessMs: 500 }],
    ['bounded-staleness=0', { level: 'bounded-staleness', maxStalenessMs: 0 }],
    ['bounded-staleness=86400000', { level: 'bounded-staleness', maxStalenessMs: DAY_MS }],
    ['sticky-window=2000', { level: 'sticky-window', windowMs: 2000 }],
    ['  monotonic\t', { level: 'monotonic' }],
    [' bounded-staleness=250 ', { level: 'bounded-staleness', maxStalenessMs: 250 }],
  ])('reads %j', (text, expected) => {
    expect(parseConsistency(text)).toEqual(expected);
  });

  it('round-trips with formatConsistency, with or without surrounding whitespace', () => {
    fc.assert(
      fc.property(consistencies, whitespace, whitespace, (consistency, before, after) => {
        const text = formatConsistency(consistency);
        expect(text).toMatch(/^[a-z-]+(=\d+)?$/);
        expect(parseConsistency(text)).toEqual(consistency);
        expect(parseConsistency(before + text + after)).toEqual(consistency);
        expect(formatConsistency(parseConsistency(before + text + after))).toBe(text);
      }),
      { numRuns: 200 },
    );
  });

  it.each([
    ['an empty value', ''],
    ['only whitespace', '   '],
    ['an unknown level', 'linearizable'],
    ['a misspelt level', 'read-your-write'],
    ['an upper-case level', 'STRONG'],
    ['underscores', 'read_your_writes'],
    ['a parameter on strong', 'strong=1'],
    ['an empty parameter on eventual', 'eventual='],
    ['a parameter on monotonic', 'monotonic=5'],
    ['a parameter on read-your-writes', 'read-your-writes=0'],
    ['a bound without its level', '=500'],
    ['a missing bound', 'bounded-staleness'],
    ['an empty bound', 'bounded-staleness='],
    ['a missing window', 'sticky-window'],
    ['an empty window', 'sticky-window='],
    ['a negative bound', 'bounded-staleness=-1'],
    ['a signed bound', 'bounded-staleness=+5'],
    ['a fractional bound', 'bounded-staleness=1.5'],
    ['an exponent', 'bounded-staleness=1e3'],
    ['a hexadecimal bound', 'bounded-staleness=0x10'],
    ['a unit', 'bounded-staleness=500ms'],
    ['a non-numeric bound', 'bounded-staleness=soon'],
    ['Infinity', 'sticky-window=Infinity'],
    ['NaN', 'sticky-window=NaN'],
    ['non-ASCII digits', 'bounded-staleness=٥٠٠'],
    ['a second parameter', 'bounded-staleness=5=6'],
    ['a list', 'bounded-staleness=5,strong'],
    ['whitespace around =', 'bounded-staleness = 500'],
    ['whitespace inside the bound', 'bounded-staleness=5 00'],
    ['a bound of a day and a millisecond', `bounded-staleness=${DAY_MS + 1}`],
    ['a window of a billion', 'sticky-window=999999999'],
    ['a ten-digit bound', 'bounded-staleness=1000000000'],
    ['a huge bound', `bounded-staleness=${'9'.repeat(400)}`],
    ['two levels', 'strong, eventual'],
  ])('rejects %s with CONSISTENCY_INVALID', (_what, text) => {
    parseError(text);
  });

  it('rejects bounds past a day and accepts every whole number of milliseconds up to it', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 * DAY_MS }), (ms) => {
        const text = `sticky-window=${ms}`;
        if (ms <= DAY_MS)
          expect(parseConsistency(text)).toEqual({ level: 'sticky-window', windowMs: ms });
        else parseError(text);
      }),
      { numRuns: 200 },
    );
  });

  it('names the offending level or value in the message', () => {
    expect(parseError('linearizable').message).toContain('"linearizable"');
    expect(parseError('bounded-staleness=soon').message).toContain('soon');
    expect(parseError('bounded-staleness=soon').message).toContain('bounded-staleness');
    expect(parseError(`sticky-window=${DAY_MS + 1}`).message).toContain(String(DAY_MS + 1));
    expect(parseError('strong=1').message).toContain('strong');
    expect(parseError('bounded-staleness').message).toContain('bounded-staleness=');
  });

  it('echoes at most 40 characters of what the client sent', () => {
    // Letters that no message contains in a row, so any long echo is the input's.
    const payload = fc.string({
      unit: fc.constantFrom(...'QXJZVWKqxjzvwk0123456789_-:;%'.split('')),
      minLength: 41,
      maxLength: 200,
    });
    // Each shape puts the payload where a client could, and says whether the message should name it.
    const shapes = fc.constantFrom<[(p: string) => string, boolean]>(
      [(p) => p, true],
      [(p) => `${p}=500`, true],
      [(p) => `eventual${p}`, true],
      [(p) => `bounded-staleness=${p}`, true],
      [(p) => `sticky-window=${p}`, true],
      [(p) => `sticky-window=1${p}`, true],
      [(p) => `strong=${p}`, false],
    );
    fc.assert(
      fc.property(payload, shapes, (p, [shape, named]) => {
        const input = shape(p);
        const { message } = parseError(input);
        expect(longestEcho(message, input)).toBeLessThanOrEqual(40);
        if (named) expect(message).toContain(p.slice(0, 10));
      }),
      { numRuns: 200 },
    );
  });
});

describe('formatConsistency', () => {
  it('writes the header form', () => {
    expect(formatConsistency({ level: 'strong' })).toBe('strong');
    expect(formatConsistency({ level: 'read-your-writes' })).toBe('read-your-writes');
    expect(formatConsistency({ level: 'bounded-staleness', maxStalenessMs: 500 })).toBe(
      'bounded-staleness=500',
    );
    expect(formatConsistency({ level: 'sticky-window', windowMs: 2000 })).toBe(
      'sticky-window=2000',
    );
  });
});
