import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { cacheInputNames } from '../../src/model/manifest.js';
import { replayEquivalence } from '../model/equivalence.js';
import { PYTHON } from './python.js';

const scratch = mkdtempSync(join(tmpdir(), 'chameleon-hf-import-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
const VARIANTS = ['gpt2', 'gpt2-bare', 'llama', 'llama-bias', 'qwen2', 'mistral'];
type Json = Record<string, any>;
const readJson = (path: string): Json => JSON.parse(readFileSync(path, 'utf8')) as Json;

function python(args: string[]): { status: number | null; stderr: string } {
  const result = spawnSync(PYTHON, args, { encoding: 'utf8', timeout: 170_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  return { status: result.status, stderr: result.stderr };
}

function importCheckpoint(hf: string, out: string, ...options: string[]): { status: number | null; stderr: string } {
  return python(['training/hf_import.py', hf, out, ...options]);
}

before(() => {
  const made = python(['test/fixtures/hf/checkpoints.py', join(scratch, 'hf')]);
  assert.equal(made.status, 0, made.stderr);
  for (const variant of VARIANTS) {
    const done = importCheckpoint(join(scratch, 'hf', variant), join(scratch, 'pkg', variant));
    assert.equal(done.status, 0, `${variant}: ${done.stderr}`);
  }
  const half = importCheckpoint(join(scratch, 'hf', 'gpt2'), join(scratch, 'pkg', 'gpt2-float16'), '--dtype', 'float16');
  assert.equal(half.status, 0, half.stderr);
});

async function maxDifferenceFromReference(packageDir: string, referenceDir: string): Promise<number> {
  const manifest = readJson(join(packageDir, 'manifest.json'));
  const reference = readJson(join(referenceDir, 'reference.json'));
  const session = await ort.InferenceSession.create(join(packageDir, 'decoder.onnx'), { intraOpNumThreads: 1 });
  let max = 0;
  try {
    for (const [s, ids] of (reference.input_ids as number[][]).entries()) {
      const expected = float64Rows(reference.logits[s]);
      const actual = await onnxLogits(session, manifest, ids);
      assert.equal(actual.length, expected.length);
      for (let i = 0; i < actual.length; i++) max = Math.max(max, Math.abs(actual[i]! - expected[i]!));
    }
  } finally {
    await session.release();
  }
  return max;
}

function float64Rows(entry: { shape: number[]; data_base64: string }): Float64Array {
  const bytes = Buffer.from(entry.data_base64, 'base64');
  return new Float64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
}

/** The decoder's logits at every position of one sequence, prefilled as one row over an empty cache slot. */
async function onnxLogits(session: ort.InferenceSession, manifest: Json, ids: number[]): Promise<Float32Array> {
  const { n_layer: layers, n_kv_head: heads, head_dim: headDim, d_model: d, vocab_size: vocab } = manifest.dims;
  const int64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims);
  const feeds: Record<string, ort.Tensor> = {
    input_ids: int64(ids, [1, ids.length]),
    position_ids: int64(ids.map((_, i) => i), [1, ids.length]),
    past_length: int64([0], [1]),
    lora_a: new ort.Tensor('float32', new Float32Array(d), [1, 1, d]),
    lora_b: new ort.Tensor('float32', new Float32Array(vocab), [1, vocab, 1]),
    cluster_index: int64([0], [1]),
    lora_scale: new ort.Tensor('float32', Float32Array.of(1), [1]),
    logits_index: int64(ids.map((_, i) => i), [ids.length]),
  };
  for (const name of cacheInputNames(layers)) feeds[name] = new ort.Tensor('float32', new Float32Array(heads * headDim), [1, heads, 1, headDim]);
  const out = await session.run(feeds);
  return out.logits!.data as Float32Array;
}

for (const variant of VARIANTS) {
  test(`${variant}: the imported decoder's logits equal the float64 reference from the Hugging Face weights, and its chunked slot-cache replay equals PyTorch`, async () => {
    const dir = join(scratch, 'pkg', variant);
    const max = await maxDifferenceFromReference(dir, join(scratch, 'hf', variant));
    assert.ok(max <= 1e-4, `${variant}: max |Δlogit| = ${max}`);
    for (const [step, difference] of (await replayEquivalence(dir)).entries()) {
      assert.ok(difference < 1e-4, `${variant} replay step ${step}: max |Δlogit| = ${difference}`);
    }
  });
}

test('the manifest records the architecture, grouped key/value heads, BOS as the tokenizer adds it, the EOS list and the chat template', () => {
  const m = (variant: string) => readJson(join(scratch, 'pkg', variant, 'manifest.json'));
  const llama = m('llama');
  assert.equal(llama.architecture.family, 'llama');
  assert.equal(llama.architecture.hf_architecture, 'LlamaForCausalLM');
  assert.equal(llama.architecture.rope.scaling, 'llama3');
  assert.equal(llama.architecture.tied_head, false);
  assert.deepEqual([llama.dims.n_head, llama.dims.n_kv_head, llama.dims.head_dim], [4, 2, 16]);
  assert.deepEqual(llama.decoder.inputs.find((s: Json) => s.name === 'past_key_0').shape, ['batch', 2, 'cache', 16]);
  // generation_config.json's list wins over config.json's single id
  assert.deepEqual(llama.tokenizer.eos_token_ids, [397, 405]);
  assert.equal(llama.tokenizer.eos_token, '<|end_of_text|>');
  assert.equal(llama.tokenizer.add_bos, true);
  assert.equal(llama.tokenizer.bos_token_id, 396);
  assert.match(llama.tokenizer.chat_template, /start_header_id/);
  assert.deepEqual(llama.features.exclude_token_ids, [396, 397, 405]);

  const biased = m('llama-bias');
  assert.equal(biased.dims.head_dim * biased.dims.n_head === biased.dims.d_model, false, 'explicit head_dim kept');
  assert.equal(biased.architecture.rope.theta, 50000, 'rope_parameters spelling read');
  assert.deepEqual(biased.tokenizer.eos_token_ids, [397, 404, 405]);

  const qwen = m('qwen2');
  assert.equal(qwen.tokenizer.add_bos, false);
  assert.equal(qwen.architecture.tied_head, true);
  assert.match(qwen.tokenizer.chat_template, /im_start/);

  const mistral = m('mistral');
  assert.equal(mistral.tokenizer.kind, 'sentencepiece');
  assert.equal(mistral.tokenizer.bos_token, '<s>');
  assert.equal(mistral.dims.n_kv_head, 1);
  assert.equal(mistral.dims.context, 1024, 'a sliding window longer than the positions exported is no limit');

  const gpt2 = m('gpt2');
  assert.equal(gpt2.architecture.family, 'gpt2');
  assert.equal(gpt2.tokenizer.add_bos, false);
  assert.equal(gpt2.tokenizer.kind, 'byte_level');
  for (const variant of VARIANTS) {
    const manifest = m(variant);
    assert.equal(manifest.hypernet, undefined, `${variant}: base-only`);
    assert.equal(manifest.tensors.static_lora_a, undefined, `${variant}: base-only`);
  }
});

/** A copy of a fixture checkpoint with some of its JSON files edited (file name -> edit). */
function variantCopy(variant: string, name: string, edits: Record<string, (json: Json) => void>): string {
  const dir = join(scratch, 'edited', name);
  cpSync(join(scratch, 'hf', variant), dir, { recursive: true });
  for (const [file, edit] of Object.entries(edits)) {
    const json = readJson(join(dir, file));
    edit(json);
    writeFileSync(join(dir, file), JSON.stringify(json));
  }
  return dir;
}

test('BOS follows what transformers would add: the tokenizer\'s template, or for Llama tokenizers their add_bos_token flag', () => {
  const bosOf = (hf: string) => {
    const out = join(scratch, 'bos', hf.split('/').at(-1)!);
    const done = importCheckpoint(hf, out);
    assert.equal(done.status, 0, done.stderr);
    const { add_bos: addBos, bos_token_id: bosId } = readJson(join(out, 'manifest.json')).tokenizer;
    return { addBos, bosId };
  };
  // a LlamaTokenizer whose flag says no BOS, although its tokenizer.json template still adds one
  assert.deepEqual(bosOf(variantCopy('mistral', 'no-bos-flag', { 'tokenizer_config.json': (c) => { c.add_bos_token = false; } })),
    { addBos: false, bosId: 1 });
  // a template that adds BOS and EOS (what add_eos_token saves): the BOS is kept, the EOS is not a prompt token
  const bothEnds = variantCopy('mistral', 'bos-and-eos', {
    'tokenizer_config.json': (c) => { delete c.tokenizer_class; },
    'tokenizer.json': (t) => {
      t.post_processor.single.push({ SpecialToken: { id: '</s>', type_id: 0 } });
      t.post_processor.special_tokens['</s>'] = { id: '</s>', ids: [2], tokens: ['</s>'] };
    },
  });
  assert.deepEqual(bosOf(bothEnds), { addBos: true, bosId: 1 });
});

test('checkpoints that cannot be imported are refused with a message naming the problem', () => {
  const refused = (hf: string, pattern: RegExp, ...options: string[]) => {
    const done = importCheckpoint(hf, join(scratch, 'refused'), ...options);
    assert.notEqual(done.status, 0);
    assert.match(done.stderr, pattern);
  };
  const config = (edit: (c: Json) => void) => ({ 'config.json': edit });
  refused(variantCopy('gpt2', 'falcon', config((c) => { c.architectures = ['FalconForCausalLM']; })),
    /architecture FalconForCausalLM is not supported; supported: GPT2LMHeadModel \(gpt2\), LlamaForCausalLM \(llama\), MistralForCausalLM \(mistral\), Qwen2ForCausalLM \(qwen2\)/);
  refused(variantCopy('llama', 'three-layers', config((c) => { c.num_hidden_layers = 3; })), /tensor model\.layers\.2\.self_attn\.q_proj\.weight is missing/);
  refused(variantCopy('gpt2-bare', 'wider', config((c) => { c.n_inner = 192; })), /tensor h\.0\.mlp\.c_fc\.weight has shape \[48, 160\], the config implies \[48, 192\]/);
  refused(variantCopy('mistral', 'windowed', config((c) => { c.sliding_window = 16; })),
    /sliding_window 16 is shorter than the context to export \(1024\).*--context 16/, '--context', '1024');
  refused(variantCopy('llama', 'yarn', config((c) => { c.rope_scaling = { rope_type: 'yarn', factor: 4 }; })), /rope scaling type 'yarn' is not supported/);
  refused(join(scratch, 'hf', 'llama'), /--context 8 is below 16/, '--context', '8');
  const noTokenizer = variantCopy('qwen2', 'no-tokenizer', {});
  rmSync(join(noTokenizer, 'tokenizer.json'));
  refused(noTokenizer, /tokenizer\.json is missing/);
});

test('--dtype float16: the weights take half the bytes and the logits stay within 1e-2 of the float64 reference', async () => {
  const dir = join(scratch, 'pkg', 'gpt2-float16');
  const size = (d: string) => statSync(join(d, 'decoder.onnx')).size;
  assert.ok(size(dir) < 0.6 * size(join(scratch, 'pkg', 'gpt2')), `${size(dir)} bytes against ${size(join(scratch, 'pkg', 'gpt2'))}`);
  assert.equal(readJson(join(dir, 'manifest.json')).architecture.dtype, 'float16');
  const max = await maxDifferenceFromReference(dir, join(scratch, 'hf', 'gpt2'));
  assert.ok(max > 0 && max <= 1e-2, `max |Δlogit| = ${max}`);
});
