/**
 * A SentencePiece-style vocabulary (Llama 2 / Mistral: `▁` for spaces, `<0xNN>` byte-fallback tokens, `<s>` / `</s>`),
 * hand-made here as a small tokenizer.json in both of the layouts Hugging Face writes (a Metaspace pre-tokenizer, or
 * the older Prepend + Replace normalizer): a token's bytes, its logprobs text, streamed deltas against decode, and
 * the linear-time lower bound on a prompt's tokens.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Tokenizer } from '@huggingface/tokenizers';
import { TextTracker } from '../../src/engine/stopping.js';
import { Random } from '../../src/engine/sampling.js';
import type { Manifest } from '../../src/model/manifest.js';
import { TextTokenizer } from '../../src/model/tokenizer.js';

const SPACE = '\u2581';
const WORDS = ['Hello', 'world', 'the', 'whale', 'rose', 'from', 'sea'];

/** A BPE vocabulary with byte fallback: specials, the 256 byte tokens, ▁, letters, and every ▁-prefixed prefix of WORDS. */
function sentencePieceJson(layout: 'metaspace' | 'normalizer'): { json: object; vocabSize: number } {
  const vocab: Record<string, number> = {};
  const add = (token: string) => { vocab[token] ??= Object.keys(vocab).length; };
  for (const special of ['<unk>', '<s>', '</s>']) add(special);
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  add(SPACE);
  for (const ch of 'abcdefghijklmnopqrstuvwxyzHW,.!') add(ch);
  const merges: string[] = [];
  for (const word of WORDS) {
    let prefix = SPACE;
    for (const ch of word) {
      if (vocab[prefix + ch] === undefined) merges.push(`${prefix} ${ch}`);
      add(prefix + ch);
      prefix += ch;
    }
  }
  const addedToken = (content: string) => ({ id: vocab[content], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const metaspace = layout === 'metaspace';
  return {
    vocabSize: Object.keys(vocab).length,
    json: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: ['<unk>', '<s>', '</s>'].map(addedToken),
      normalizer: metaspace ? null : { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPACE }, { type: 'Replace', pattern: { String: ' ' }, content: SPACE }] },
      pre_tokenizer: metaspace ? { type: 'Metaspace', replacement: SPACE, prepend_scheme: 'first', split: false } : null,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }],
        special_tokens: { '<s>': { id: '<s>', ids: [vocab['<s>']], tokens: ['<s>'] } },
      },
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: SPACE }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: {
        type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
        fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges,
      },
    },
  };
}

