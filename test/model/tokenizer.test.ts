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
  const tracker = new TextTracker((list) => tok.decode(list), []);
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
