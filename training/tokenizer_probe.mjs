// What the service's tokenizer library does with a checkpoint's tokenizer.json: the ids of a probe text with and
// without the tokenizer's own special tokens (so the importer can tell which BOS it adds), and the vocabulary size.
// Usage: node training/tokenizer_probe.mjs TOKENIZER_JSON TEXT
import { readFileSync } from 'node:fs';
import tokenizers from 'tokenizers';

const [path, text] = process.argv.slice(2);
const tokenizer = tokenizers.Tokenizer.fromString(readFileSync(path, 'utf8'));
const plain = await tokenizer.encode(text, null, { addSpecialTokens: false });
const special = await tokenizer.encode(text, null, { addSpecialTokens: true });
process.stdout.write(JSON.stringify({
  plain: plain.getIds(),
  special: special.getIds(),
  vocab_size: tokenizer.getVocabSize(true),
}));
