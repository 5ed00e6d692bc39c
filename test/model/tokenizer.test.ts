import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TextTracker } from '../../src/engine/stopping.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';

const pkg = ModelPackage.open(MODEL_DIR);
const tok = pkg.tokenizer;

test('encodePrompt prepends BOS when the package asks for it; decode round-trips', () => {
  const text = 'The whale rose, and 1851 sailors cheered!';
  const ids = tok.encode(text);
  const prompt = tok.encodePrompt(text);
  if (pkg.manifest.tokenizer.add_bos) assert.deepEqual(prompt, [pkg.manifest.tokenizer.bos_token_id, ...ids]);
  else assert.deepEqual(prompt, ids);
  assert.equal(tok.decode(ids), text);
  assert.equal(ids.map((id) => tok.piece(id)).join(''), text);
});

test('decoding is exact and append-only: spaces before punctuation survive, also when streamed', () => {
  const text = "Hello , world . It 's n't ok ?";
  const ids = tok.encode(text);
  assert.equal(tok.decode(ids), text);
  assert.equal(ids.map((id) => tok.piece(id)).join(''), text);
  const tracker = new TextTracker((id) => tok.bytes(id), []);
  const streamed = ids.map((id) => tracker.push(id).delta).join('') + tracker.flush();
  assert.equal(streamed, text);
});

test('the end-of-text token is special: one id, dropped from decoded text', () => {
  const eos = pkg.manifest.tokenizer.eos_token;
  const ids = tok.encode(`a${eos}b`);
  assert.ok(ids.includes(tok.eosId));
  assert.equal(tok.decode(ids), 'ab');
  assert.equal(tok.piece(tok.eosId), eos);
});

test('the served (native, asynchronous) encoder gives the same ids; the linear-time lower bound never exceeds them', async () => {
  const texts = [
    '', ' ', 'The whale rose, and 1851 sailors cheered!', '日本語のテキスト 🙂 naïve café', 'a<|endoftext|>b<|endoftext|>', ' '.repeat(5000),
    '-'.repeat(3000), "it's we're they'll I'd", '\n\n\t  x\r\n', 'x'.repeat(4000), '🙂'.repeat(500), '1234567890'.repeat(50),
  ];
  for (const text of texts) {
    const ids = await tok.tokenizePrompt(text);
    assert.deepEqual(ids, tok.encodePrompt(text), JSON.stringify(text.slice(0, 40)));
    assert.ok(tok.minPromptTokens(text) <= ids.length, `lower bound ${tok.minPromptTokens(text)} <= ${ids.length} for ${JSON.stringify(text.slice(0, 40))}`);
  }
  assert.equal(tok.maxTokenBytes, Math.max(...Array.from({ length: tok.vocabSize }, (_, id) => Buffer.byteLength(tok.piece(id).startsWith('bytes:') ? 'x'.repeat(tok.piece(id).split('\\x').length - 1) : tok.piece(id)))));
});

test('a token that is not whole UTF-8 characters is written bytes:\\xNN; no two tokens share a text', () => {
  const pieces = tok.encode('日本語🙂').map((id) => tok.piece(id));
  assert.ok(pieces.every((p) => p.startsWith('bytes:\\x')), JSON.stringify(pieces));
  const all = Array.from({ length: tok.vocabSize }, (_, id) => tok.piece(id));
  assert.equal(new Set(all).size, all.length);
});
