/**
 * The replikit dashboards, as code. `npm run dashboards` writes each one to `dashboards/<file>`,
 * the folder Grafana's provisioning reads (`dashboards/provisioning/dashboards/dashboards.yaml`);
 * `test/dashboards.unit.test.ts` fails when the committed JSON differs from {@link renderDashboards}.
 *
 * @packageDocumentation
 */
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';

import { projectionsTwoPhaseDashboard } from './projections-twopc.js';
import { replicationRoutingDashboard } from './replication-routing.js';
import { sagasDashboard } from './sagas.js';

/** A dashboard and the file name it is written to, in `dashboards/`. */
export interface DashboardFile {
  readonly file: string;
  readonly dashboard: Dashboard;
}

/**
 * Builds every dashboard. Panels get ids in the order they appear (the SDK leaves them out, and
 * gives every row 0), so that links to a panel survive regeneration.
 */
export function buildDashboards(): DashboardFile[] {
  const files = [
    { file: 'replication-routing.json', builder: replicationRoutingDashboard() },
    { file: 'sagas.json', builder: sagasDashboard() },
    { file: 'projections-2pc.json', builder: projectionsTwoPhaseDashboard() },
  ];
  return files.map(({ file, builder }) => {
    const dashboard = builder.build();
    dashboard.panels = (dashboard.panels ?? []).map((panel, i) => ({ ...panel, id: i + 1 }));
    return { file, dashboard };
  });
}

/** The JSON text of each dashboard file, exactly as `npm run dashboards` writes it. */
export function renderDashboards(): Map<string, string> {
  return new Map(
    buildDashboards().map(({ file, dashboard }) => [
      file,
      `${JSON.stringify(dashboard, null, 2)}\n`,
    ]),
  );
}
