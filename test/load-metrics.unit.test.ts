import { describe, expect, it } from 'vitest';

import { MetricSet, parseMetricKey, passes, percentileOf, valuesOf } from '../load/node/metrics.js';
import { loopbackUrl, parseDuration, parseOptions, UsageError } from '../load/node/options.js';

describe('k6 metrics in Node', () => {
  it('computes percentiles as k6 does, interpolating between ranks', () => {
    expect(percentileOf([1, 2, 3, 4], 50)).toBe(2.5);
    expect(percentileOf([1, 2, 3, 4], 100)).toBe(4);
    expect(percentileOf([5], 99)).toBe(5);
    expect(percentileOf([], 50)).toBeNaN();
  });

  it('reports rate, counter and trend values under k6’s names', () => {
    expect(valuesOf('rate', [1, 0, 0, 1], 1000)).toEqual({ rate: 0.5, passes: 2, fails: 2 });
    expect(valuesOf('counter', [1, 2], 2000)).toEqual({ count: 3, rate: 1.5 });
    expect(valuesOf('trend', [4, 1, 3, 2], 1000)).toMatchObject({
      avg: 2.5,
      min: 1,
      max: 4,
      med: 2.5,
      count: 4,
    });
    expect(valuesOf('rate', [], 1000)).toEqual({ rate: 0, passes: 0, fails: 0 });
  });

  it('evaluates threshold expressions', () => {
    expect(passes('count==0', { count: 0 })).toBe(true);
    expect(passes('count == 0', { count: 1 })).toBe(false);
    expect(passes('rate<0.01', { rate: 0.02 })).toBe(false);
    expect(passes('p(95)<400', { 'p(95)': 100 })).toBe(true);
    expect(passes('p(99.9)<=5', {}, [1, 2, 3])).toBe(true);
    expect(() => passes('count=0', { count: 0 })).toThrow(RangeError);
    expect(() => passes('avg<1', { count: 0 })).toThrow(/no avg/);
  });

  it('parses submetric names', () => {
    expect(parseMetricKey('stale_reads{level:bounded-staleness,t:5}')).toEqual({
      name: 'stale_reads',
      tags: { level: 'bounded-staleness', t: '5' },
    });
    expect(parseMetricKey('iterations')).toEqual({ name: 'iterations', tags: {} });
    expect(() => parseMetricKey('x{oops}')).toThrow(RangeError);
  });

  it('keeps a submetric per threshold, filtered by tags, and fails a threshold on a metric never created', () => {
    const metrics = new MetricSet();
    const rate = metrics.rate('stale_reads');
    rate.add(true, { level: 'eventual', t: 0 });
    rate.add(false, { level: 'eventual', t: 1 });
    rate.add(false, { level: 'strong', t: 0 });
    const data = metrics.summaryData(
      {
        'stale_reads{level:eventual}': ['rate>=0.5'],
        'stale_reads{t:0}': ['rate<0.5'],
        missing: ['count==0'],
      },
      1000,
    );
    expect(data.metrics['stale_reads']?.values).toEqual({ rate: 1 / 3, passes: 1, fails: 2 });
    expect(data.metrics['stale_reads{level:eventual}']).toMatchObject({
      values: { passes: 1, fails: 1 },
      thresholds: { 'rate>=0.5': { ok: true } },
    });
    expect(data.metrics['stale_reads{t:0}']?.thresholds).toEqual({ 'rate<0.5': { ok: false } });
    expect(data.metrics['missing']?.thresholds).toEqual({ 'count==0': { ok: false } });
    expect(() => metrics.trend('stale_reads')).toThrow(/is a rate/);
  });
});

describe('npm run load options', () => {
  it('parses durations', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('2')).toBe(2000);
    expect(() => parseDuration('soon')).toThrow(UsageError);
  });

  it('only sends load to this machine', () => {
    expect(loopbackUrl('http://127.0.0.1:3000/')).toBe('http://127.0.0.1:3000');
    expect(loopbackUrl('http://localhost:8080')).toBe('http://localhost:8080');
    expect(loopbackUrl('http://[::1]:3000')).toBe('http://[::1]:3000');
    expect(() => loopbackUrl('http://example.com:3000')).toThrow(/this machine/);
    expect(() => loopbackUrl('ftp://127.0.0.1')).toThrow(UsageError);
  });

  it('defaults to the service on 127.0.0.1:3000, and takes --local instead', () => {
    expect(parseOptions(['staleness'])).toMatchObject({
      scenario: 'staleness',
      url: 'http://127.0.0.1:3000',
      iterations: 1000,
      vus: 4,
      maxDurationMs: 120_000,
      delaysMs: [0, 1, 2, 5, 10, 20, 50, 100],
      boundMs: 100,
    });
    expect(parseOptions(['sagas', '--local', '--rate', '5', '--duration', '10s'])).toMatchObject({
      scenario: 'sagas',
      url: undefined,
      rate: 5,
      durationMs: 10_000,
      stackDir: '.replikit/bench',
    });
    expect(() => parseOptions([])).toThrow(/name a scenario/);
    expect(() => parseOptions(['soak'])).toThrow(/unknown scenario/);
    expect(() => parseOptions(['sagas', '--local', '--url', 'http://127.0.0.1:1'])).toThrow(
      /not both/,
    );
    expect(() => parseOptions(['sagas', '--failure-share', '2'])).toThrow(/between 0 and 1/);
    expect(() => parseOptions(['staleness', '--iterations', '0'])).toThrow(UsageError);
  });
});
