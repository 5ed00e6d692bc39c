/**
 * logit_bias and the presence, frequency and repetition penalties on /v1/completions, on the real default model:
 * they change what greedy and sampled requests generate, a request without them is served as if they did not
 * exist, and their values and logit_bias's keys are checked at admission.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL_DIR, startApp } from '../helpers/app.js';

const tokenizer = ModelPackage.open(MODEL_DIR).tokenizer;
/** Greedy on the base model, this prompt loops on " of the first" (its most frequent token comes 11 times in 32). */
const LOOPING = { prompt: 'The sea', max_tokens: 32, temperature: 0, ignore_eos: true, adaptation: 'none', logprobs: 5 };
let app: FastifyInstance;

before(async () => {
  // a window long enough that the concurrent requests of a test share their decoder runs
  app = await startApp({ maxWaitMs: 20 });
});
after(async () => {
  await app.close();
});

/** The id of a text that is one token. */
function idOf(text: string): number {
  const ids = tokenizer.encode(text);
  assert.equal(ids.length, 1, `${JSON.stringify(text)} is one token`);
  return ids[0];
}

/** The generated tokens (their pieces), their top_logprobs' pieces, and the most times one token came. */
async function generate(extra: Record<string, unknown>) {
  const res = await complete(app, { ...LOOPING, ...extra });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const { tokens, top_logprobs: top } = res.body.choices[0].logprobs as { tokens: string[]; top_logprobs: Array<Record<string, number>> };
  const counts = new Map<string, number>();
  for (const token of tokens) counts.set(token, (counts.get(token) ?? 0) + 1);
  return { text: res.body.choices[0].text as string, tokens, alternatives: top.flatMap((t) => Object.keys(t)), mostRepeats: Math.max(...counts.values()) };
}

describe('logit_bias and penalties', () => {
  test('logit_bias +100 makes greedy and sampled requests generate that token; a request beside them is untouched', async () => {
    const plain = await generate({});
    const whale = idOf(' whale');
    const [greedy, sampled, beside] = await Promise.all([
      generate({ logit_bias: { [whale]: 100 } }),
      generate({ logit_bias: { [whale]: 100 }, temperature: 1, seed: 2 }),
      generate({}),
    ]);
    assert.equal(greedy.text, ' whale'.repeat(32));
    assert.equal(sampled.text, ' whale'.repeat(32));
    assert.equal(beside.text, plain.text, 'a request without logit_bias gets what it gets alone');
  });

  test('logit_bias -100 bans a token: the greedy output changes and the token never appears, not even among top_logprobs', async () => {
    const plain = await generate({});
    assert.ok(plain.tokens.filter((t) => t === ' the').length >= 8, `the prompt loops on " the": ${plain.text}`);
    const banned = await generate({ logit_bias: { [idOf(' the')]: -100 } });
    assert.notEqual(banned.text, plain.text);
    assert.ok(!banned.tokens.includes(' the'), banned.text);
    // logprobs are those of the logits the token is chosen from (after the bias), so a banned token has none
    assert.ok(!banned.alternatives.includes(' the'), 'the banned token is not among the alternatives');
  });

  test('presence, frequency and repetition penalties stop greedy decoding from looping', async () => {
    const plain = await generate({});
    assert.ok(plain.mostRepeats >= 8, `the prompt loops: ${plain.text}`);
    for (const penalty of [{ presence_penalty: 2 }, { frequency_penalty: 2 }, { repetition_penalty: 1.5 }]) {
      const penalised = await generate(penalty);
      assert.ok(penalised.mostRepeats <= plain.mostRepeats / 4, `${JSON.stringify(penalty)}: a token comes ${penalised.mostRepeats} times (${penalised.text})`);
    }
  });

  test('neutral values are served as no penalty at all', async () => {
    const plain = await generate({});
    const neutral = await generate({ presence_penalty: 0, frequency_penalty: 0, repetition_penalty: 1, logit_bias: { [idOf(' the')]: 0 } });
    assert.equal(neutral.text, plain.text);
  });

  const vocab = tokenizer.vocabSize;
  const refused: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['a key that is not a number', { logit_bias: { whale: 1 } }, 'logit_bias', /logit_bias key "whale" is not a token id/],
    ['a negative key', { logit_bias: { '-1': 1 } }, 'logit_bias', /is not a token id/],
    ['a key with a leading zero', { logit_bias: { '07': 1 } }, 'logit_bias', /is not a token id/],
    ['a key outside the vocabulary', { logit_bias: { [vocab]: 1 } }, 'logit_bias', new RegExp(`Token id ${vocab} in logit_bias is outside the vocabulary`)],
    ['a bias above 100', { logit_bias: { 5: 101 } }, 'logit_bias', /logit_bias/],
    ['a bias below -100', { logit_bias: { 5: -101 } }, 'logit_bias', /logit_bias/],
    ['more than 1024 biases', { logit_bias: Object.fromEntries(Array.from({ length: 1025 }, (_, i) => [i, 1])) }, 'logit_bias', /logit_bias/],
    ['a presence_penalty above 2', { presence_penalty: 2.5 }, 'presence_penalty', /presence_penalty/],
    ['a frequency_penalty below -2', { frequency_penalty: -3 }, 'frequency_penalty', /frequency_penalty/],
    ['a repetition_penalty of 0', { repetition_penalty: 0 }, 'repetition_penalty', /repetition_penalty/],
  ];
  for (const [what, body, param, message] of refused) {
    test(`400 invalid_request for ${what}`, async () => {
      const res = await complete(app, { prompt: 'The sea', max_tokens: 2, ...body });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.deepEqual(Object.keys(res.body.error).sort(), ['code', 'message', 'param', 'type']);
      assert.equal(res.body.error.code, 'invalid_request');
      assert.equal(res.body.error.type, 'invalid_request_error');
      assert.equal(res.body.error.param, param);
      assert.match(res.body.error.message, message);
    });
  }
});
