/**
 * Token-id prompts on /v1/completions (what lm-evaluation-harness's local-completions sends): fed as they are, scored
 * and continued exactly as the text they spell, and checked against the vocabulary and the context.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL_DIR, startApp } from '../helpers/app.js';

const TEXT = 'Permission is hereby granted, free of charge, to any person';
const tokenizer = ModelPackage.open(MODEL_DIR).tokenizer;
/** What the server feeds for TEXT: its tokens after the package's beginning-of-text token. */
const IDS = tokenizer.encodePrompt(TEXT);
let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0 });
});
after(async () => {
  await app.close();
});

describe('token-id prompts', () => {
  test('the ids of a text continue it exactly as the text does (greedy)', async () => {
    assert.ok(tokenizer.addBos, 'the default package adds a BOS, which the ids carry themselves');
    const [byText, byIds] = await Promise.all([TEXT, IDS].map((prompt) => complete(app, { prompt, max_tokens: 12, temperature: 0, adaptation: 'static' })));
    assert.equal(byIds.status, 200, JSON.stringify(byIds.body));
    assert.equal(byIds.body.choices[0].text, byText.body.choices[0].text);
    assert.equal(byIds.body.usage.prompt_tokens, IDS.length, 'every id is a prompt token: none is added');
  });

  test('echo scores the ids as the text is scored: the first id has no logprob, the rest are the text\'s', async () => {
    const score = (prompt: unknown) => complete(app, { prompt, max_tokens: 0, echo: true, logprobs: 1, adaptation: 'static' });
    const [byText, byIds] = await Promise.all([score(TEXT), score(IDS)]);
    assert.equal(byIds.status, 200, JSON.stringify(byIds.body));
    const ids = byIds.body.choices[0].logprobs;
    const text = byText.body.choices[0].logprobs;
    assert.equal(ids.token_logprobs[0], null);
    assert.equal(ids.token_logprobs.length, IDS.length);
    const worst = Math.max(...text.token_logprobs.map((lp: number, i: number) => Math.abs(lp - ids.token_logprobs[i + 1])));
    assert.ok(worst < 1e-4, `the continuation's logprobs agree (largest difference ${worst})`);
    assert.deepEqual(ids.tokens.slice(1), text.tokens);
    assert.equal(byIds.body.choices[0].text, TEXT, 'the echoed text is the ids\' text');
  });

  test('a loglikelihood as lm-evaluation-harness\'s local-completions computes it equals the service\'s echo scoring of the text', async () => {
    // its request: context + continuation ids in one prompt, echo, logprobs 1, max_tokens 1, temperature 0
    const context = tokenizer.encodePrompt('Permission is hereby granted,');
    const continuation = tokenizer.encode(' free of charge');
    const res = await complete(app, { prompt: [[...context, ...continuation]], echo: true, logprobs: 1, max_tokens: 1, temperature: 0, seed: 1234 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    // its parse: token_logprobs[ctxlen:-1] (the last entry is the generated token)
    const { token_logprobs: lps } = res.body.choices[0].logprobs;
    assert.equal(lps.length, context.length + continuation.length + 1);
    const picked = lps.slice(context.length, -1) as number[];
    const loglikelihood = picked.reduce((a, b) => a + b, 0);
    const echo = await complete(app, { prompt: tokenizer.decode([...context, ...continuation]), echo: true, logprobs: 0, max_tokens: 0 });
    const scored = echo.body.choices[0].logprobs.token_logprobs as number[];
    const reference = scored.slice(scored.length - continuation.length).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(loglikelihood - reference) < 1e-4, `${loglikelihood} vs ${reference}`);
  });

  test('a list of id lists is one choice each, each as if sent alone', async () => {
    const other = tokenizer.encodePrompt('Call me Ishmael.');
    const [both, first, second] = await Promise.all([[IDS, other], IDS, other].map((prompt) => complete(app, { prompt, max_tokens: 6, temperature: 0, adaptation: 'none' })));
    assert.equal(both.status, 200, JSON.stringify(both.body));
    assert.deepEqual(both.body.choices.map((c: { text: string }) => c.text), [first.body.choices[0].text, second.body.choices[0].text]);
  });

  test('an id outside the vocabulary, a negative id, a mixed list and a prompt too long for the context are refused', async () => {
    const outside = await complete(app, { prompt: [[...IDS], [5, tokenizer.vocabSize]], max_tokens: 1 });
    assert.equal(outside.status, 400);
    assert.equal(outside.body.error.code, 'invalid_request');
    assert.equal(outside.body.error.param, 'prompt');
    assert.match(outside.body.error.message, new RegExp(`Token id ${tokenizer.vocabSize} in prompt 1 is outside the vocabulary \\(0 to ${tokenizer.vocabSize - 1}\\)`));
    for (const prompt of [[3, -1], [3, 'x'], [], [[]]]) {
      const res = await complete(app, { prompt, max_tokens: 1 });
      assert.equal(res.status, 400, `${JSON.stringify(prompt)}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.param, 'prompt');
    }
    const context = app.chameleon.service.contextLength;
    const long = await complete(app, { prompt: new Array(context).fill(5), max_tokens: 1 });
    assert.equal(long.status, 400);
    assert.equal(long.body.error.code, 'context_length_exceeded');
    assert.equal(long.body.error.param, 'max_tokens');
  });
});
