import { describe, expect, it } from 'vitest';

import { parseByteSize } from '../src/http/json-body.js';

describe('parseByteSize', () => {
  it.each([
    [512, 512],
    ['512', 512],
    ['1kb', 1024],
    ['100KB', 102_400],
    ['1mb', 1_048_576],
  ] as const)('reads %s as %i bytes', (size, bytes) => {
    expect(parseByteSize(size)).toBe(bytes);
  });

  it.each([-1, 1.5, '', 'lots', '1 tb', '0x10'])('refuses %s', (size) => {
    expect(() => parseByteSize(size)).toThrow(/not a size in bytes/);
  });
});
