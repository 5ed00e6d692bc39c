/**
 * Writes the README's configuration table from SETTINGS in src/config.ts (npm run docs:config). With --check, exits 1
 * when the table is stale.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { withSettingsTable } from '../src/config.js';

const target = new URL('../README.md', import.meta.url);
const readme = readFileSync(target, 'utf8');
const written = withSettingsTable(readme);
if (process.argv.includes('--check')) {
  if (written !== readme) {
    process.stderr.write('README.md configuration table is stale: run npm run docs:config\n');
    process.exit(1);
  }
  process.stdout.write('README.md configuration table is up to date\n');
} else {
  writeFileSync(target, written);
  process.stdout.write('wrote the configuration table of README.md\n');
}
