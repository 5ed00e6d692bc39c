/**
 * Tokens that are not whole UTF-8 characters: logprobs write them as OpenAI does (`bytes:\xNN`), offsets count
 * characters, top_logprobs keys do not collide, and streamed text never carries a broken character.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import request from 'supertest';
import { TextOffsets, charLength } from '../../src/api/completions/format.js';
import { pieceBytes } from '../../src/model/tokenizer.js';
import { complete, MODEL, sseData, startApp } from '../helpers/app.js';

const TEXTS = ['日本語のテキストです。', 'naïve café, crème brûlée', '🙂🚀 emoji 👩‍👩‍👧 done', 'Ωμέγα e\u0301 mixed 漢字 and ascii'];

/** The text the logprobs tokens spell, decoded from their bytes. */
function spell(tokens: string[]): string {
  return new TextDecoder().decode(Buffer.concat(tokens.map((t) => Buffer.from(pieceBytes(t)))));
}

describe('bytes in logprobs and streams', () => {
  let app: FastifyInstance;
  before(async () => {
    app = await startApp({ maxWaitMs: 5 });
  });
  after(async () => {
    await app.close();
  });

  for (const text of TEXTS) {
    test(`echoed logprobs of ${JSON.stringify(text)}: bytes: tokens, character offsets, unique keys`, async () => {
      const res = await complete(app, { prompt: text, max_tokens: 0, echo: true, logprobs: 5 });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const { tokens, text_offset: offsets, top_logprobs: top } = res.body.choices[0].logprobs;
      assert.equal(spell(tokens), text);
      if (/[^\x00-\x7f]/.test(text)) assert.ok(tokens.some((t: string) => t.startsWith('bytes:\\x')), 'some token is part of a character');
      for (const t of tokens) assert.ok(!t.includes('\uFFFD'), `no replacement character in ${JSON.stringify(t)}`);
      // Each offset is where the token's first character starts: the text before it, in code points.
      const chars = [...text];
      let bytes = 0;
      offsets.forEach((at: number, i: number) => {
        const before = new TextDecoder().decode(Buffer.from(text).subarray(0, bytes)).replace(/\uFFFD$/, '');
        assert.equal(at, charLength(before), `offset of token ${i} (${tokens[i]})`);
        assert.ok(at <= chars.length);
        bytes += pieceBytes(tokens[i]).length;
      });
      for (const alternatives of top.slice(1)) assert.equal(Object.keys(alternatives).length, 5, 'five distinct keys');
    });
  }

  test('a streamed greedy completion of a non-ASCII prompt equals the JSON one, and no chunk breaks a character', async () => {
    for (const prompt of TEXTS) {
      const body = { prompt, max_tokens: 24, temperature: 0, ignore_eos: true, logprobs: 1 };
      const plain = await complete(app, body);
      assert.equal(plain.status, 200);
      const res = await request(app.server).post('/v1/completions').send({ model: MODEL, ...body, stream: true });
      const chunks = sseData(res.text).slice(0, -1) as any[];
      const deltas = chunks.map((c) => c.choices[0].text as string);
      assert.equal(deltas.join(''), plain.body.choices[0].text);
      for (const d of deltas) {
        assert.ok(!/[\uD800-\uDBFF]$/.test(d), 'no chunk ends inside a surrogate pair');
        assert.ok(!d.endsWith('\uFFFD') || d === deltas.at(-1) || plain.body.choices[0].text.includes('\uFFFD'), 'no chunk ends in a held-back partial character');
      }
      assert.deepEqual(chunks.flatMap((c) => c.choices[0].logprobs?.tokens ?? []), plain.body.choices[0].logprobs.tokens);
      assert.deepEqual(chunks.flatMap((c) => c.choices[0].logprobs?.text_offset ?? []), plain.body.choices[0].logprobs.text_offset);
    }
  });
});

test('TextOffsets: the bytes of one character share its offset; the next character starts one further', () => {
  const offsets = new TextOffsets(3);
  assert.deepEqual(['bytes:\\xe6', 'bytes:\\x97', 'bytes:\\xa5', 'a', 'bytes:\\xf0\\x9f', 'bytes:\\x99\\x82', 'é'].map((t) => offsets.next(t)), [3, 3, 3, 4, 5, 5, 6]);
});
