import { describe, expect, it } from 'vitest';

import { newEventId } from '../src/events/event-id.js';

describe('newEventId', () => {
  it('makes version 7 UUIDs carrying the time, in order across milliseconds', () => {
    const id = newEventId(Date.UTC(2025, 0, 2, 3, 4, 5, 6));
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(Date.UTC(2025, 0, 2, 3, 4, 5, 6));
    const earlier = newEventId(1_700_000_000_000);
    const later = newEventId(1_700_000_000_001);
    expect(earlier < later).toBe(true);
  });

  it('does not repeat within one millisecond', () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => newEventId(1_700_000_000_000)));
    expect(ids.size).toBe(10_000);
  });
});
