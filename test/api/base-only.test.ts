/**
 * A base-only model package (what npm run model:import writes: the decoder, its tokenizer and embeddings, no
 * hypernetwork, no static LoRA): here the default package with its adaptation parts taken out, so its base model is
 * the default package's exactly. It serves adaptation none (also when the request names no mode) and named adapters
 * from files; every other mode, the library's adapters and adapters from examples are refused with a 400 that names
 * npm run model:adapt. MAX_MODEL_LEN then bounds prompt + max_tokens below the model's context.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, MODEL, MODEL_DIR, startApp } from '../helpers/app.js';
import { copyBaseOnlyPackage, type PackageCopy } from '../helpers/package-copy.js';
import { LICENSE, SEA } from '../helpers/prompts.js';

const TOKEN = 'base-only-token';
let copy: PackageCopy;
let base: FastifyInstance;
let full: FastifyInstance;

before(async () => {
  copy = copyBaseOnlyPackage();
  const serial = { maxWaitMs: 0, idleDispatch: true, clusterInFlight: false, maxBatchSize: 4 };
  base = await startApp({ ...serial, modelDir: copy.dir, adminToken: TOKEN, maxModelLen: 64, adapterDirs: [MODEL_DIR] });
  full = await startApp(serial);
});
after(async () => {
  await Promise.all([base?.close(), full?.close()]);
  copy?.remove();
});

const MODEL_ADAPT = /npm run model:adapt/;

describe('a base-only package', () => {
  test('serves adaptation none, by default too, with exactly the default package\'s base model (same decoder)', async () => {
    for (const prompt of [SEA[0], LICENSE[1]]) {
      const fields = { prompt, max_tokens: 8, temperature: 0, logprobs: 2 };
      const got = await complete(base, { ...fields, adaptation: 'none' });
      const implicit = await complete(base, fields);
      const want = await complete(full, { ...fields, adaptation: 'none' });
      for (const res of [got, implicit, want]) assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(got.body.chameleon.mode, 'none');
      assert.equal(implicit.body.chameleon.mode, 'none', 'a request without adaptation gets the only mode served');
      assert.equal(got.body.choices[0].text, want.body.choices[0].text);
      assert.equal(implicit.body.choices[0].text, want.body.choices[0].text);
      assert.deepEqual(got.body.choices[0].logprobs.tokens, want.body.choices[0].logprobs.tokens);
      const diff = Math.max(...got.body.choices[0].logprobs.token_logprobs.map((v: number, i: number) => Math.abs(v - want.body.choices[0].logprobs.token_logprobs[i])));
      assert.ok(diff < 1e-5, `logprobs differ by ${diff}`);
    }
    // streamed, the same text
    const streamed = await base.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: SEA[1], max_tokens: 6, temperature: 0, stream: true } });
    const text = streamed.body.split('\n\n').filter((b) => b.startsWith('data: {')).map((b) => JSON.parse(b.slice(6)).choices[0]?.text ?? '').join('');
    const whole = await complete(full, { prompt: SEA[1], max_tokens: 6, temperature: 0, adaptation: 'none' });
    assert.equal(text, whole.body.choices[0].text);
  });

  test('every other adaptation mode is a 400 in OpenAI\'s error shape naming npm run model:adapt', async () => {
    for (const adaptation of ['batch', 'request', 'static', 'library', 'library_weighted', 'masks']) {
      const res = await complete(base, { prompt: SEA[0], max_tokens: 2, adaptation });
      assert.equal(res.status, 400, adaptation);
      assert.deepEqual(Object.keys(res.body.error).sort(), ['code', 'message', 'param', 'type']);
      assert.equal(res.body.error.type, 'invalid_request_error');
      assert.equal(res.body.error.code, 'unsupported_parameter');
      assert.equal(res.body.error.param, 'adaptation');
      assert.match(res.body.error.message, MODEL_ADAPT);
      assert.match(res.body.error.message, new RegExp(`base-only .*adaptation '${adaptation}' is not available`));
    }
    const library = await complete(base, { model: 'library:email', prompt: SEA[0], max_tokens: 2 });
    assert.equal(library.status, 400);
    assert.equal(library.body.error.param, 'model');
    assert.match(library.body.error.message, MODEL_ADAPT);
    const unknown = await complete(base, { model: 'gpt-4', prompt: SEA[0], max_tokens: 2 });
    assert.equal(unknown.status, 404, 'a model id that is no adapter name stays model_not_found');
  });

  test('GET /v1/models says which modes each package serves, and MAX_MODEL_LEN', async () => {
    const [b] = (await base.inject({ url: '/v1/models' })).json().data;
    assert.deepEqual(b.adaptation_modes, ['none']);
    assert.equal(b.max_model_len, 64);
    const listed = (await full.inject({ url: '/v1/models' })).json().data;
    assert.deepEqual(listed[0].adaptation_modes, ['batch', 'request', 'static', 'none', 'library', 'library_weighted', 'masks']);
    assert.equal(listed[0].max_model_len, 256);
    const modeIds = listed.filter((m: { id: string }) => m.id.startsWith(`${listed[0].id}:`)).map((m: { id: string }) => m.id.slice(listed[0].id.length + 1));
    assert.deepEqual(modeIds, listed[0].adaptation_modes, 'one model id per served mode');
    assert.equal(listed.length, 1 + modeIds.length + (listed.filter((m: { id: string }) => m.id.startsWith('library:')).length), 'the default package lists its library');
  });

  test('adapters from examples are refused naming npm run model:adapt; an adapter from a file serves its update', async () => {
    const auth = { authorization: `Bearer ${TOKEN}` };
    const examples = await base.inject({ method: 'POST', url: '/v1/adapters', headers: auth, payload: { name: 'from-examples', examples: [SEA[0], SEA[1]] } });
    assert.equal(examples.statusCode, 400);
    assert.equal(examples.json().error.param, 'examples');
    assert.match(examples.json().error.message, MODEL_ADAPT);
    // the default package has the same base model (same embeddings): its static LoRA loads as a named adapter
    const loaded = await base.inject({ method: 'POST', url: '/v1/adapters', headers: auth, payload: { name: 'static-of-default', path: MODEL_DIR } });
    assert.equal(loaded.statusCode, 201, loaded.body);
    const prompt = LICENSE[0];
    const viaName = await complete(base, { model: 'static-of-default', prompt, max_tokens: 0, echo: true, logprobs: 0 });
    const viaMode = await complete(full, { prompt, max_tokens: 0, echo: true, logprobs: 0, adaptation: 'static' });
    assert.equal(viaName.status, 200, JSON.stringify(viaName.body));
    const a = viaName.body.choices[0].logprobs.token_logprobs.slice(1);
    const b = viaMode.body.choices[0].logprobs.token_logprobs.slice(1);
    assert.ok(Math.max(...a.map((v: number, i: number) => Math.abs(v - b[i]))) < 1e-4);
  });

  test('MAX_MODEL_LEN bounds prompt + max_tokens (64 here, of a 256-position context)', async () => {
    // the prompt's tokens as the model sees them: its text's and the BOS the package adds
    const ids = (await complete(base, { prompt: SEA[0], max_tokens: 0 })).body.usage.prompt_tokens + 1;
    const fits = await complete(base, { prompt: SEA[0], max_tokens: 64 - ids, temperature: 0, ignore_eos: true });
    assert.equal(fits.status, 200, JSON.stringify(fits.body));
    assert.equal(fits.body.usage.completion_tokens, 64 - ids);
    const over = await complete(base, { prompt: SEA[0], max_tokens: 65 - ids });
    assert.equal(over.status, 400);
    assert.equal(over.body.error.code, 'context_length_exceeded');
    assert.match(over.body.error.message, /maximum context length is 64 tokens/);
    const long = await complete(base, { prompt: 'word '.repeat(200), max_tokens: 1 });
    assert.equal(long.body.error.code, 'context_length_exceeded');
  });
});
