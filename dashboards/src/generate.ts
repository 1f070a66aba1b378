/**
 * `npm run dashboards`: writes the dashboards' JSON into `dashboards/`, where the compose stack's
 * Grafana provisions them from, and removes nothing else. Commit the result.
 *
 * @packageDocumentation
 */
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { renderDashboards } from './index.js';

const folder = join(dirname(fileURLToPath(import.meta.url)), '..');

for (const [file, json] of renderDashboards()) {
  const path = join(folder, file);
  const before = await readFile(path, 'utf8').catch(() => undefined);
  const shown = relative(process.cwd(), path);
  if (before === json) {
    process.stdout.write(`unchanged ${shown}\n`);
  } else {
    await writeFile(path, json);
    process.stdout.write(`${before === undefined ? 'created' : 'updated'} ${shown}\n`);
  }
}