const scratch = mkdtempSync(join(tmpdir(), 'sentencepiece-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

function load(layout: 'metaspace' | 'normalizer'): { tok: TextTokenizer; hf: Tokenizer } {
  const { json, vocabSize } = sentencePieceJson(layout);
  const path = join(scratch, `${layout}.json`);
  writeFileSync(path, JSON.stringify(json));
  const manifest = {
    dims: { vocab_size: vocabSize + 5 }, // a padded vocabulary, as exported models often have
    tokenizer: { file: 'tokenizer.json', kind: 'sentencepiece', eos_token: '</s>', eos_token_id: 2, eos_token_ids: [2, 0], bos_token_id: 1, bos_token: '<s>', add_bos: true },
  } as unknown as Manifest;
  return { tok: TextTokenizer.load(path, manifest), hf: new Tokenizer(json, { clean_up_tokenization_spaces: false }) };
}

/** The text the engine streams for `ids`: each token's bytes through TextTracker, deltas joined. */
function streamed(tok: TextTokenizer, ids: readonly number[]): string {
  const tracker = new TextTracker((id) => tok.bytes(id), []);
  let text = '';
  for (const id of ids) text += tracker.push(id).delta;
  return text + tracker.flush();
}

for (const layout of ['metaspace', 'normalizer'] as const) {
  describe(`a SentencePiece vocabulary (${layout === 'metaspace' ? 'Metaspace pre-tokenizer' : 'Prepend + Replace normalizer'})`, () => {
    const { tok, hf } = load(layout);
    const id = (token: string) => hf.token_to_id(token)!;

    test('prompts: BOS, then ▁ words and byte-fallback tokens; the served (native) encoder agrees', async () => {
      assert.equal(tok.kind, 'sentencepiece');
      const ids = tok.encodePrompt('Hello world\n');
      assert.deepEqual(ids, [1, id(`${SPACE}Hello`), id(`${SPACE}world`), id('<0x0A>')]);
      assert.deepEqual(await tok.tokenizePrompt('Hello world\n'), ids);
      assert.deepEqual(await tok.tokenizePrompt('the whale 日'), tok.encodePrompt('the whale 日'));
    });

    test('a token\'s bytes and logprobs text: ▁ is a space, <0xNN> the byte NN, specials keep their names', () => {
      assert.deepEqual([...tok.bytes(id(`${SPACE}Hello`))], [...Buffer.from(' Hello')]);
      assert.deepEqual([...tok.bytes(id('<0x0A>'))], [0x0a]);
      assert.deepEqual([...tok.bytes(id('<0xE6>'))], [0xe6]);
      assert.equal(tok.bytes(id('<s>')).length, 0);
      assert.equal(tok.piece(id(`${SPACE}whale`)), ' whale');
      assert.equal(tok.piece(id(SPACE)), ' ');
      assert.equal(tok.piece(id('<0x0A>')), '\n');
      assert.equal(tok.piece(id('<0x41>')), 'A');
      assert.equal(tok.piece(id('<0xE6>')), 'bytes:\\xe6');
      assert.equal(tok.piece(id('</s>')), '</s>');
      assert.equal(tok.maxTokenBytes, Math.max(...WORDS.map((w) => w.length + 1), '<unk>'.length));
      assert.deepEqual(tok.eosIds, [2, 0]);
      assert.ok(tok.isEos(2) && tok.isEos(0) && !tok.isEos(1));
    });

    test('streamed deltas concatenate to decode() of all ids, which is the tokenizer\'s decode keeping the leading space', () => {
      const rng = new Random(11);
      const texts = ['Hello world\n', 'the whale rose from the sea.', '日本語 and 🐋, naïve', 'the\n\n  whale', 'xyz'];
      const sequences = [
        ...texts.map((t) => tok.encode(t)),
        ...Array.from({ length: 100 }, () => Array.from({ length: 1 + Math.floor(rng.next() * 30) }, () => Math.floor(rng.next() * tok.vocabSize))),
      ];
      for (const ids of sequences) {
        const text = streamed(tok, ids);
        assert.equal(text, tok.decode(ids), JSON.stringify(ids));
        // Hugging Face's decoder strips the one space Metaspace put before a whole text
        const reference = hf.decode(ids, { skip_special_tokens: true });
        assert.equal(reference, text.startsWith(' ') ? text.slice(1) : text, JSON.stringify(ids));
      }
      for (const text of texts) assert.equal(streamed(tok, tok.encode(text)), ` ${text}`, 'a prompt\'s own tokens stream back to it, after the space SentencePiece puts first');
      // a generated continuation keeps its word boundary: "Hello" + " world"
      assert.equal(streamed(tok, [id(`${SPACE}world`)]), ' world');
    });

    test('minPromptTokens is a lower bound (bytes over the longest token, specials one each), never above the real count', async () => {
      const texts = [
        '', ' ', 'Hello', 'Hello world, the whale rose from the sea!', '日本語のテキスト 🙂 naïve café', '<s>Hello</s> the<unk>', ' '.repeat(3000),
        `${SPACE}${SPACE}${SPACE}Hello${SPACE}world`, 'whalewhalewhale'.repeat(100), '\n\n\t x\r\n', '🙂'.repeat(300), 'e\u0301'.repeat(50),
      ];
      for (const text of texts) {
        const ids = await tok.tokenizePrompt(text);
        const least = tok.minPromptTokens(text);
        assert.ok(least <= ids.length, `lower bound ${least} <= ${ids.length} for ${JSON.stringify(text.slice(0, 30))}`);
        if (text.length > 1000) assert.ok(least >= ids.length / (tok.maxTokenBytes + 1), `a useful bound for ${JSON.stringify(text.slice(0, 20))}: ${least} of ${ids.length}`);
      }
    });
  });
}
