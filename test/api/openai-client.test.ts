/**
 * The official openai npm client, given only a baseURL, works against the server (HTTP, real listener).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { MODEL, startApp } from '../helpers/app.js';

let app: FastifyInstance;
let client: OpenAI;

before(async () => {
  app = await startApp({ maxWaitMs: 5 });
  const address = await app.listen({ host: '127.0.0.1', port: 0 });
  client = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', maxRetries: 0 });
});
after(async () => {
  await app.close();
});

test('openai client: models.list', async () => {
  const models = await client.models.list();
  assert.equal(models.data[0].id, MODEL);
  assert.ok(models.data.length > 1, 'the named adapters are listed as models too');
});

test('openai client: a named adapter is chosen by model, with no extension', async () => {
  const models = await client.models.list();
  const adapter = models.data.find((m) => m.id !== MODEL && !m.id.startsWith(`${MODEL}:`))!;
  const completion = await client.completions.create({ model: adapter.id, prompt: 'The ship sailed', max_tokens: 4, temperature: 0 });
  assert.equal(completion.model, adapter.id);
  assert.equal((completion as unknown as { chameleon: { adapter: string } }).chameleon.adapter, adapter.id);
});

test('openai client: completions.create without streaming', async () => {
  const completion = await client.completions.create({ model: MODEL, prompt: 'The ship sailed', max_tokens: 8, temperature: 0 });
  assert.equal(completion.object, 'text_completion');
  assert.equal(completion.choices.length, 1);
  assert.equal(typeof completion.choices[0].text, 'string');
  assert.ok(['stop', 'length'].includes(completion.choices[0].finish_reason));
  assert.ok(completion.usage!.prompt_tokens > 0);
});

test('openai client: completions.create with streaming gives the same greedy text', async () => {
  const plain = await client.completions.create({ model: MODEL, prompt: 'The ship sailed', max_tokens: 8, temperature: 0 });
  const stream = await client.completions.create({ model: MODEL, prompt: 'The ship sailed', max_tokens: 8, temperature: 0, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, plain.choices[0].text);
  assert.equal(finish, plain.choices[0].finish_reason);
});

test('openai client: extension fields pass through and errors surface as APIError', async () => {
  const adapted = await client.completions.create({ model: MODEL, prompt: 'The whale', max_tokens: 2, adaptation: 'static' } as never);
  assert.equal((adapted as unknown as { chameleon: { mode: string } }).chameleon.mode, 'static');
  await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (error: unknown) => {
    assert.ok(error instanceof OpenAI.APIError);
    assert.equal(error.status, 404);
    assert.equal((error.error as { code: string }).code, 'model_not_found');
    return true;
  });
});
