import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { KvSlots } from '../../src/engine/kv-slots.js';
import { cacheInputNames } from '../../src/model/manifest.js';

interface EncodedArray {
  shape: number[];
  data_base64: string;
}

interface FixtureStep {
  input_ids: number[][];
  position_ids: number[][];
  past_length: number[];
  new_tokens: number[];
  cluster_index: number[];
  lora_scale: number[];
  logits_index: number[];
}

interface EquivalenceFixture {
  cache_capacity: number;
  steps: FixtureStep[];
  lora_a: EncodedArray;
  lora_b: EncodedArray;
  expected_logits: EncodedArray[];
}

function decode(array: EncodedArray): ort.Tensor {
  const bytes = Buffer.from(array.data_base64, 'base64');
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new ort.Tensor('float32', Float32Array.from(data), array.shape);
}

function int64(rows: number[][] | number[]): ort.Tensor {
  const flat = (rows as (number | number[])[]).flat() as number[];
  const shape = Array.isArray(rows[0]) ? [rows.length, (rows[0] as number[]).length] : [rows.length];
  return new ort.Tensor('int64', BigInt64Array.from(flat.map(BigInt)), shape);
}

/**
 * Replays the PyTorch fixture of a model package through ONNX Runtime the way the server runs it: every row owns a
 * slot of a KvSlots cache, chunked prefills and decode steps read the slots in place, and each run's new keys and
 * values are written back into them. Returns the largest absolute logit difference of each run.
 */
export async function replayEquivalence(packageDir: string): Promise<number[]> {
  const manifest = JSON.parse(await readFile(join(packageDir, 'manifest.json'), 'utf8'));
  const fixture: EquivalenceFixture = JSON.parse(await readFile(join(packageDir, manifest.files.equivalence), 'utf8'));
  const session = await ort.InferenceSession.create(join(packageDir, manifest.files.decoder), { intraOpNumThreads: 1 });
  const { n_layer: layers, head_dim: headDim } = manifest.dims;
  const heads: number = manifest.dims.n_kv_head ?? manifest.dims.n_head;
  const rows = fixture.steps[0]!.input_ids.length;
  const cache = new KvSlots({ layers, heads, headDim, capacity: fixture.cache_capacity, slots: rows });
  const names = cacheInputNames(layers);
  const loraA = decode(fixture.lora_a);
  const loraB = decode(fixture.lora_b);
  const differences: number[] = [];
  try {
    for (const [i, step] of fixture.steps.entries()) {
      const feeds: Record<string, ort.Tensor> = {
        input_ids: int64(step.input_ids),
        position_ids: int64(step.position_ids),
        past_length: int64(step.past_length),
        lora_a: loraA,
        lora_b: loraB,
        cluster_index: int64(step.cluster_index),
        lora_scale: new ort.Tensor('float32', Float32Array.from(step.lora_scale), [step.lora_scale.length]),
        logits_index: int64(step.logits_index),
      };
      cache.reserve(Math.max(...step.past_length.map((past, b) => past + step.new_tokens[b]!)));
      cache.view(0, rows).forEach((view, j) => {
        feeds[names[j]!] = new ort.Tensor('float32', view, [rows, heads, cache.stride, headDim]);
      });
      const out = await session.run(feeds);
      const expected = decode(fixture.expected_logits[i]!);
      const actual = out.logits!;
      if (actual.dims.join() !== expected.dims.join()) {
        throw new Error(`step ${i}: logits shape ${actual.dims} != expected ${expected.dims}`);
      }
      const a = actual.data as Float32Array;
      const e = expected.data as Float32Array;
      let max = 0;
      for (let j = 0; j < a.length; j++) max = Math.max(max, Math.abs(a[j]! - e[j]!));
      differences.push(max);
      const seq = step.input_ids[0]!.length;
      cache.write(0, out.present_keys!.data as Float32Array, out.present_values!.data as Float32Array, seq, step.past_length, step.new_tokens);
    }
  } finally {
    await session.release();
  }
  return differences;
}
