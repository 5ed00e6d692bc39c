/**
 * The baseline: the decoder driven straight through onnxruntime-node on the service's shapes (slot caches read in
 * place, chunked prefill, one decode run per step), with no HTTP, queue, worker thread, sampling or text handling;
 * and ONNX Runtime's own MatMul throughput on the LM head's shape, the physical limit of this machine.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { KvSlots } from '../src/engine/kv-slots.js';
import { cacheInputNames } from '../src/model/manifest.js';
import { matmulModel } from './matmul-model.js';

interface Dims { vocab_size: number; d_model: number; n_layer: number; n_head: number; n_kv_head?: number; head_dim: number; context: number }

/** A timed run: wall ms and this process's CPU ms (every thread: ONNX Runtime's pool works off the main thread). */
export interface Timing {
  ms: number;
  cpuMs: number;
}

export interface SessionSettings {
  threads: number;
  spinning: boolean;
}

function sessionOptions(settings: SessionSettings): ort.InferenceSession.SessionOptions {
  const spin = settings.spinning ? '1' : '0';
  return {
    graphOptimizationLevel: 'all',
    executionProviders: ['cpu'],
    extra: { session: { intra_op: { allow_spinning: spin }, inter_op: { allow_spinning: spin } } },
    ...(settings.threads > 0 ? { intraOpNumThreads: settings.threads } : {}),
  };
}

async function timeRuns(run: () => Promise<unknown>, minMs = 400): Promise<Timing> {
  for (let i = 0; i < 3; i++) await run();
  let n = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  while (performance.now() - started < minMs || n < 5) {
    await run();
    n++;
  }
  const used = process.cpuUsage(cpu);
  return { ms: (performance.now() - started) / n, cpuMs: (used.user + used.system) / 1000 / n };
}

export class RawLoop {
  private readonly cache: KvSlots;
  private readonly names: string[];
  private readonly loraA: ort.Tensor;
  private readonly loraB: ort.Tensor;

  private constructor(private readonly decoder: ort.InferenceSession, readonly dims: Dims, rank: number, private readonly adapters: number, slots: number, capacity: number) {
    this.cache = new KvSlots({ layers: dims.n_layer, heads: dims.n_kv_head ?? dims.n_head, headDim: dims.head_dim, capacity, slots });
    this.names = cacheInputNames(dims.n_layer);
    this.loraA = new ort.Tensor('float32', new Float32Array(adapters * rank * dims.d_model).fill(0.01), [adapters, rank, dims.d_model]);
    this.loraB = new ort.Tensor('float32', new Float32Array(adapters * dims.vocab_size * rank).fill(0.01), [adapters, dims.vocab_size, rank]);
  }

  /** `capacity`: positions per cache slot (the server's MAX_MODEL_LEN; the package's context when not given). */
  static async open(modelDir: string, settings: SessionSettings, slots: number, capacity?: number): Promise<RawLoop> {
    const manifest = JSON.parse(readFileSync(join(modelDir, 'manifest.json'), 'utf8'));
    const decoder = await ort.InferenceSession.create(join(modelDir, manifest.files.decoder), sessionOptions(settings));
    // what the service stacks for batch rows: three adapters of the hypernetwork's rank (zero, static, a window's);
    // a base-only package has only the zero adapter, of rank 1
    const adaptive = manifest.hypernet !== undefined;
    return new RawLoop(decoder, manifest.dims, adaptive ? manifest.hypernet.rank : 1, adaptive ? 3 : 1, slots, capacity ?? manifest.dims.context);
  }

  /** One decoder run: `batch` rows of `seq` new tokens after `past` cached ones, logits for each row's last position. */
  private run(batch: number, seq: number, past: number): Promise<ort.InferenceSession.ReturnType> {
    const { head_dim: HD } = this.dims;
    const H = this.dims.n_kv_head ?? this.dims.n_head;
    const int64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), dims);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(Array.from({ length: batch * seq }, (_, i) => 1 + (i % 1000)), [batch, seq]),
      position_ids: int64(Array.from({ length: batch * seq }, (_, i) => past + (i % seq)), [batch, seq]),
      past_length: int64(new Array(batch).fill(past), [batch]),
      lora_a: this.loraA,
      lora_b: this.loraB,
      cluster_index: int64(Array.from({ length: batch }, (_, i) => i % this.adapters), [batch]),
      lora_scale: new ort.Tensor('float32', new Float32Array(batch).fill(1), [batch]),
      logits_index: int64(Array.from({ length: batch }, (_, b) => b * seq + seq - 1), [batch]),
    };
    // the stride the service's cache would have for these rows: half the context until a row needs more
    this.cache.trim(past + seq);
    this.cache.reserve(past + seq);
    this.cache.view(0, batch).forEach((view, i) => {
      feeds[this.names[i]] = new ort.Tensor('float32', view, [batch, H, this.cache.stride, HD]);
    });
    return this.decoder.run(feeds);
  }

  /** Positions per slot that the last run's cache inputs held. */
  get cacheStride(): number {
    return this.cache.stride;
  }

  /** Mean wall and CPU ms of one decode step over `batch` rows with `past` cached positions each. */
  decodeStep(batch: number, past: number): Promise<Timing> {
    return timeRuns(() => this.run(batch, 1, past));
  }

  /** Mean wall and CPU ms of one prefill run of `batch` prompts of `seq` tokens. */
  prefill(batch: number, seq: number): Promise<Timing> {
    return timeRuns(() => this.run(batch, seq, 0));
  }

  /** Decoder FLOPs per generated token: the dense layers, attention over `cached` positions, and the LM head. */
  flopsPerToken(cached: number): number {
    const { d_model: d, n_layer: L, vocab_size: V } = this.dims;
    return L * (24 * d * d + 4 * d * cached) + 2 * d * V;
  }

  async close(): Promise<void> {
    await this.decoder.release();
  }
}

/** ONNX Runtime's MatMul throughput on [rows, d_model] x [d_model, vocab] (the LM head's shape), GFLOP/s. */
export async function matmulGflops(settings: SessionSettings, rows: number, inner: number, outer: number): Promise<number> {
  const session = await ort.InferenceSession.create(matmulModel(inner, outer), sessionOptions(settings));
  try {
    const x = new ort.Tensor('float32', new Float32Array(rows * inner).fill(0.5), [rows, inner]);
    const { ms } = await timeRuns(() => session.run({ x }));
    return (2 * rows * inner * outer) / (ms / 1000) / 1e9;
  } finally {
    await session.release();
  }
}
