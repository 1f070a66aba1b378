/**
 * The statistics of a staleness measurement, as pure functions of the raw samples the sampler
 * collects, so they can be checked against synthetic samples without a server.
 */

/** The read delays of the PBS t-visibility curve, in ms after the write's COMMIT returned. */
export const DEFAULT_DELAYS_MS: readonly number[] = [0, 1, 2, 5, 10, 20, 50, 100];

/** Name of the series that pools every replica. */
export const ALL_REPLICAS = 'all replicas';

/** One read of a freshly committed row on one replica, `delayMs` after the COMMIT returned. */
export interface ReadTrial {
  readonly replica: string;
  /** The nominal delay t the read was scheduled at. */
  readonly delayMs: number;
  /** When the write committed, in ms since the measurement started. */
  readonly atMs: number;
  readonly visible: boolean;
}

/**
 * How long one committed row took to become visible on one replica (commit-to-visible), timed by
 * reading right after the COMMIT and then polling until the row shows.
 */
export interface VisibilityTime {
  readonly replica: string;
  /** When the write committed, in ms since the measurement started. */
  readonly atMs: number;
  /** Whether the read issued right after the COMMIT missed the row. */
  readonly staleAtFirstRead: boolean;
  /** Ms from COMMIT to the read that saw the row; `undefined` when it never showed within the cap. */
  readonly visibleAfterMs: number | undefined;
}

/**
 * Bytes of WAL a replica had still to replay, sampled over time:
 * `pg_current_wal_lsn()` on the primary minus `pg_last_wal_replay_lsn()` on the replica.
 */
export interface ByteLagSample {
  readonly replica: string;
  /** Ms since the measurement started. */
  readonly atMs: number;
  readonly bytes: number;
}

/** Everything a measurement collected. */
export interface MeasureSamples {
  readonly replicas: readonly string[];
  readonly delaysMs: readonly number[];
  readonly durationMs: number;
  readonly writes: number;
  readonly trials: readonly ReadTrial[];
  readonly visibility: readonly VisibilityTime[];
  readonly byteLag: readonly ByteLagSample[];
}

/** One point of a t-visibility curve. */
export interface CurvePoint {
  readonly delayMs: number;
  readonly reads: number;
  readonly stale: number;
  /** `stale / reads`; `undefined` when there were no reads at this delay. */
  readonly staleShare: number | undefined;
}

/** The probability that a read t ms after a commit is stale, for one replica or all of them. */
export interface VisibilityCurve {
  readonly replica: string;
  readonly points: readonly CurvePoint[];
}

/**
 * The PBS t-visibility curves: per replica (in the order given) and, last, pooled over
 * {@link ALL_REPLICAS}.
 */
export function visibilityCurves(
  trials: readonly ReadTrial[],
  replicas: readonly string[],
  delaysMs: readonly number[] = DEFAULT_DELAYS_MS,
): VisibilityCurve[] {
  const curve = (name: string, keep: (trial: ReadTrial) => boolean): VisibilityCurve => ({
    replica: name,
    points: delaysMs.map((delayMs) => {
      let reads = 0;
      let stale = 0;
      for (const trial of trials) {
        if (trial.delayMs !== delayMs || !keep(trial)) continue;
        reads += 1;
        if (!trial.visible) stale += 1;
      }
      return { delayMs, reads, stale, staleShare: reads === 0 ? undefined : stale / reads };
    }),
  });
  return [
    ...replicas.map((replica) => curve(replica, (trial) => trial.replica === replica)),
    curve(ALL_REPLICAS, () => true),
  ];
}

/**
 * The `p`-th percentile (0–100) by nearest rank; `undefined` for no values.
 *
 * ```ts
 * percentile([1, 2, 3, 4], 50); // 2
 * ```
 */
export function percentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((Math.min(Math.max(p, 0), 100) / 100) * sorted.length);
  return sorted[Math.max(rank, 1) - 1];
}

/** Commit-to-visible time of one replica (or all): what "time behind" means here. */
export interface TimeBehind {
  readonly replica: string;
  readonly writes: number;
  readonly p50Ms: number | undefined;
  readonly p99Ms: number | undefined;
  readonly maxMs: number | undefined;
  /** Writes that never became visible within the polling cap. */
  readonly neverVisible: number;
}

