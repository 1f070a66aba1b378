/** Small statistics and formatting shared by the benchmarks. */

/** Median of the samples; NaN when there are none. */
export function median(samples: ArrayLike<number>): number {
  const sorted = Array.from(samples).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Nearest-rank percentile, `p` in (0, 1]; NaN when there are no samples. */
export function percentile(samples: ArrayLike<number>, p: number): number {
  const sorted = Array.from(samples).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)]!;
}

/** Milliseconds with three significant digits or so; `–` for NaN. */
export function ms(value: number): string {
  if (Number.isNaN(value)) return '–';
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

/** A markdown table. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** A progress printer for one bench: lines on stderr, so stdout stays the report. */
export function progressFor(bench: string): (line: string) => void {
  return (line) => process.stderr.write(`[${bench}] ${line}\n`);
}

/**
 * The value of a `--name` option as a number > 0 (a whole one unless `integer` is false), or a
 * `RangeError` naming the option.
 */
export function positiveOption(name: string, text: string | undefined, integer = true): number {
  const value = Number(text);
  if (!(value > 0) || (integer && !Number.isInteger(value))) {
    throw new RangeError(`--${name} must be a ${integer ? 'whole ' : ''}number > 0, got "${text}"`);
  }
  return value;
}
