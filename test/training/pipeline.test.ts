import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { loadManifest } from '../../src/model/manifest.js';
import { replayEquivalence } from '../model/equivalence.js';
import { runPython } from './python.js';

const scratch = mkdtempSync(join(tmpdir(), 'chameleon-pipeline-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

test('the tiny configuration of the training pipeline builds a servable package end to end', { timeout: 240_000 }, () => {
  const out = join(scratch, 'package');
  const log = runPython(['training/build.py', '--config', 'training/configs/tiny.json', '--out', out, '--work', join(scratch, 'work')]);
  for (const stage of ['data', 'tokenizer', 'encode', 'pretrain', 'cache', 'static', 'hypernet', 'library', 'masks', 'evaluate', 'export']) {
    assert.match(log, new RegExp(`stage ${stage}: [0-9.]+ s`), `stage ${stage} ran`);
  }
  const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
  for (const file of Object.values(manifest.files) as string[]) {
    assert.ok(existsSync(join(out, file)), `${file} exists`);
  }
  const embeddingBytes = statSync(join(out, manifest.tensors.embeddings.file)).size;
  assert.equal(embeddingBytes, manifest.dims.vocab_size * manifest.dims.d_model * 4);

  const report = JSON.parse(readFileSync(join(out, 'eval.json'), 'utf8'));
  for (const method of ['base', 'static', 'chameleon_windows', 'chameleon_oracle', 'chameleon_request', 'library', 'library_weighted', 'masks']) {
    const row = report.validation[method];
    assert.ok(Number.isFinite(row.M.overall) && row.M.overall > 1, `${method} has an M perplexity`);
    assert.ok(Number.isFinite(row.P.overall) && row.P.overall > 1, `${method} has a P perplexity`);
  }
  assert.ok(report.validation.static.M.overall < report.validation.base.M.overall, 'static LoRA trained on M lowers M perplexity');
  assert.equal(report.test, undefined, 'a build scores test only when asked (--final)');
  for (const prompt of ['16', '32']) {
    assert.ok(Number.isFinite(report.continuation.validation[prompt].chameleon_windows.overall), `continuation at ${prompt} tokens`);
  }
  assert.equal(typeof report.target.ratio, 'number');
  for (const method of ['library', 'library_weighted', 'masks']) {
    assert.ok(Number.isFinite(report.continuation.validation['32'][method].overall), `${method} in the continuation table`);
  }
  for (const n of [8, 32, 128]) assert.ok(Number.isFinite(report.examples.validation[`${n} examples`].overall), `adapter from ${n} examples`);
  for (const kind of ['static', 'hypernet', 'library', 'masks']) assert.ok(report.storage_bytes[kind] > 0, `${kind} storage`);
  // the selector temperatures were chosen on validation and shipped with the library and masks
  assert.equal(manifest.library.temperature, report.selector_temperatures.chosen.library_weighted);
  assert.equal(manifest.masks.temperature, report.selector_temperatures.chosen.masks);
  assert.equal(manifest.hypernet.rank, 2 * manifest.lora.rank, 'the tiny configuration trains Chameleon on top of the static LoRA');
  // the gate ships its threshold, its shrinkage prior and one centroid per training domain, which the service's manifest check accepts
  assert.equal(manifest.hypernet.gate.min_similarity, 0.6);
  assert.equal(manifest.hypernet.gate.prior_tokens, 64);
  assert.deepEqual(report.gate, { min_similarity: 0.6, prior_tokens: 64 }, 'the evaluation scored the gate the package ships');
  assert.deepEqual(manifest.tensors.gate_centroids.shape, [manifest.hypernet.gate.names.length, manifest.dims.d_model]);
  assert.equal(loadManifest(out).manifest.hypernet!.gate?.names.length, manifest.hypernet.gate.names.length);
});

test('the tiny package passes the ONNX Runtime vs PyTorch equivalence check', async () => {
  const differences = await replayEquivalence(join(scratch, 'package'));
  assert.ok(differences.length >= 5, 'chunked prefill runs and three decode steps');
  for (const difference of differences) assert.ok(difference < 1e-4, `max |Δlogit| = ${difference}`);
});

test('a rerun resumes: every finished stage is skipped', { timeout: 120_000 }, () => {
  const log = runPython(['training/build.py', '--config', 'training/configs/tiny.json', '--out', join(scratch, 'package'), '--work', join(scratch, 'work')]);
  assert.match(log, /stage pretrain: done already/);
  assert.match(log, /stage export: done already/);
});