/** Commit-to-visible percentiles per replica and, last, over {@link ALL_REPLICAS}. */
export function timeBehind(
  visibility: readonly VisibilityTime[],
  replicas: readonly string[],
): TimeBehind[] {
  const summarize = (name: string, rows: readonly VisibilityTime[]): TimeBehind => {
    const times = rows.flatMap((row) =>
      row.visibleAfterMs === undefined ? [] : [row.visibleAfterMs],
    );
    return {
      replica: name,
      writes: rows.length,
      p50Ms: percentile(times, 50),
      p99Ms: percentile(times, 99),
      maxMs: times.length === 0 ? undefined : Math.max(...times),
      neverVisible: rows.length - times.length,
    };
  };
  return [
    ...replicas.map((replica) =>
      summarize(
        replica,
        visibility.filter((row) => row.replica === replica),
      ),
    ),
    summarize(ALL_REPLICAS, visibility),
  ];
}

/** Bytes behind of one replica over the run. */
export interface ByteLagSummary {
  readonly replica: string;
  readonly samples: number;
  readonly p50Bytes: number | undefined;
  readonly maxBytes: number | undefined;
}

/** Byte lag percentiles per replica. */
export function byteLagSummary(
  samples: readonly ByteLagSample[],
  replicas: readonly string[],
): ByteLagSummary[] {
  return replicas.map((replica) => {
    const bytes = samples.filter((s) => s.replica === replica).map((s) => s.bytes);
    return {
      replica,
      samples: bytes.length,
      p50Bytes: percentile(bytes, 50),
      maxBytes: bytes.length === 0 ? undefined : Math.max(...bytes),
    };
  });
}

/**
 * What each consistency level would have cost for a read issued on a replica right after the
 * write committed (the worst case: later reads wait less).
 */
export interface LevelCosts {
  /** Replica reads the figures are based on (one per write and replica). */
  readonly reads: number;
  readonly readYourWrites: {
    /** How long a read may wait for the replica before it goes to the primary. */
    readonly waitBudgetMs: number;
    /** Reads whose replica had not yet replayed the write, so they would have waited. */
    readonly waited: number;
    readonly waitedShare: number | undefined;
    /** Wait percentiles over the reads that waited; a fallback counts as waiting the whole budget. */
    readonly waitP50Ms: number | undefined;
    readonly waitP99Ms: number | undefined;
    /** Reads whose replica did not catch up within the budget, so they would go to the primary. */
    readonly fallbacks: number;
    readonly fallbackShare: number | undefined;
  };
  readonly eventual: {
    /** Reads that would have returned data older than the write. */
    readonly stale: number;
    readonly staleShare: number | undefined;
  };
  readonly strong: {
    /** Every strong read goes to the primary: never stale, no replica offload. */
    readonly primaryReads: number;
    readonly primaryShare: 1;
  };
}

/**
 * Prices the consistency levels from commit-to-visible times: read-your-writes waits until the
 * replica has the write (about the time the row took to show) up to `waitBudgetMs`, then falls back
 * to the primary; eventual reads whatever the replica has; strong always reads the primary.
 */
export function levelCosts(
  visibility: readonly VisibilityTime[],
  waitBudgetMs: number,
): LevelCosts {
  const reads = visibility.length;
  const share = (n: number): number | undefined => (reads === 0 ? undefined : n / reads);
  const waits: number[] = [];
  let fallbacks = 0;
  let stale = 0;
  for (const row of visibility) {
    if (!row.staleAtFirstRead) continue;
    stale += 1;
    const after = row.visibleAfterMs;
    if (after === undefined || after > waitBudgetMs) {
      fallbacks += 1;
      waits.push(waitBudgetMs);
    } else {
      waits.push(after);
    }
  }
  return {
    reads,
    readYourWrites: {
      waitBudgetMs,
      waited: waits.length,
      waitedShare: share(waits.length),
      waitP50Ms: percentile(waits, 50),
      waitP99Ms: percentile(waits, 99),
      fallbacks,
      fallbackShare: share(fallbacks),
    },
    eventual: { stale, staleShare: share(stale) },
    strong: { primaryReads: reads, primaryShare: 1 },
  };
}

