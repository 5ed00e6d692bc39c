/**
 * Bring your own model, end to end: a tiny Llama-family checkpoint in the Hugging Face layout (random weights) is
 * imported as a base-only package (`training/hf_import.py`), adapted on the default build's npm corpora with a small
 * budget (`training/adapt_package.py`: static LoRA, hypernetwork on top, gate, library and masks), and served:
 * batch and per-request completions and an echo score come back through HTTP.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { complete, startApp } from '../helpers/app.js';
import { loadManifest } from '../../src/model/manifest.js';
import { runPython } from './python.js';

const scratch = mkdtempSync(join(tmpdir(), 'chameleon-import-adapt-'));
const pkg = join(scratch, 'package');
const corpus = join(scratch, 'corpus');
const work = join(scratch, 'work');
const DOMAINS = ['email', 'license', 'moby_dick', 'sotu'];
// a small budget: the whole adaptation of the tiny checkpoint takes well under a minute on two cores
const ADAPT = ['training/adapt_package.py', '--base', pkg, '--corpus', corpus, '--work', work, '--baselines',
  '--budget-tokens', '8000', '--eval-tokens', '2000', '--steps', '60'];

let importedDecoder = '';
let adaptLog = '';

const digest = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'));

before(() => {
  runPython(['test/fixtures/hf/checkpoints.py', join(scratch, 'hf'), '--variants', 'llama']);
  runPython(['training/hf_import.py', join(scratch, 'hf', 'llama'), pkg]);
  importedDecoder = digest(join(pkg, 'decoder.onnx'));
  runPython(['training/adapt_package.py', '--write-npm-corpus', corpus, '--chars-per-domain', '40000']);
});
after(() => rmSync(scratch, { recursive: true, force: true }));

describe('model:import then model:adapt on a tiny Llama checkpoint', () => {
  test('the adaptation trains every stage and writes a package the manifest checks accept', { timeout: 170_000 }, () => {
    const base = readJson(join(pkg, 'manifest.json'));
    assert.equal(base.hypernet, undefined, 'model:import writes a base-only package');
    adaptLog = runPython(ADAPT);
    for (const stage of ['corpus', 'cache', 'static', 'hypernet', 'library', 'masks', 'choose', 'evaluate', 'export']) {
      assert.match(adaptLog, new RegExp(`stage ${stage}: [0-9.]+ s`), `stage ${stage} ran`);
    }
    const manifest = readJson(join(pkg, 'manifest.json'));
    for (const file of Object.values(manifest.files) as string[]) assert.ok(existsSync(join(pkg, file)), `${file} exists`);
    assert.equal(digest(join(pkg, 'decoder.onnx')), importedDecoder, 'the decoder is left as imported');
    assert.equal(manifest.sha256.decoder, importedDecoder);
    const { vocab_size: V, d_model: D } = manifest.dims;
    assert.deepEqual(manifest.tensors.static_lora_a.shape, [1, manifest.lora.rank, D]);
    assert.deepEqual(manifest.tensors.static_lora_b.shape, [1, V, manifest.lora.rank]);
    assert.equal(statSync(join(pkg, 'static_lora_b.bin')).size, V * manifest.lora.rank * 4);
    assert.equal(manifest.hypernet.rank, 2 * manifest.lora.rank, 'Chameleon on top of the static LoRA');
    assert.equal(manifest.hypernet.on_static, true);
    assert.deepEqual(manifest.library.names, DOMAINS);
    assert.deepEqual(manifest.masks.names, DOMAINS);
    // the gate's threshold and prior were chosen on validation; its centroids are one per corpus domain
    const gate = manifest.hypernet.gate;
    if (gate !== undefined) {
      assert.deepEqual(gate.names, DOMAINS);
      assert.deepEqual(manifest.tensors.gate_centroids.shape, [DOMAINS.length, D]);
    }
    const loaded = loadManifest(pkg).manifest;
    assert.equal(loaded.hypernet?.rank, manifest.hypernet.rank);

    const report = readJson(join(pkg, 'eval.json'));
    assert.deepEqual(report.gate, gate === undefined ? null : { min_similarity: gate.min_similarity, prior_tokens: gate.prior_tokens ?? 0 },
      'the evaluation scored the gate the package ships');
    assert.equal(report.test, undefined, 'test is scored only with --final');
    for (const method of ['base', 'static', 'chameleon_windows', 'chameleon_request', 'library', 'library_weighted', 'masks']) {
      assert.ok(Number.isFinite(report.validation[method].M.overall), `${method} has a validation perplexity`);
    }
    assert.ok(report.validation.static.M.overall < report.validation.base.M.overall, 'the static LoRA trained on the corpus lowers its perplexity');
    assert.ok(Number.isFinite(report.continuation.validation['64'].chameleon_windows.overall));
    assert.equal(manifest.library.temperature, report.selector_temperatures.chosen.library_weighted);
    assert.ok(statSync(join(pkg, 'eval.png')).size > 1000, 'eval.png is written');
  });

  test('a rerun resumes: every trained stage is skipped', { timeout: 120_000 }, () => {
    const log = runPython(ADAPT);
    for (const stage of ['corpus', 'cache', 'static', 'hypernet', 'library', 'masks', 'choose', 'evaluate']) {
      assert.match(log, new RegExp(`stage ${stage}: done already`), `stage ${stage} skipped`);
    }
  });

  describe('the adapted package is served', () => {
    let app: FastifyInstance;
    before(async () => {
      app = await startApp({ modelDir: pkg, maxWaitMs: 200, clusterInFlight: false, idleDispatch: false });
    });
    after(async () => {
      await app?.close();
    });

    test('a batch completion, a request completion and an echo score come back through HTTP', async () => {
      const prompts = ['The President said that the Congress', 'Permission is hereby granted, free of charge,', 'Call me Ishmael. Some years ago'];
      const batch = await Promise.all(prompts.map((prompt) => complete(app, { prompt, max_tokens: 4, temperature: 0, adaptation: 'batch' })));
      for (const res of batch) {
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.equal(res.body.chameleon.mode, 'batch');
        assert.ok(res.body.usage.completion_tokens >= 1);
      }
      const single = await complete(app, { prompt: prompts[0], max_tokens: 4, temperature: 0, adaptation: 'request' });
      assert.equal(single.status, 200, JSON.stringify(single.body));
      assert.equal(single.body.chameleon.mode, 'request');

      const score = async (adaptation: string) => {
        const res = await complete(app, { prompt: prompts[1], max_tokens: 0, echo: true, logprobs: 0, adaptation });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        return res.body.choices[0].logprobs.token_logprobs as Array<number | null>;
      };
      const none = await score('none');
      const adapted = await score('static');
      assert.ok(none.length > 3);
      assert.ok(adapted.slice(1).every((lp) => typeof lp === 'number' && Number.isFinite(lp) && lp <= 0), 'every scored token has a log-probability');
      assert.ok(adapted.slice(1).some((lp, i) => Math.abs((lp as number) - (none[i + 1] as number)) > 1e-4), 'the static LoRA changes the scores');
    });
  });
});
