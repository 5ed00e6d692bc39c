/**
 * The engine decodes generated text incrementally (each token's bytes through a streaming UTF-8 decoder); this checks
 * that it writes exactly what the tokenizer's own decode writes for the whole sequence, on the real package's
 * vocabulary, including byte tokens that split characters and special tokens.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TextTracker } from '../../src/engine/stopping.js';
import { Random } from '../../src/engine/sampling.js';
import { ModelPackage } from '../../src/model/package.js';
import { MODEL_DIR } from '../helpers/app.js';

const tokenizer = ModelPackage.open(MODEL_DIR).tokenizer;

test('incremental decoding equals the tokenizer decode of the whole sequence', () => {
  const rng = new Random(7);
  const texts = ['日本語のテキスト、そして English words.', 'Café ☕ naïve — “quotes” 🐋', 'The whale rose from the sea.'];
  const sequences = [
    ...texts.map((t) => tokenizer.encode(t)),
    // random ids: byte tokens in any order (invalid UTF-8 included) and the end-of-text token
    ...Array.from({ length: 200 }, () => Array.from({ length: 1 + Math.floor(rng.next() * 40) }, () => Math.floor(rng.next() * tokenizer.vocabSize))),
  ];
  for (const ids of sequences) {
    const tracker = new TextTracker((id) => tokenizer.bytes(id), []);
    let streamed = '';
    for (const id of ids) streamed += tracker.push(id).delta;
    streamed += tracker.flush();
    assert.equal(streamed, tokenizer.decode(ids), JSON.stringify(ids));
  }
});