/** The computed report of a measurement, as `--json` prints it. */
export interface MeasureReport {
  readonly primary: string;
  readonly replicas: readonly string[];
  readonly durationMs: number;
  readonly writes: number;
  readonly curves: readonly VisibilityCurve[];
  readonly timeBehind: readonly TimeBehind[];
  readonly byteLag: readonly ByteLagSummary[];
  readonly costs: LevelCosts;
  /** Commit-to-visible over time, per replica, for the lag plot. */
  readonly visibilityOverTime: readonly VisibilityTime[];
  /** Bytes behind over time, per replica, for the lag plot. */
  readonly byteLagOverTime: readonly ByteLagSample[];
}

/** Computes the whole report from the samples. */
export function buildReport(
  samples: MeasureSamples,
  options: { primary: string; waitBudgetMs: number },
): MeasureReport {
  return {
    primary: options.primary,
    replicas: samples.replicas,
    durationMs: samples.durationMs,
    writes: samples.writes,
    curves: visibilityCurves(samples.trials, samples.replicas, samples.delaysMs),
    timeBehind: timeBehind(samples.visibility, samples.replicas),
    byteLag: byteLagSummary(samples.byteLag, samples.replicas),
    costs: levelCosts(samples.visibility, options.waitBudgetMs),
    visibilityOverTime: samples.visibility,
    byteLagOverTime: samples.byteLag,
  };
}

const pct = (share: number | undefined): string =>
  share === undefined ? '-' : `${(share * 100).toFixed(1)}%`;
const ms = (value: number | undefined): string =>
  value === undefined ? '-' : value < 10 ? `${value.toFixed(2)} ms` : `${value.toFixed(0)} ms`;

/** The summary as plain text lines, as the command prints it. */
export function formatSummary(report: MeasureReport): string {
  const lines: string[] = [];
  lines.push(
    `staleness of ${report.replicas.length} replica(s) of ${report.primary}: ` +
      `${report.writes} writes in ${(report.durationMs / 1000).toFixed(1)} s`,
    '',
    'P(stale) of a read t ms after COMMIT (stale/reads):',
  );
  const delays = report.curves[0]?.points.map((point) => point.delayMs) ?? [];
  const nameWidth = Math.max(12, ...report.curves.map((curve) => curve.replica.length));
  const cell = 16;
  lines.push(
    `  ${'replica'.padEnd(nameWidth)}${delays.map((t) => `t=${t}ms`.padStart(cell)).join('')}`,
  );
  for (const curve of report.curves) {
    lines.push(
      `  ${curve.replica.padEnd(nameWidth)}${curve.points
        .map((point) => `${pct(point.staleShare)} ${point.stale}/${point.reads}`.padStart(cell))
        .join('')}`,
    );
  }
  lines.push('', 'lag (commit-to-visible; bytes behind the primary):');
  for (const row of report.timeBehind) {
    const bytes = report.byteLag.find((b) => b.replica === row.replica);
    lines.push(
      `  ${row.replica.padEnd(nameWidth)}  p50 ${ms(row.p50Ms)}  p99 ${ms(row.p99Ms)}  max ${ms(row.maxMs)}` +
        (row.neverVisible > 0 ? `  never visible ${row.neverVisible}` : '') +
        (bytes === undefined
          ? ''
          : `  bytes p50 ${bytes.p50Bytes ?? '-'} max ${bytes.maxBytes ?? '-'}`),
    );
  }
  const { readYourWrites: ryw, eventual, strong } = report.costs;
  lines.push(
    '',
    `cost per consistency level, for a replica read right after the write (${report.costs.reads} reads):`,
    `  read-your-writes (wait up to ${ms(ryw.waitBudgetMs)}): ${pct(ryw.waitedShare)} wait ` +
      `(p50 ${ms(ryw.waitP50Ms)}, p99 ${ms(ryw.waitP99Ms)}), ${pct(ryw.fallbackShare)} fall back to the primary`,
    `  eventual: ${pct(eventual.staleShare)} stale (${eventual.stale} reads)`,
    `  strong: 100% on the primary (${strong.primaryReads} reads), none stale`,
  );
  return lines.join('\n');
}
