/**
 * The server on packages that npm run model:import writes from the Hugging Face fixture checkpoints
 * (test/fixtures/hf/checkpoints.py: GPT-2 with and without the key prefix, Llama with GQA and llama3 rope in two BF16
 * shards, Llama with biases and an explicit head_dim, Qwen2 without BOS, Mistral with a SentencePiece tokenizer):
 * each is base-only, served with adaptation none. The prompt's echo logprobs equal the log-softmax of the float64
 * reference forward pass (test/fixtures/hf/reference.py, straight from the HF-layout weights) for the ids the server
 * tokenised, a greedy completion starts with the reference's most likely token, and the streamed text is decode() of
 * the generated ids.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL, sseData, startApp } from '../helpers/app.js';
import { PYTHON, runPython } from '../training/python.js';

const VARIANTS = ['gpt2', 'gpt2-bare', 'llama', 'llama-bias', 'qwen2', 'mistral'];
const PROMPT = 'The whale rose from the sea, and the crew pulled hard at the oars.';
const scratch = mkdtempSync(join(tmpdir(), 'chameleon-imported-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

before(() => {
  runPython(['test/fixtures/hf/checkpoints.py', join(scratch, 'hf')]);
  for (const variant of VARIANTS) {
    const done = spawnSync(PYTHON, ['training/hf_import.py', join(scratch, 'hf', variant), join(scratch, 'pkg', variant)], {
      encoding: 'utf8', timeout: 170_000, env: { ...process.env, OMP_NUM_THREADS: '2' },
    });
    assert.equal(done.status, 0, `${variant}: ${done.stderr}`);
  }
});

/** log-softmax of each row of the reference's float64 logits [T, V]. */
function referenceLogSoftmax(hf: string, ids: number[]): Float64Array[] {
  const out = JSON.parse(runPython(['test/fixtures/hf/reference.py', hf, '--ids', JSON.stringify([ids])])) as { logits: Array<{ shape: [number, number]; data_base64: string }> };
  const [{ shape: [T, V], data_base64: data }] = out.logits;
  const bytes = Buffer.from(data, 'base64');
  const logits = new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  return Array.from({ length: T }, (_, t) => {
    const row = logits.subarray(t * V, (t + 1) * V);
    const top = Math.max(...row);
    const lse = top + Math.log(row.reduce((sum, x) => sum + Math.exp(x - top), 0));
    return row.map((x) => x - lse);
  });
}

