import { describe, expect, it } from 'vitest';

import {
  ALL_REPLICAS,
  buildReport,
  escapeXml,
  niceMax,
  renderReportHtml,
  renderReportSvg,
  renderVisibilityPlot,
  type MeasureReport,
} from '../src/measure/index.js';

/**
 * A small well-formedness check: every tag closes in order, attributes are quoted, and no bare `&`
 * or `<` is left in text. Enough to catch unescaped labels and unbalanced elements.
 */
function checkXml(text: string): void {
  const body = text.replace(/^<\?xml[^>]*\?>\s*/, '').replace(/^<!DOCTYPE html>\s*/, '');
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  for (let match = tag.exec(body); match !== null; match = tag.exec(body)) {
    const between = body.slice(last, match.index);
    expect(between, `text before <${match[2]}>`).not.toMatch(/<|&(?!(amp|lt|gt|quot|apos);)/);
    last = tag.lastIndex;
    const [, closing, name, , selfClosing] = match;
    if (name === undefined) continue;
    // HTML void elements in the page.
    if (['meta'].includes(name)) continue;
    if (closing === '/') expect(stack.pop(), `closing </${name}>`).toBe(name);
    else if (selfClosing !== '/') stack.push(name);
  }
  expect(body.slice(last).trim()).toBe('');
  expect(stack).toEqual([]);
}

const report: MeasureReport = buildReport(
  {
    replicas: ['db-1:5433', 'db<2>:5434'],
    delaysMs: [0, 1, 2, 5, 10, 20, 50, 100],
    durationMs: 3000,
    writes: 16,
    trials: [0, 1, 2, 5, 10, 20, 50, 100].flatMap((delayMs) => [
      { replica: 'db-1:5433', delayMs, atMs: delayMs * 10, visible: delayMs >= 2 },
      { replica: 'db<2>:5434', delayMs, atMs: delayMs * 10, visible: delayMs >= 5 },
    ]),
    visibility: [
      { replica: 'db-1:5433', atMs: 100, staleAtFirstRead: true, visibleAfterMs: 1.5 },
      { replica: 'db-1:5433', atMs: 900, staleAtFirstRead: false, visibleAfterMs: 0.4 },
      { replica: 'db<2>:5434', atMs: 100, staleAtFirstRead: true, visibleAfterMs: 4 },
    ],
    byteLag: [
      { replica: 'db-1:5433', atMs: 0, bytes: 0 },
      { replica: 'db-1:5433', atMs: 250, bytes: 312 },
      { replica: 'db<2>:5434', atMs: 0, bytes: 80 },
    ],
  },
  { primary: 'db-0:5432', waitBudgetMs: 1000 },
);

describe('report SVG', () => {
  it('plots one series per replica plus the pooled one, with axis labels and a legend', () => {
    const svg = renderVisibilityPlot(report.curves);
    checkXml(svg);
    const series = [...svg.matchAll(/data-series="([^"]*)"/g)].map((m) => m[1]);
    expect(series).toEqual(['db-1:5433 (n=8)', 'db&lt;2&gt;:5434 (n=8)', `${ALL_REPLICAS} (n=16)`]);
    expect(svg).toContain('read delay after COMMIT, t (ms)');
    expect(svg).toContain('P(stale read)');
    for (const t of [0, 1, 2, 5, 10, 20, 50, 100]) expect(svg).toContain(`>${t}</text>`);
    // Legend entries carry the names as text.
    expect(svg).toContain(`>${ALL_REPLICAS} (n=16)</text>`);
    // db-1 is stale at t = 0 and 1 only: two points on the top line (y = 1), six on the bottom.
    const first = /data-series="db-1:5433 \(n=8\)">([\s\S]*?)<\/g>/.exec(svg)?.[1] ?? '';
    const cys = [...first.matchAll(/cy="([\d.]+)"/g)].map((m) => Number(m[1]));
    expect(cys).toHaveLength(8);
    expect(new Set(cys.slice(0, 2)).size).toBe(1);
    expect(new Set(cys.slice(2)).size).toBe(1);
    expect(cys[0]).toBeLessThan(cys[2] ?? 0);
  });

  it('writes one well-formed SVG document with the visibility and lag plots', () => {
    const svg = renderReportSvg(report);
    expect(svg.startsWith('<?xml')).toBe(true);
    checkXml(svg);
    expect(svg).toContain('PBS t-visibility');
    expect(svg).toContain('Time behind');
    expect(svg).toContain('Bytes behind');
    expect(svg).toContain('commit-to-visible (ms)');
    expect(svg).not.toMatch(/NaN|undefined|Infinity/);
  });

  it('writes a self-contained HTML page with the summary and the SVGs inline', () => {
    const html = renderReportHtml(report);
    checkXml(html);
    expect(html).toContain('<pre>staleness of 2 replica(s) of db-0:5432');
    expect(html.match(/<svg /g)).toHaveLength(3);
    expect(html).not.toMatch(/<script|<link|src="http/);
  });

  it('draws an empty report without NaN', () => {
    const empty = buildReport(
      {
        replicas: ['r1'],
        delaysMs: [0, 1],
        durationMs: 0,
        writes: 0,
        trials: [],
        visibility: [],
        byteLag: [],
      },
      { primary: 'p', waitBudgetMs: 1000 },
    );
    const svg = renderReportSvg(empty);
    checkXml(svg);
    expect(svg).not.toMatch(/NaN|undefined|Infinity/);
  });
});

describe('helpers', () => {
  it('escapes XML and picks nice axis bounds', () => {
    expect(escapeXml(`a<b & "c" 'd'>`)).toBe('a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;');
    expect(niceMax(0)).toBe(1);
    expect(niceMax(3.2)).toBe(5);
    expect(niceMax(120)).toBe(200);
    expect(niceMax(1000)).toBe(1000);
  });
});
