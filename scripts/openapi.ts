/**
 * Writes openapi/openapi.json from the routes (npm run openapi). With --check, exits 1 when the file is stale.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { openApiDocument, serialise } from '../src/openapi.js';

const target = new URL('../openapi/openapi.json', import.meta.url);
const text = serialise(await openApiDocument());
if (process.argv.includes('--check')) {
  let current = '';
  try {
    current = readFileSync(target, 'utf8');
  } catch {
    // missing counts as stale
  }
  if (current !== text) {
    process.stderr.write('openapi/openapi.json is stale: run npm run openapi\n');
    process.exit(1);
  }
  process.stdout.write('openapi/openapi.json is up to date\n');
} else {
  writeFileSync(target, text);
  process.stdout.write('wrote openapi/openapi.json\n');
}
