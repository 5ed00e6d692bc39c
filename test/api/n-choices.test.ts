/**
 * n > 1 on /v1/completions: each choice is a row of its own, in OpenAI's order (prompt index * n + sample), and a seeded
 * choice j is what the same request with seed + j and n = 1 returns.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, MODEL, startApp } from '../helpers/app.js';

let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0 });
});
after(async () => {
  await app.close();
});

const SAMPLED = { max_tokens: 12, temperature: 1, adaptation: 'static' };

describe('n choices', () => {
  test('seeded choices are distinct and each equals the request with seed + j sent alone', async () => {
    const prompt = 'The history of the city begins';
    const many = await complete(app, { prompt, n: 3, seed: 11, ...SAMPLED });
    assert.equal(many.status, 200, JSON.stringify(many.body));
    assert.deepEqual(many.body.choices.map((c: { index: number }) => c.index), [0, 1, 2]);
    const texts: string[] = many.body.choices.map((c: { text: string }) => c.text);
    assert.equal(new Set(texts).size, 3, `three different samples: ${JSON.stringify(texts)}`);
    for (const [j, text] of texts.entries()) {
      const alone = await complete(app, { prompt, seed: 11 + j, ...SAMPLED });
      assert.equal(alone.body.choices[0].text, text, `choice ${j} is the request with seed ${11 + j}`);
    }
    assert.equal(many.body.usage.prompt_tokens, (await complete(app, { prompt, seed: 11, ...SAMPLED })).body.usage.prompt_tokens, 'the prompt is counted once');
    assert.equal(many.body.chameleon.cluster_indices.length, 3);
  });

  test('several prompts: choice index = prompt index * n + sample', async () => {
    const prompts = ['Once upon a time', 'def main():'];
    const res = await complete(app, { prompt: prompts, n: 2, seed: 5, ...SAMPLED });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.choices.length, 4);
    for (const [i, choice] of res.body.choices.entries()) {
      const alone = await complete(app, { prompt: prompts[Math.floor(i / 2)], seed: 5 + (i % 2), ...SAMPLED });
      assert.equal(choice.text, alone.body.choices[0].text, `choice ${i}`);
    }
  });

  test('streamed: every choice index gets its chunks and its own finish', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'Hello', n: 3, seed: 2, stream: true, ...SAMPLED } });
    const chunks = res.body.split('\n\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)));
    const finishes = chunks.flatMap((c) => c.choices.filter((ch: { finish_reason: string | null }) => ch.finish_reason !== null).map((ch: { index: number }) => ch.index));
    assert.deepEqual(finishes.sort(), [0, 1, 2]);
  });

  test('more choices than a batch holds is a 400 naming n', async () => {
    const res = await complete(app, { prompt: 'x', n: 10_000, max_tokens: 1 });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.param, 'n');
    assert.match(res.body.error.message, /choices per request/);
  });
});
