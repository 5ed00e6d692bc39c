import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

interface EncodedArray {
  shape: number[];
  data_base64: string;
}

interface EquivalenceFixture {
  steps: { input_ids: number[][]; position_ids: number[][]; attention_mask: number[][]; cluster_index: number[] }[];
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
 * Replays the PyTorch fixture of a model package through ONNX Runtime: a left-padded prefill with past = 0,
 * then KV-cache decode steps that feed back the graph's own present keys/values. Returns the largest
 * absolute logit difference of each run.
 */
export async function replayEquivalence(packageDir: string): Promise<number[]> {
  const manifest = JSON.parse(await readFile(join(packageDir, 'manifest.json'), 'utf8'));
  const fixture: EquivalenceFixture = JSON.parse(await readFile(join(packageDir, manifest.files.equivalence), 'utf8'));
  const session = await ort.InferenceSession.create(join(packageDir, manifest.files.decoder), { intraOpNumThreads: 1 });
  const { n_layer, n_head, head_dim } = manifest.dims;
  const batch = fixture.steps[0]!.input_ids.length;
  const emptyCache = () => new ort.Tensor('float32', new Float32Array(0), [n_layer, batch, n_head, 0, head_dim]);
  let pastKeys: ort.Tensor = emptyCache();
  let pastValues: ort.Tensor = emptyCache();
  const loraA = decode(fixture.lora_a);
  const loraB = decode(fixture.lora_b);
  const differences: number[] = [];
  try {
    for (const [i, step] of fixture.steps.entries()) {
      const out = await session.run({
        input_ids: int64(step.input_ids),
        position_ids: int64(step.position_ids),
        attention_mask: int64(step.attention_mask),
        past_keys: pastKeys,
        past_values: pastValues,
        lora_a: loraA,
        lora_b: loraB,
        cluster_index: int64(step.cluster_index),
      });
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
      pastKeys = out.present_keys!;
      pastValues = out.present_values!;
    }
  } finally {
    await session.release();
  }
  return differences;
}
