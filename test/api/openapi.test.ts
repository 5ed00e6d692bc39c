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
  const paths = ['/v1/completions', '/v1/chat/completions', '/v1/models', '/tokenize', '/detokenize', '/tokenizer_info', '/health', '/health/live', '/health/ready', '/metrics'];
  for (const path of paths) assert.ok(doc.paths[path], path);
  const sampling = ['model', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'stream', 'n', 'user', 'adaptation', 'presence_penalty', 'frequency_penalty',
    'repetition_penalty', 'logit_bias', 'min_tokens', 'stop_token_ids', 'response_format'];
  const fields = {
    CompletionRequest: [...sampling, 'prompt', 'logprobs', 'echo'],
    ChatCompletionRequest: [...sampling, 'messages', 'max_completion_tokens', 'logprobs', 'top_logprobs'],
    TokenizeRequest: ['prompt', 'messages', 'add_generation_prompt', 'add_special_tokens'],
  };
  for (const [schema, names] of Object.entries(fields)) {
    for (const field of names) assert.ok(doc.components.schemas[schema].properties[field], `${schema} field ${field}`);
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
