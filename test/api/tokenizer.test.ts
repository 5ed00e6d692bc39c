/**
 * vLLM's tokenizer routes on the default package: /tokenize counts what a completion prompt of the text costs, its ids
 * detokenize back to the text and score as the text does, and /tokenizer_info names the special tokens.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, MODEL, startApp } from '../helpers/app.js';

const TEXT = 'Call me Ishmael. Some years ago, never mind how long precisely';
let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0 });
});
after(async () => {
  await app.close();
});

const post = (url: string, payload: unknown) => app.inject({ method: 'POST', url, payload: payload as object });

describe('tokenizer routes', () => {
  test('/tokenize counts what the text costs as a prompt; the ids detokenize back to the text', async () => {
    const tokenized = (await post('/tokenize', { model: MODEL, prompt: TEXT, return_token_strs: true })).json();
    const scored = await complete(app, { prompt: TEXT, max_tokens: 0, echo: true, logprobs: 0 });
    const bos = app.chameleon.service.tokenizer!.addBos ? 1 : 0;
    assert.equal(tokenized.count, scored.body.usage.prompt_tokens + bos, 'the ids a completion feeds: its prompt tokens after the BOS');
    assert.equal(tokenized.tokens.length, tokenized.count);
    assert.equal(tokenized.max_model_len, app.chameleon.service.contextLength);
    assert.deepEqual(tokenized.token_strs.slice(1), scored.body.choices[0].logprobs.tokens, 'after the BOS, the same tokens as the echo');
    const plain = (await post('/tokenize', { prompt: TEXT, add_special_tokens: false })).json();
    assert.deepEqual(plain.tokens, tokenized.tokens.slice(1), 'without special tokens: no BOS');
    assert.equal(plain.token_strs, null);
    const back = await post('/detokenize', { model: MODEL, tokens: tokenized.tokens });
    assert.equal(back.statusCode, 200, back.body);
    assert.equal(back.json().prompt, TEXT);
  });

  test('/tokenizer_info names the special tokens the completions use', async () => {
    const res = await app.inject({ method: 'GET', url: '/tokenizer_info' });
    assert.equal(res.statusCode, 200, res.body);
    const info = res.json();
    const tokenizer = app.chameleon.service.tokenizer!;
    assert.equal(info.add_bos_token, tokenizer.addBos);
    assert.equal(info.bos_token_id, tokenizer.bosId);
    assert.equal(info.eos_token_id, tokenizer.eosId);
    assert.equal(info.vocab_size, tokenizer.vocabSize);
    assert.equal(info.model_max_length, app.chameleon.service.contextLength);
    assert.equal(typeof info.eos_token, 'string');
    const first = (await post('/tokenize', { prompt: 'x' })).json().tokens[0];
    assert.equal(first, info.bos_token_id, 'a prompt starts with the BOS it names');
  });

  test('an unknown model, an id outside the vocabulary and an unknown field are refused', async () => {
    const unknown = await post('/tokenize', { model: 'nope', prompt: 'x' });
    assert.equal(unknown.statusCode, 404);
    assert.equal(unknown.json().error.code, 'model_not_found');
    const vocab = app.chameleon.service.tokenizer!.vocabSize;
    const outside = await post('/detokenize', { tokens: [1, vocab] });
    assert.equal(outside.statusCode, 400);
    assert.equal(outside.json().error.param, 'tokens');
    const both = await post('/tokenize', { prompt: 'x', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(both.statusCode, 400);
    assert.equal(both.json().error.type, 'invalid_request_error');
  });

  test('messages are tokenized as a chat completion feeds them: count is its prompt_tokens', async () => {
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'The whale rose from the sea.' }];
    const counted = await post('/tokenize', { messages, return_token_strs: true });
    assert.equal(counted.statusCode, 200, counted.body);
    const answered = await app.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: MODEL, messages, max_tokens: 1 } });
    assert.equal(counted.json().count, answered.json().usage.prompt_tokens);
    assert.equal(counted.json().token_strs.at(-1), ':', 'the generation prompt ends the conversation ("Assistant:")');
    const open = await post('/tokenize', { messages, add_generation_prompt: false });
    assert.ok(open.json().count < counted.json().count);
  });
});
