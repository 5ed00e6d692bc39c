/**
 * The clients people call chat with, unmodified, over real HTTP: the official `openai` client and LangChain's
 * ChatOpenAI (@langchain/openai), given only a base URL. Against the default package (its own simple template) and
 * against packages that npm run model:import writes from fixture checkpoints carrying real chat templates (Qwen2's
 * ChatML, Llama 3's), which are base-only and answer with adaptation none.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ChatOpenAI } from '@langchain/openai';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL, MODEL_DIR, startApp } from '../helpers/app.js';
import { PYTHON, runPython } from '../training/python.js';

const IMPORTED = ['qwen2', 'llama'];
const scratch = mkdtempSync(join(tmpdir(), 'chameleon-chat-clients-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

before(() => {
  runPython(['test/fixtures/hf/checkpoints.py', join(scratch, 'hf'), '--variants', IMPORTED.join(',')]);
  for (const variant of IMPORTED) {
    const done = spawnSync(PYTHON, ['training/hf_import.py', join(scratch, 'hf', variant), join(scratch, 'pkg', variant)], {
      encoding: 'utf8', timeout: 170_000, env: { ...process.env, OMP_NUM_THREADS: '2' },
    });
    assert.equal(done.status, 0, `${variant}: ${done.stderr}`);
  }
});

const MESSAGES = [
  { role: 'system' as const, content: 'You are a helpful assistant.' },
  { role: 'user' as const, content: 'The whale rose from the sea, and the crew pulled hard at the oars.' },
];

/** The answer's text from its logprobs: the tokens' bytes, decoded (a token may end inside a character). */
const textOfBytes = (entries: ReadonlyArray<{ bytes: number[] | null }>) => Buffer.from(entries.flatMap((e) => e.bytes ?? [])).toString('utf8');

const targets: Array<{ name: string; dir: () => string; template: RegExp }> = [
  { name: 'the default package', dir: () => MODEL_DIR, template: /Assistant:/ },
  { name: 'imported qwen2 (ChatML)', dir: () => join(scratch, 'pkg', 'qwen2'), template: /<\|im_start\|>assistant/ },
  { name: 'imported llama (Llama 3 template)', dir: () => join(scratch, 'pkg', 'llama'), template: /<\|start_header_id\|>assistant<\|end_header_id\|>/ },
];

for (const target of targets) {
  describe(`chat clients against ${target.name}`, () => {
    let app: FastifyInstance;
    let baseURL: string;
    let openai: OpenAI;
    const langchain = (fields: ConstructorParameters<typeof ChatOpenAI>[0] = {}) =>
      new ChatOpenAI({ model: MODEL, apiKey: 'unused', maxRetries: 0, configuration: { baseURL }, ...fields });

    before(async () => {
      app = await startApp({ modelDir: target.dir(), maxBatchSize: 8, maxWaitMs: 5 });
      baseURL = `${await app.listen({ host: '127.0.0.1', port: 0 })}/v1`;
      openai = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
    });
    after(async () => {
      await app.close();
    });

    test('the package\'s own template renders the conversation, ending with the assistant\'s turn', () => {
      const rendered = ModelPackage.open(target.dir()).chatTemplate!.render(MESSAGES, true);
      assert.match(rendered, target.template);
      assert.ok(rendered.includes(MESSAGES[1].content));
    });

    test('openai: chat.completions.create, then the same greedy answer streamed', async () => {
      const whole = await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 8, temperature: 0 });
      assert.equal(whole.object, 'chat.completion');
      assert.equal(whole.choices[0].message.role, 'assistant');
      assert.equal(typeof whole.choices[0].message.content, 'string');
      assert.ok(['stop', 'length'].includes(whole.choices[0].finish_reason));
      assert.ok(whole.usage!.prompt_tokens > 0);
      const stream = await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
      let content = '';
      let role: string | undefined;
      let usage: OpenAI.CompletionUsage | null | undefined;
      for await (const chunk of stream) {
        role ??= chunk.choices[0]?.delta.role;
        content += chunk.choices[0]?.delta.content ?? '';
        usage = chunk.usage ?? usage;
      }
      assert.equal(role, 'assistant');
      assert.equal(content, whole.choices[0].message.content);
      assert.equal(usage?.completion_tokens, whole.usage!.completion_tokens);
    });

    test('openai: n seeded choices, and logprobs with top_logprobs', async () => {
      const res = await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 6, temperature: 1, seed: 7, n: 3, logprobs: true, top_logprobs: 3 });
      assert.deepEqual(res.choices.map((c) => c.index), [0, 1, 2]);
      for (const [j, choice] of res.choices.entries()) {
        const alone = await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 6, temperature: 1, seed: 7 + j });
        assert.equal(choice.message.content, alone.choices[0].message.content, `choice ${j} is the request with seed ${7 + j}`);
        const entries = choice.logprobs!.content!;
        assert.equal(textOfBytes(entries), choice.message.content);
        assert.ok(entries.every((e) => e.logprob <= 0 && e.top_logprobs.length === 3));
      }
    });

    test('LangChain ChatOpenAI: invoke and stream give the openai client\'s greedy answer', async () => {
      const expected = (await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 8, temperature: 0 })).choices[0].message.content;
      const chat = langchain({ temperature: 0, maxTokens: 8 });
      const answer = await chat.invoke([['system', MESSAGES[0].content], ['human', MESSAGES[1].content]]);
      assert.equal(answer.content, expected);
      let streamed = '';
      for await (const chunk of await chat.stream([['system', MESSAGES[0].content], ['human', MESSAGES[1].content]])) streamed += chunk.content as string;
      assert.equal(streamed, expected);
    });

    test('a conversation continued with the answer the clients returned (their own message objects) is accepted', async () => {
      const first = await openai.chat.completions.create({ model: MODEL, messages: MESSAGES, max_tokens: 4, temperature: 0 });
      const next = await openai.chat.completions.create({
        model: MODEL, messages: [...MESSAGES, first.choices[0].message, { role: 'user', content: 'And then?' }], max_tokens: 4, temperature: 0,
      });
      assert.equal(next.choices[0].message.role, 'assistant');
      const chat = langchain({ temperature: 0, maxTokens: 4 });
      const answer = await chat.invoke([['human', MESSAGES[1].content]]);
      const followUp = await chat.invoke([['human', MESSAGES[1].content], answer, ['human', 'And then?']]);
      assert.equal(typeof followUp.content, 'string');
    });

    test('LangChain ChatOpenAI: n generations, and logprobs in the response metadata', async () => {
      const many = await langchain({ temperature: 1, maxTokens: 6, n: 2 }).generate([[['human', MESSAGES[1].content]]]);
      assert.equal(many.generations[0].length, 2);
      const scored = await langchain({ temperature: 0, maxTokens: 6, logprobs: true, topLogprobs: 2 }).invoke([['human', MESSAGES[1].content]]);
      const content = (scored.response_metadata as { logprobs: { content: Array<{ bytes: number[]; top_logprobs: unknown[] }> } }).logprobs.content;
      assert.equal(textOfBytes(content), scored.content);
      assert.ok(content.length > 0 && content.every((e) => e.top_logprobs.length === 2));
    });
  });
}
