/**
 * End to end on the real default model package: HTTP in, batched + adapted generation, HTTP out.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import request from 'supertest';
import { complete, MODEL, sseData, startApp } from '../helpers/app.js';
import { distinctPrompts, LICENSE, SEA } from '../helpers/prompts.js';

let app: FastifyInstance;

before(async () => {
  // A wide window so that requests sent together reliably share one; full batches leave at once. Windows are clustered alone:
  // these tests check what one window does (test/batching/window-policy.test.ts covers the pool),
  // and windows always wait for companions.
  app = await startApp({ maxWaitMs: 400, maxBatchSize: 32, targetClusterSize: 8, maxClusters: 4, clusterInFlight: false, idleDispatch: false });
});
after(async () => {
  await app.close();
});

function maxAbsDiff(a: number[], b: number[]): number {
  assert.equal(a.length, b.length);
  return Math.max(...a.map((x, i) => Math.abs(x - b[i])));
}

async function promptLogprobs(prompt: string, adaptation: string): Promise<number[]> {
  const res = await complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 0, adaptation });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.choices[0].logprobs.token_logprobs;
}

describe('POST /v1/completions', () => {
  test('24 concurrent distinct prompts with echo each get back exactly their own prompt', async () => {
    const prompts = distinctPrompts(24);
    const responses = await Promise.all(prompts.map((prompt) =>
      request(app.server).post('/v1/completions').send({ model: MODEL, prompt, echo: true, max_tokens: 0, logprobs: 0 })));
    responses.forEach((res, i) => {
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const choice = res.body.choices[0];
      assert.equal(choice.text, prompts[i]);
      assert.equal(choice.logprobs.tokens.join(''), prompts[i], 'the echoed tokens spell the prompt');
      assert.equal(choice.logprobs.tokens.length, res.body.usage.prompt_tokens);
      assert.equal(typeof choice.logprobs.token_logprobs[0], 'number', 'the first token is scored (BOS precedes it)');
      assert.equal(choice.finish_reason, 'length');
      assert.equal(res.body.usage.completion_tokens, 0);
    });
  });

  test('requests arriving in one window share a batch id; the response carries the OpenAI fields and chameleon', async () => {
    const prompts = distinctPrompts(6);
    const responses = await Promise.all(prompts.map((prompt) => complete(app, { prompt, max_tokens: 2, temperature: 0 })));
    const ids = new Set(responses.map((r) => r.body.chameleon.batch_id));
    assert.equal(ids.size, 1, `one batch, got ${[...ids].join(', ')}`);
    for (const res of responses) {
      assert.equal(res.status, 200);
      const body = res.body;
      assert.match(body.id, /^cmpl-/);
      assert.equal(body.object, 'text_completion');
      assert.equal(body.model, MODEL);
      assert.ok(Number.isInteger(body.created));
      assert.deepEqual(Object.keys(body.choices[0]).sort(), ['finish_reason', 'index', 'logprobs', 'text']);
      assert.equal(body.choices[0].logprobs, null);
      assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
      assert.equal(body.chameleon.batch_size, 6);
      assert.equal(body.chameleon.cluster_sizes.length, 1);
      assert.ok(body.chameleon.cluster_size >= 1 && body.chameleon.cluster_size <= 6);
      assert.equal(body.chameleon.mode, 'batch');
      assert.ok(body.chameleon.cluster_index < body.chameleon.num_clusters);
    }
  });

  test('prompts from clearly different domains in one window fall in different clusters', async () => {
    const prompts = [...LICENSE, ...SEA];
    const responses = await Promise.all(prompts.map((prompt) => complete(app, { prompt, max_tokens: 1, temperature: 0 })));
    for (const res of responses) assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(new Set(responses.map((r) => r.body.chameleon.batch_id)).size, 1, 'one window');
    const clusters = responses.map((r) => r.body.chameleon.cluster_index);
    assert.equal(responses[0].body.chameleon.num_clusters, 2, 'k = ceil(16 / 8)');
    const license = new Set(clusters.slice(0, LICENSE.length));
    const sea = new Set(clusters.slice(LICENSE.length));
    assert.equal(license.size, 1, `licence prompts in one cluster: ${clusters.join('')}`);
    assert.equal(sea.size, 1, `sea prompts in one cluster: ${clusters.join('')}`);
    assert.notDeepEqual([...license], [...sea]);
  });

  test('the adaptation modes change the logprobs where they should', async () => {
    const prompt = SEA[0];
    const none = await promptLogprobs(prompt, 'none');
    const staticLora = await promptLogprobs(prompt, 'static');
    const perRequest = await promptLogprobs(prompt, 'request');
    const batchAlone = await promptLogprobs(prompt, 'batch');
    assert.ok(maxAbsDiff(none, staticLora) > 1e-3, 'static LoRA differs from the base model');
    assert.ok(maxAbsDiff(none, perRequest) > 1e-3, 'the hypernetwork adapter differs from the base model');
    assert.ok(maxAbsDiff(staticLora, perRequest) > 1e-3, 'the hypernetwork adapter differs from the static one');
    assert.ok(maxAbsDiff(batchAlone, perRequest) < 1e-4, 'a batch of one is its own cluster: same as per-request');

    // In a mixed batch every row still gets its own slot: none stays the base model, static stays static.
    const [mixedNone, mixedStatic] = await Promise.all([
      promptLogprobs(prompt, 'none'),
      promptLogprobs(prompt, 'static'),
      ...LICENSE.slice(0, 4).map((p) => promptLogprobs(p, 'batch')),
    ]);
    assert.ok(maxAbsDiff(mixedNone, none) < 1e-4, 'none is unaffected by its batch');
    assert.ok(maxAbsDiff(mixedStatic, staticLora) < 1e-4, 'static is unaffected by its batch');
  });

  test('only batch requests form a batch request\'s context: none, static, request, library, masks and named-adapter neighbours change nothing', async () => {
    const prompt = 'The President said that the';
    const alone = await complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 0 });
    const [beside] = await Promise.all([
      complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 0 }),
      ...LICENSE.slice(0, 2).map((p) => complete(app, { prompt: p, max_tokens: 1, adaptation: 'none' })),
      complete(app, { prompt: LICENSE[2], max_tokens: 1, adaptation: 'static' }),
      complete(app, { prompt: LICENSE[3], max_tokens: 1, adaptation: 'request' }),
      // the seed's baselines are clustered too, but each mode on its own; a named adapter is not clustered at all
      complete(app, { prompt: LICENSE[4], max_tokens: 1, adaptation: 'library' }),
      complete(app, { prompt: LICENSE[5], max_tokens: 1, adaptation: 'masks' }),
      complete(app, { prompt: LICENSE[6], max_tokens: 1, adaptation: 'library_weighted', adaptation_scale: 0.5 }),
      complete(app, { prompt: LICENSE[7], max_tokens: 1, model: 'library:license' }),
    ]);
    assert.equal(beside.status, 200);
    assert.deepEqual(beside.body.chameleon.cluster_sizes, [1], 'clustered with itself only');
    assert.equal(beside.body.chameleon.batch_size, 1);
    assert.ok(maxAbsDiff(beside.body.choices[0].logprobs.token_logprobs.slice(1), alone.body.choices[0].logprobs.token_logprobs.slice(1)) < 1e-4);
    const greedy = { prompt, max_tokens: 12, temperature: 0, ignore_eos: true };
    const [textAlone] = [await complete(app, greedy)];
    const [textBeside] = await Promise.all([complete(app, greedy), ...SEA.slice(0, 4).map((p) => complete(app, { prompt: p, max_tokens: 2, adaptation: 'none' }))]);
    assert.equal(textBeside.body.choices[0].text, textAlone.body.choices[0].text);
  });

  test('a streamed greedy completion equals the non-streamed one', async () => {
    const body = { prompt: 'The ship sailed', max_tokens: 12, temperature: 0, logprobs: 1 };
    const plain = await complete(app, body);
    assert.equal(plain.status, 200);
    const res = await request(app.server).post('/v1/completions').send({ model: MODEL, ...body, stream: true, stream_options: { include_usage: true } });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    const events = sseData(res.text);
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1) as any[];
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    assert.deepEqual(usage.usage, plain.body.usage);
    const deltas = chunks.slice(0, -1);
    for (const c of deltas) {
      assert.equal(c.object, 'text_completion');
      assert.equal(c.chameleon.mode, 'batch');
    }
    const text = deltas.map((c) => c.choices[0].text).join('');
    assert.equal(text, plain.body.choices[0].text);
    assert.equal(deltas.at(-1).choices[0].finish_reason, plain.body.choices[0].finish_reason);
    const tokens = deltas.flatMap((c) => c.choices[0].logprobs?.tokens ?? []);
    assert.deepEqual(tokens, plain.body.choices[0].logprobs.tokens);
  });

  test('seeded sampling repeats; greedy ignores the seed', async () => {
    for (const sampling of [{ temperature: 1 }, { temperature: 0.8, top_p: 0.9, top_k: 20 }]) {
      const body = { prompt: 'The court decided', max_tokens: 10, seed: 1234, ignore_eos: true, ...sampling };
      const first = await complete(app, body);
      const second = await complete(app, body);
      assert.equal(first.status, 200);
      assert.equal(first.body.choices[0].text, second.body.choices[0].text);
      assert.equal(first.body.usage.completion_tokens, 10);
    }
    const texts = new Set<string>();
    for (const seed of [1, 2, 3, 4, 5]) {
      const res = await complete(app, { prompt: 'The court decided', max_tokens: 10, seed, temperature: 1.5, ignore_eos: true });
      texts.add(res.body.choices[0].text);
    }
    assert.ok(texts.size > 1, 'different seeds give different samples');
    const greedy = await Promise.all([1, 2].map(async (seed) => (await complete(app, { prompt: 'The court decided', max_tokens: 6, seed, temperature: 0 })).body.choices[0].text));
    assert.equal(greedy[0], greedy[1]);
  });

  test('an array of prompts gets one choice each, in order', async () => {
    const prompts = distinctPrompts(3);
    const res = await complete(app, { prompt: prompts, max_tokens: 3, echo: true, temperature: 0 });
    assert.equal(res.status, 200);
    assert.equal(res.body.choices.length, 3);
    res.body.choices.forEach((choice: any, i: number) => {
      assert.equal(choice.index, i);
      assert.ok(choice.text.startsWith(prompts[i]));
    });
    assert.equal(res.body.chameleon.cluster_indices.length, 3);
  });

  test('stop strings end the text before the stop string, streamed or not', async () => {
    const base = { prompt: 'My friend wrote', max_tokens: 12, temperature: 0, ignore_eos: true };
    const full = (await complete(app, base)).body.choices[0].text as string;
    assert.ok(full.length >= 4, `enough text to cut: ${JSON.stringify(full)}`);
    const stop = full.slice(2, 4);
    const expected = full.slice(0, full.indexOf(stop));
    const cut = await complete(app, { ...base, stop: [stop, 'never-generated'] });
    assert.equal(cut.body.choices[0].text, expected);
    assert.equal(cut.body.choices[0].finish_reason, 'stop');
    const streamed = await request(app.server).post('/v1/completions').send({ model: MODEL, ...base, stop, stream: true });
    const chunks = sseData(streamed.text).slice(0, -1) as any[];
    assert.equal(chunks.map((c) => c.choices[0].text).join(''), expected);
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
  });
});

describe('models, health and metrics', () => {
  test('GET /v1/models lists the served model first, then its named adapters', async () => {
    const res = await request(app.server).get('/v1/models');
    assert.equal(res.status, 200);
    assert.equal(res.body.object, 'list');
    assert.equal(res.body.data[0].id, MODEL);
    assert.ok(res.body.data.slice(1).every((m: any) => m.parent === MODEL));
    const one = await request(app.server).get(`/v1/models/${MODEL}`);
    assert.equal(one.body.id, MODEL);
  });

  test('health: live, and ready with the execution provider', async () => {
    const live = await app.inject({ url: '/health/live' });
    assert.equal(live.statusCode, 200);
    const ready = await app.inject({ url: '/health/ready' });
    assert.equal(ready.statusCode, 200);
    assert.equal(ready.json().execution_provider, 'cpu');
  });

  test('GET /metrics exposes the pipeline metrics', async () => {
    const res = await app.inject({ url: '/metrics' });
    assert.equal(res.statusCode, 200);
    for (const name of [
      'chameleon_queue_depth', 'chameleon_batch_size_bucket', 'chameleon_clusters_per_batch_bucket',
      'chameleon_adaptation_seconds_bucket{le="0.001",stage="hypernet"}', 'chameleon_forward_seconds_bucket{le="0.001",phase="decode"}',
      'chameleon_time_to_first_token_seconds_bucket', 'chameleon_tokens_generated_total', 'chameleon_requests_total{status="200"}',
    ]) {
      assert.ok(res.body.includes(name), `${name} in /metrics`);
    }
  });

  test('every response carries a request id; a given x-request-id is kept', async () => {
    const res = await app.inject({ url: '/health/live', headers: { 'x-request-id': 'abc-123' } });
    assert.equal(res.headers['x-request-id'], 'abc-123');
    const other = await app.inject({ url: '/health/live' });
    assert.match(String(other.headers['x-request-id']), /^req-/);
  });
});
