/**
 * Writes openapi/openapi.json from the routes (npm run openapi). With --check, exits 1 when the file is stale.
 */
import { openApiDocument, serialise } from '../src/openapi.js';
import { writeOrCheck } from './generated-file.js';

writeOrCheck(new URL('../openapi/openapi.json', import.meta.url), serialise(await openApiDocument()), 'openapi/openapi.json', 'npm run openapi');
