/**
 * Strict fields: a completion field the server does not implement is refused with unsupported_parameter naming it,
 * never silently ignored (a client that asked for JSON output must not get free text with a 200).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, startApp } from '../helpers/app.js';

let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0 });
});
after(async () => {
  await app.close();
});

describe('strict fields', () => {
  test('an unknown field is a 400 unsupported_parameter that names it', async () => {
    for (const field of ['tools', 'max_completion_tokens_typo', 'guided_json']) {
      const res = await complete(app, { prompt: 'The sea', max_tokens: 2, [field]: true });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.error.code, 'unsupported_parameter');
      assert.equal(res.body.error.param, field);
      assert.match(res.body.error.message, new RegExp(`^${field} is not a field this server implements`));
    }
  });

  test('response_format text is served; json_object and json_schema are refused, not answered with free text', async () => {
    const text = await complete(app, { prompt: 'The sea', max_tokens: 2, response_format: { type: 'text' } });
    assert.equal(text.status, 200, JSON.stringify(text.body));
    for (const type of ['json_object', 'json_schema']) {
      const res = await complete(app, { prompt: 'The sea', max_tokens: 2, response_format: { type, json_schema: { name: 'x', schema: {} } } });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.error.code, 'unsupported_parameter');
      assert.equal(res.body.error.param, 'response_format');
    }
  });

  test('min_tokens and stop_token_ids (vLLM) are taken, and checked against max_tokens and the vocabulary', async () => {
    const vocab = app.chameleon.service.tokenizer!.vocabSize;
    const served = await complete(app, { prompt: 'The sea', max_tokens: 4, min_tokens: 4, stop_token_ids: [1, 2], temperature: 0 });
    assert.equal(served.status, 200, JSON.stringify(served.body));
    const early = await complete(app, { prompt: 'The sea', max_tokens: 2, min_tokens: 3 });
    assert.equal(early.status, 400);
    assert.equal(early.body.error.param, 'min_tokens');
    const outside = await complete(app, { prompt: 'The sea', max_tokens: 2, stop_token_ids: [vocab] });
    assert.equal(outside.status, 400);
    assert.equal(outside.body.error.param, 'stop_token_ids');
  });
});
