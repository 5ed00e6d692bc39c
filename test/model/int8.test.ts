/**
 * Int8 decoders (training/onnx_int8.py), written by `model:import --dtype int8` from the Hugging Face fixture
 * checkpoints and by `model:quantize --dtype int8` from the shipped default package, served through the HTTP API beside
 * their float32 packages. Every product with a weight matrix must have become a DynamicQuantizeMatMul (the embedding
 * table, which the lookup reads, is the only float32 matrix left), and the echo logprobs of the same prompt must stay
 * close to float32's. The fixtures' random weights at tiny widths round coarsely (max |Δ| about 0.2-0.26), so they get
 * a loose bound; the trained default package must stay within 0.08 with the same most likely token at 49 positions in
 * 50. Weights over the full int8 range overflow ONNX Runtime's AVX2 16-bit pair sums: they put the default package 4x
 * further off (0.15, the top token changed at 4-8 % of positions), past its bound.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { complete, MODEL_DIR, startApp } from '../helpers/app.js';
import { PYTHON, runPython } from '../training/python.js';

const PROMPT = 'The whale rose from the sea, and the crew pulled hard at the oars until the ship was far behind.';
const FIXTURE_BOUND = { maxDifference: 0.35, minAgreement: 0.9 };
const DEFAULT_PACKAGE_BOUND = { maxDifference: 0.08, minAgreement: 0.98 };
const scratch = mkdtempSync(join(tmpdir(), 'chameleon-int8-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

function run(script: string, args: string[]): void {
  const done = spawnSync(PYTHON, [script, ...args], { encoding: 'utf8', timeout: 170_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  assert.equal(done.status, 0, `${script} ${args.join(' ')}: ${done.stderr}`);
}

before(() => {
  runPython(['test/fixtures/hf/checkpoints.py', join(scratch, 'hf')]);
  for (const variant of ['llama', 'qwen2']) {
    run('training/hf_import.py', [join(scratch, 'hf', variant), join(scratch, 'f32', variant)]);
    run('training/hf_import.py', [join(scratch, 'hf', variant), join(scratch, 'int8', variant), '--dtype', 'int8']);
  }
  run('training/quantize_package.py', [MODEL_DIR, join(scratch, 'int8', 'default'), '--dtype', 'int8']);
});

/** Op types of the decoder's nodes, and the float32 initializers with two or more dimensions (weight matrices). */
function decoderOps(dir: string): { ops: Record<string, number>; floatMatrices: string[] } {
  const script = [
    'import collections, json, sys, onnx',
    'm = onnx.load(sys.argv[1])',
    'ops = collections.Counter(n.op_type for n in m.graph.node)',
    'mats = [t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]',
    'print(json.dumps({"ops": ops, "floatMatrices": mats}))',
  ].join('\n');
  return JSON.parse(runPython(['-c', script, join(dir, 'decoder.onnx')]));
}

/** Echo logprobs of PROMPT's tokens and the most likely token at each position, served from a package. */
async function echo(dir: string, body: Record<string, unknown> = {}): Promise<{ logprobs: number[]; top: string[] }> {
  const app = await startApp({ modelDir: dir, maxBatchSize: 4, maxWaitMs: 0 });
  try {
    const res = await complete(app, { prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 1, ...body });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const logprobs = res.body.choices[0].logprobs as { token_logprobs: Array<number | null>; top_logprobs: Array<Record<string, number> | null> };
    const positions = logprobs.token_logprobs.map((lp, i) => ({ lp, top: logprobs.top_logprobs[i] })).filter((p) => p.lp !== null && p.top !== null);
    return { logprobs: positions.map((p) => p.lp as number), top: positions.map((p) => Object.keys(p.top as object)[0]) };
  } finally {
    await app.close();
  }
}

async function assertClose(float32: string, int8: string, bound: typeof FIXTURE_BOUND, body: Record<string, unknown> = {}): Promise<void> {
  const [reference, quantized] = [await echo(float32, body), await echo(int8, body)];
  assert.equal(quantized.logprobs.length, reference.logprobs.length);
  const difference = Math.max(...reference.logprobs.map((lp, i) => Math.abs(lp - quantized.logprobs[i])));
  const agreement = reference.top.filter((token, i) => token === quantized.top[i]).length / reference.top.length;
  assert.ok(difference <= bound.maxDifference, `${int8}: max |Δ logprob| ${difference.toFixed(3)} > ${bound.maxDifference}`);
  assert.ok(agreement >= bound.minAgreement, `${int8}: most likely token agrees at ${(agreement * 100).toFixed(0)} % of positions`);
}

test('an int8 import quantizes every weight product and keeps only the embedding table in float32', () => {
  for (const variant of ['llama', 'qwen2']) {
    const { ops, floatMatrices } = decoderOps(join(scratch, 'int8', variant));
    assert.ok((ops.DynamicQuantizeMatMul ?? 0) >= 15, `${variant}: ${JSON.stringify(ops)}`);
    assert.equal(floatMatrices.length, 1, `${variant}: float32 matrices left: ${floatMatrices.join(', ')}`);
  }
});

test('a served int8 Llama and Qwen2 import give float32\'s echo logprobs within a loose bound', async () => {
  for (const variant of ['llama', 'qwen2']) await assertClose(join(scratch, 'f32', variant), join(scratch, 'int8', variant), FIXTURE_BOUND);
});

test('model:quantize of the default package serves adapted modes close to float32', async () => {
  for (const mode of ['static', 'batch']) {
    await assertClose(MODEL_DIR, join(scratch, 'int8', 'default'), DEFAULT_PACKAGE_BOUND, { adaptation: mode });
  }
});
