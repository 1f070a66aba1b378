import { parseLsn, type Lsn } from './lsn.js';

/**
 * One line of a timeline history file (`pg_wal/0000000N.history`): timeline `timeline` ended at
 * `switchLsn`, where its successor forked off. Every position before `switchLsn` holds the same
 * WAL on both timelines; from `switchLsn` on, they differ.
 */
export interface TimelineSwitch {
  readonly timeline: number;
  readonly switchLsn: Lsn;
}

/** The ancestors of a timeline, oldest first, as its history file lists them. */
export type TimelineHistory = readonly TimelineSwitch[];

/**
 * How a replica's replayed WAL relates to the primary's timeline:
 * - `same`: on the primary's timeline;
 * - `before_fork`: on an ancestor of it, and replayed no further than where the primary's timeline
 *   forked off, so everything it replayed is also the primary's history, and it can follow;
 * - `diverged`: on another timeline, past the fork (`forkLsn`), or on a timeline that is not an
 *   ancestor of the primary's, or (`forkLsn` undefined) the primary's history is not known to prove
 *   otherwise. Its positions mean nothing against the primary's, and it cannot follow.
 */
export type TimelineRelation =
  | { readonly kind: 'same' }
  | { readonly kind: 'before_fork'; readonly forkLsn: Lsn }
  | { readonly kind: 'diverged'; readonly forkLsn: Lsn | undefined };

/** What is known of a replica: the timeline it replays (or receives) and how far it replayed. */
export interface ReplicaTimeline {
  readonly timeline?: number | undefined;
  readonly replayLsn: Lsn | undefined;
}

/** What is known of the primary: its timeline, and that timeline's history when it could be read. */
export interface PrimaryTimeline {
  readonly timeline: number;
  readonly history: TimelineHistory | undefined;
}

/**
 * Parses a timeline history file: one `<timeline>\t<switch position>\t<reason>` line per ancestor;
 * blank lines and `#` comments are skipped, as PostgreSQL does.
 *
 * @throws Error naming the line that is not a history entry.
 */
export function parseTimelineHistory(text: string): TimelineHistory {
  const entries: TimelineSwitch[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const [timelineText, lsnText] = line.split(/\s+/);
    const timeline = Number(timelineText);
    const switchLsn = parseLsn(lsnText ?? '');
    if (!Number.isInteger(timeline) || timeline < 1 || switchLsn === undefined)
      throw new Error(`not a timeline history line: "${line}"`);
    entries.push({ timeline, switchLsn });
  }
  return entries;
}

/**
 * Where `ancestor` ends in the history of a later timeline: the position its first descendant
 * on the way to that timeline forked off. `undefined` when it is not an ancestor.
 */
export function forkPoint(history: TimelineHistory, ancestor: number): Lsn | undefined {
  return history.find((entry) => entry.timeline === ancestor)?.switchLsn;
}

/** See {@link TimelineRelation}. An unknown replica timeline is never trusted. */
export function relateTimelines(
  replica: ReplicaTimeline,
  primary: PrimaryTimeline,
): TimelineRelation {
  if (replica.timeline === primary.timeline) return { kind: 'same' };
  if (replica.timeline === undefined || replica.timeline > primary.timeline)
    return { kind: 'diverged', forkLsn: undefined };
  const forkLsn =
    primary.history === undefined ? undefined : forkPoint(primary.history, replica.timeline);
  if (forkLsn === undefined) return { kind: 'diverged', forkLsn: undefined };
  // Up to the fork both timelines hold the same WAL; past it, the replica replayed records the
  // primary never wrote, and PostgreSQL will never let it switch to the primary's timeline.
  return replica.replayLsn !== undefined && replica.replayLsn <= forkLsn
    ? { kind: 'before_fork', forkLsn }
    : { kind: 'diverged', forkLsn };
}

/**
 * Whether a replica has replayed the primary's WAL up to `required` (a position on the primary's
 * timeline). Comparing positions is only meaningful on one timeline: a replica on an old timeline
 * that replayed past the fork shows a high position full of WAL the primary never wrote.
 */
export function hasReplayed(
  replica: ReplicaTimeline,
  primary: PrimaryTimeline,
  required: Lsn,
): boolean {
  if (replica.replayLsn === undefined || replica.replayLsn < required) return false;
  const relation = relateTimelines(replica, primary);
  switch (relation.kind) {
    case 'same':
      return true;
    case 'before_fork':
      // replayLsn <= forkLsn: everything it replayed is common to both timelines.
      return true;
    case 'diverged':
      return false;
    default: {
      const unreachable: never = relation;
      return unreachable;
    }
  }
}

/** The history file name of a timeline, e.g. `00000002.history`. */
export function historyFileName(timeline: number): string {
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}
