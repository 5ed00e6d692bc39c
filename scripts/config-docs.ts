/**
 * Writes the README's configuration table from SETTINGS in src/config.ts (npm run docs:config). With --check, exits 1
 * when the table is stale.
 */
import { readFileSync } from 'node:fs';
import { withSettingsTable } from '../src/config.js';
import { writeOrCheck } from './generated-file.js';

const target = new URL('../README.md', import.meta.url);
writeOrCheck(target, withSettingsTable(readFileSync(target, 'utf8')), 'the configuration table of README.md', 'npm run docs:config');
