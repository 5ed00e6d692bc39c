import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { buildApp } from '../../src/app.js';
import { openApiDocument, serialise } from '../../src/openapi.js';
import { testConfig } from '../helpers/app.js';

test('openapi/openapi.json is in sync with the routes (npm run openapi regenerates it)', async () => {
  const committed = readFileSync(new URL('../../openapi/openapi.json', import.meta.url), 'utf8');
  const generated = serialise(await openApiDocument());
  assert.equal(committed, generated, 'openapi/openapi.json is stale: run npm run openapi');
  const doc = JSON.parse(generated);
  for (const path of ['/v1/completions', '/v1/models', '/health', '/health/live', '/health/ready', '/metrics']) assert.ok(doc.paths[path], path);
  const request = doc.components.schemas.CompletionRequest.properties;
  for (const field of ['model', 'prompt', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'stream', 'logprobs', 'echo', 'n', 'user', 'adaptation']) {
    assert.ok(request[field], `request field ${field}`);
  }
});

test('/docs renders the Swagger UI and serves the spec', async () => {
  const app = await buildApp(testConfig(), { logger: false });
  try {
    const page = await app.inject({ url: '/docs/' });
    assert.equal(page.statusCode, 200);
    assert.match(page.headers['content-type'] as string, /text\/html/);
    assert.match(page.body, /swagger-ui/i);
    const initializer = await app.inject({ url: '/docs/static/swagger-initializer.js' });
    assert.equal(initializer.statusCode, 200);
    const spec = await app.inject({ url: '/docs/json' });
    assert.equal(spec.statusCode, 200);
    assert.ok(spec.json().paths['/v1/completions']);
  } finally {
    await app.chameleon.started.catch(() => {});
    await app.close();
  }
});
