/**
 * POST /v1/chat/completions: the messages rendered with the package's chat template are the prompt, fed as the
 * template wrote it; adaptation reads the conversation's words, not the template's; the answer and the stream are in
 * OpenAI's chat shapes; a package without a template, or a conversation its template refuses, gets a 400.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL, MODEL_DIR, startApp } from '../helpers/app.js';
import { copyPackage } from '../helpers/package-copy.js';
import { SEA } from '../helpers/prompts.js';

const model = ModelPackage.open(MODEL_DIR);
let app: FastifyInstance;

before(async () => {
  app = await startApp({ maxWaitMs: 0 });
});
after(async () => {
  await app.close();
});

async function chat(target: FastifyInstance, body: Record<string, unknown>) {
  const res = await target.inject({ method: 'POST', url: '/v1/chat/completions', payload: { model: MODEL, ...body } });
  return { status: res.statusCode, body: res.json(), raw: res };
}

const CONVERSATION = [
  { role: 'system', content: 'You are a sailor who answers briefly.' },
  { role: 'user', content: SEA[0] },
];

describe('chat completions', () => {
  test('the answer is the completion of the rendered template, fed without an added BOS', async () => {
    const rendered = model.chatTemplate!.render(CONVERSATION, true);
    assert.ok(rendered.endsWith('Assistant:') && rendered.includes(`User: ${SEA[0]}`), rendered);
    const ids = model.tokenizer.encode(rendered);
    const [byChat, byIds] = await Promise.all([
      chat(app, { messages: CONVERSATION, max_tokens: 10, temperature: 0, adaptation: 'static' }),
      complete(app, { prompt: ids, max_tokens: 10, temperature: 0, adaptation: 'static' }),
    ]);
    assert.equal(byChat.status, 200, JSON.stringify(byChat.body));
    assert.equal(byChat.body.object, 'chat.completion');
    assert.match(byChat.body.id, /^chatcmpl-/);
    const [choice] = byChat.body.choices;
    assert.deepEqual(Object.keys(choice).sort(), ['finish_reason', 'index', 'logprobs', 'message']);
    assert.equal(choice.message.role, 'assistant');
    assert.equal(choice.message.content, byIds.body.choices[0].text);
    assert.equal(byChat.body.usage.prompt_tokens, ids.length);
  });

  test('adaptation reads the user\'s words: the context is the same whatever the system prompt, and the same as the bare prompt\'s', async () => {
    const similarity = (body: { chameleon: { context_similarity: number } }) => body.chameleon.context_similarity;
    const asked = (system: string) => chat(app, { messages: [{ role: 'system', content: system }, { role: 'user', content: SEA[1] }], max_tokens: 1, adaptation: 'request' });
    const [a, b, plain] = await Promise.all([
      asked('You are a helpful assistant.'),
      asked('Reply in the style of a licence agreement, with every clause numbered.'),
      complete(app, { prompt: SEA[1], max_tokens: 1, adaptation: 'request' }),
    ]);
    assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.equal(similarity(a.body), similarity(b.body));
    assert.equal(similarity(a.body), similarity(plain.body));
    assert.equal(a.body.chameleon.dynamic_weight, plain.body.chameleon.dynamic_weight, 'the context counts the user\'s tokens only');
  });

  test('max_completion_tokens takes precedence over max_tokens; n choices; logprobs in the chat shape', async () => {
    const res = await chat(app, { messages: CONVERSATION, max_completion_tokens: 3, max_tokens: 9, n: 2, seed: 3, temperature: 1, ignore_eos: true, logprobs: true, top_logprobs: 2 });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.choices.length, 2);
    for (const choice of res.body.choices) {
      assert.equal(choice.logprobs.content.length, 3);
      const [first] = choice.logprobs.content;
      assert.equal(typeof first.logprob, 'number');
      assert.deepEqual(first.bytes, [...Buffer.from(first.token)]);
      assert.equal(first.top_logprobs.length, 2);
      assert.equal(choice.logprobs.content.map((e: { token: string }) => e.token).join(''), choice.message.content);
    }
    assert.equal(res.body.usage.completion_tokens, 6);
  });

  test('streamed: the role first for each choice, then content, then a finish per choice, usage, [DONE]', async () => {
    const raw = await app.inject({
      method: 'POST', url: '/v1/chat/completions',
      payload: { model: MODEL, messages: CONVERSATION, max_tokens: 4, n: 2, ignore_eos: true, stream: true, stream_options: { include_usage: true } },
    });
    const events = raw.body.split('\n\n').filter((e) => e.startsWith('data: '));
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)));
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
    for (const index of [0, 1]) {
      const mine = chunks.filter((c) => c.choices[0]?.index === index).map((c) => c.choices[0]);
      assert.deepEqual(mine[0].delta, { role: 'assistant', content: '' });
      assert.equal(mine.filter((c) => c.delta.content !== undefined && c.delta.role === undefined).length, 4);
      assert.equal(mine.at(-1).finish_reason, 'length');
    }
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.equal(chunks.at(-1).usage.completion_tokens, 8);
  });

  test('refusals name the field: tools, an image part, top_logprobs without logprobs', async () => {
    const cases: Array<[Record<string, unknown>, string, string]> = [
      [{ messages: CONVERSATION, tools: [] }, 'unsupported_parameter', 'tools'],
      [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'invalid_request', 'messages'],
      [{ messages: CONVERSATION, top_logprobs: 2 }, 'invalid_request', 'top_logprobs'],
      [{ messages: [] }, 'invalid_request', 'messages'],
    ];
    for (const [body, code, param] of cases) {
      const res = await chat(app, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.code, code, JSON.stringify(res.body));
      assert.match(res.body.error.param, new RegExp(`^${param}`), JSON.stringify(res.body));
    }
  });
});

describe('chat templates a package brings', () => {
  test('no template: 400 naming messages, and completions still serve; a template\'s raise_exception is a 400 with its reason', async () => {
    const copy = copyPackage();
    try {
      delete copy.manifest.tokenizer.chat_template;
      copy.writeManifest(copy.manifest);
      const bare = await startApp({ maxWaitMs: 0, modelDir: copy.dir });
      try {
        const res = await chat(bare, { messages: CONVERSATION });
        assert.equal(res.status, 400);
        assert.equal(res.body.error.param, 'messages');
        assert.match(res.body.error.message, /no chat template/);
        assert.equal((await complete(bare, { prompt: 'x', max_tokens: 1 })).status, 200);
      } finally {
        await bare.close();
      }
      copy.manifest.tokenizer.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}";
      copy.writeManifest(copy.manifest);
      const strict = await startApp({ maxWaitMs: 0, modelDir: copy.dir });
      try {
        const refused = await chat(strict, { messages: CONVERSATION });
        assert.equal(refused.status, 400);
        assert.match(refused.body.error.message, /Conversations must start with the user/);
        assert.equal((await chat(strict, { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 1 })).status, 200);
      } finally {
        await strict.close();
      }
    } finally {
      copy.remove();
    }
  });
});
