/**
 * The baseline: the same batch shapes as the service (B prompts, one hypernetwork run for K contexts, a
 * left-padded prefill, then greedy KV-cache decode steps) driven straight through onnxruntime-node, with no
 * HTTP, queue, worker thread, sampling or text handling.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

export interface RawShape {
  batch: number;
  /** Prompt token ids per row (BOS included), left-padded by the loop. */
  prompts: number[][];
  newTokens: number;
  clusters: number;
}

export class RawLoop {
  private constructor(
    private readonly decoder: ort.InferenceSession,
    private readonly hypernet: ort.InferenceSession,
    private readonly dims: { vocab_size: number; d_model: number; n_layer: number; n_head: number; head_dim: number },
    private readonly rank: number,
  ) {}

  /** Same session options as the service (threads, spinning). */
  static async open(modelDir: string, threads: number, spinning: boolean): Promise<RawLoop> {
    const manifest = JSON.parse(readFileSync(join(modelDir, 'manifest.json'), 'utf8'));
    const spin = spinning ? '1' : '0';
    const options: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      executionProviders: ['cpu'],
      extra: { session: { intra_op: { allow_spinning: spin }, inter_op: { allow_spinning: spin } } },
      ...(threads > 0 ? { intraOpNumThreads: threads } : {}),
    };
    const decoder = await ort.InferenceSession.create(join(modelDir, manifest.files.decoder), options);
    const hypernet = await ort.InferenceSession.create(join(modelDir, manifest.files.hypernet), options);
    return new RawLoop(decoder, hypernet, manifest.dims, manifest.lora.rank);
  }

  /** One batch end to end; returns the generated token count. */
  async run(shape: RawShape): Promise<number> {
    const { vocab_size: V, d_model: D, n_layer: L, n_head: H, head_dim: HD } = this.dims;
    const R = this.rank;
    const B = shape.batch;
    const K = shape.clusters;
    const contexts = new Float32Array(K * D).map((_, i) => Math.sin(i));
    const h = await this.hypernet.run({ context: new ort.Tensor('float32', contexts, [K, D]) });
    const slots = 2 + K;
    const a = new Float32Array(slots * R * D);
    const b = new Float32Array(slots * V * R);
    a.set(h.lora_a.data as Float32Array, 2 * R * D);
    b.set(h.lora_b.data as Float32Array, 2 * V * R);
    const loraA = new ort.Tensor('float32', a, [slots, R, D]);
    const loraB = new ort.Tensor('float32', b, [slots, V, R]);
    const clusterIndex = new ort.Tensor('int64', BigInt64Array.from({ length: B }, (_, i) => BigInt(2 + (i % K))), [B]);

    const T = Math.max(...shape.prompts.map((p) => p.length));
    const ids = new BigInt64Array(B * T);
    const pos = new BigInt64Array(B * T);
    const mask = new BigInt64Array(B * T);
    const pads = shape.prompts.map((p) => T - p.length);
    shape.prompts.forEach((p, r) => p.forEach((id, j) => {
      ids[r * T + pads[r] + j] = BigInt(id);
      pos[r * T + pads[r] + j] = BigInt(j);
      mask[r * T + pads[r] + j] = 1n;
    }));
    const empty = () => new ort.Tensor('float32', new Float32Array(0), [L, B, H, 0, HD]);
    let out = await this.decoder.run({
      input_ids: new ort.Tensor('int64', ids, [B, T]), position_ids: new ort.Tensor('int64', pos, [B, T]),
      attention_mask: new ort.Tensor('int64', mask, [B, T]), past_keys: empty(), past_values: empty(),
      lora_a: loraA, lora_b: loraB, cluster_index: clusterIndex,
    });
    const argmaxRows = (logits: Float32Array, seq: number) => Array.from({ length: B }, (_, r) => {
      const base = (r * seq + seq - 1) * V;
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[base + v] > logits[base + best]) best = v;
      return best;
    });
    let next = argmaxRows(out.logits.data as Float32Array, T);
    let total = T;
    const lengths = shape.prompts.map((p) => p.length);
    for (let step = 1; step < shape.newTokens; step++) {
      total++;
      const stepMask = new BigInt64Array(B * total);
      for (let r = 0; r < B; r++) stepMask.fill(1n, r * total + pads[r], (r + 1) * total);
      out = await this.decoder.run({
        input_ids: new ort.Tensor('int64', BigInt64Array.from(next, BigInt), [B, 1]),
        position_ids: new ort.Tensor('int64', BigInt64Array.from(lengths.map((l) => BigInt(l + step - 1))), [B, 1]),
        attention_mask: new ort.Tensor('int64', stepMask, [B, total]),
        past_keys: out.present_keys, past_values: out.present_values,
        lora_a: loraA, lora_b: loraB, cluster_index: clusterIndex,
      });
      next = argmaxRows(out.logits.data as Float32Array, 1);
    }
    return B * shape.newTokens;
  }

  async close(): Promise<void> {
    await Promise.all([this.decoder.release(), this.hypernet.release()]);
  }
}