for (const variant of VARIANTS) {
  describe(`imported ${variant}`, () => {
    const dir = () => join(scratch, 'pkg', variant);
    const hf = () => join(scratch, 'hf', variant);

    test('echo logprobs equal the float64 reference\'s log-softmax; a greedy completion starts with its most likely token', async () => {
      const pkg = ModelPackage.open(dir());
      assert.equal(pkg.adaptive, null, 'model:import writes a base-only package');
      const tok = pkg.tokenizer;
      const ids = await tok.tokenizePrompt(PROMPT);
      const manifest = JSON.parse(readFileSync(join(dir(), 'manifest.json'), 'utf8'));
      assert.equal(ids[0] === manifest.tokenizer.bos_token_id, manifest.tokenizer.add_bos, 'BOS first exactly when the package adds it');
      const expected = referenceLogSoftmax(hf(), ids);
      const app = await startApp({ modelDir: dir(), maxBatchSize: 4, maxWaitMs: 0 });
      try {
        const models = (await app.inject({ url: '/v1/models' })).json();
        assert.deepEqual(models.data[0].adaptation_modes, ['none']);
        assert.equal(models.data[0].max_model_len, Math.min(manifest.dims.context, 4096));

        const echo = await complete(app, { prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 0 });
        assert.equal(echo.status, 200, JSON.stringify(echo.body));
        assert.equal(echo.body.chameleon.mode, 'none');
        assert.equal(echo.body.usage.prompt_tokens, tok.textTokenCount(ids));
        // the prompt's tokens after the first (BOS not reported; without BOS the first has no logprob)
        const got = (echo.body.choices[0].logprobs.token_logprobs as Array<number | null>).filter((v): v is number => v !== null);
        assert.equal(got.length, ids.length - 1);
        let max = 0;
        got.forEach((lp, j) => { max = Math.max(max, Math.abs(lp - expected[j][ids[j + 1]])); });
        assert.ok(max <= 1e-4, `${variant}: max |Δ logprob| = ${max}`);
        // each echoed token's text_offset points at its own text in the prompt (a SentencePiece tokenizer's first
        // token carries a space the prompt does not have, which takes no character)
        const { tokens, text_offset: offsets } = echo.body.choices[0].logprobs as { tokens: string[]; text_offset: number[] };
        assert.equal(offsets[0], 0);
        tokens.forEach((token, i) => {
          if (i > 0) assert.ok(PROMPT.slice(offsets[i]).startsWith(token), `${variant}: token ${i} ${JSON.stringify(token)} at ${offsets[i]}`);
        });

        const greedy = await complete(app, { prompt: PROMPT, max_tokens: 5, temperature: 0, logprobs: 1, ignore_eos: true });
        assert.equal(greedy.status, 200, JSON.stringify(greedy.body));
        assert.equal(greedy.body.usage.completion_tokens, 5);
        const last = expected[ids.length - 1];
        const best = last.indexOf(Math.max(...last));
        assert.equal(greedy.body.choices[0].logprobs.tokens[0], tok.piece(best), 'the first generated token is the reference\'s argmax');
        assert.ok(Math.abs(greedy.body.choices[0].logprobs.token_logprobs[0] - last[best]) <= 1e-4);

        // streamed, the same text; and the text is the generated tokens' bytes
        const streamed = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: PROMPT, max_tokens: 5, temperature: 0, ignore_eos: true, stream: true } });
        const text = sseData(streamed.body).filter((d): d is any => typeof d === 'object' && d !== null).map((d) => d.choices[0]?.text ?? '').join('');
        assert.equal(text, greedy.body.choices[0].text);

        const refused = await complete(app, { prompt: PROMPT, max_tokens: 1, adaptation: 'batch' });
        assert.equal(refused.status, 400);
        assert.match(refused.body.error.message, /npm run model:adapt/);
      } finally {
        await app.close();
      }
    });

    test('the tokenizer: the lower bound never exceeds the real count; decode() of any ids is their streamed bytes', async () => {
      const tok = ModelPackage.open(dir()).tokenizer;
      const texts = ['', ' ', PROMPT, '日本語のテキスト 🙂 naïve café', ' '.repeat(2000), '-'.repeat(1000), "it's we're they'll", '\n\n\t  x\r\n', 'a,b;c.d', 'e\u0301'.repeat(40), '1234567890'.repeat(20)];
      for (const text of texts) {
        const ids = await tok.tokenizePrompt(text);
        assert.ok(tok.minPromptTokens(text) <= ids.length, `${variant}: lower bound ${tok.minPromptTokens(text)} <= ${ids.length} for ${JSON.stringify(text.slice(0, 20))}`);
      }
      const { TextTracker } = await import('../../src/engine/stopping.js');
      for (const text of texts.slice(2)) {
        const ids = tok.encode(text);
        const tracker = new TextTracker((id) => tok.bytes(id), []);
        const streamed = ids.map((id) => tracker.push(id).delta).join('') + tracker.flush();
        assert.equal(streamed, tok.decode(ids));
        // (SentencePiece puts a space first; Qwen2's normalizer composes e + combining accent into é)
        assert.ok([text, text.normalize('NFC')].some((t) => t.trimStart() === streamed.trimStart()), `${variant}: ${JSON.stringify(text.slice(0, 20))}'s tokens stream back to it, got ${JSON.stringify(streamed.slice(0, 20))}`);
      }
    });
  });
}
