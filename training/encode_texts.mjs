// Encodes texts with a package's tokenizer.json through the `tokenizers` package, the library the server
// encodes prompts with (src/model/tokenizer.ts), so that training sees exactly the ids a served prompt gets.
//
//   node training/encode_texts.mjs TOKENIZER_JSON IN_JSONL OUT_JSONL
//
// IN_JSONL: one {"text": ...} per line; OUT_JSONL: one JSON list of ids per line, in the same order. Like the
// server, no special tokens are added (add_special_tokens false); the caller prepends BOS where the package has one.
import { createReadStream, createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { Tokenizer } from 'tokenizers';

const [tokenizerPath, inPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error('usage: node training/encode_texts.mjs TOKENIZER_JSON IN_JSONL OUT_JSONL');
  process.exit(2);
}
const tokenizer = Tokenizer.fromFile(tokenizerPath);
const out = createWriteStream(outPath);
const BATCH = 64;
let batch = [];

async function flush() {
  if (batch.length === 0) return;
  const encodings = await tokenizer.encodeBatch(batch, { addSpecialTokens: false });
  const text = encodings.map((e) => JSON.stringify(e.getIds())).join('\n') + '\n';
  batch = [];
  if (!out.write(text)) await new Promise((resolve) => out.once('drain', resolve));
}

for await (const line of createInterface({ input: createReadStream(inPath, 'utf8'), crlfDelay: Infinity })) {
  if (line.trim() === '') continue;
  batch.push(JSON.parse(line).text);
  if (batch.length >= BATCH) await flush();
}
await flush();
await new Promise((resolve, reject) => out.end((error) => (error ? reject(error) : resolve())));
