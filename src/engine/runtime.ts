/**
 * ONNX Runtime behind the generator's `Runtime` interface. Imported only by worker.ts: ONNX Runtime runs
 * (synchronous native work) never touch the main thread's event loop.
 */
import * as ort from 'onnxruntime-node';
import type { Device } from '../config.js';
import { ModelPackageError } from '../errors.js';
import { checkSignature, type RuntimeTensorInfo } from '../model/manifest.js';
import type { ModelPackage } from '../model/package.js';
import type { AdapterPart, AdapterStack, KvCache, Runtime, StepFeeds, StepResult } from './decode-loop.js';

class OrtKv implements KvCache {
  constructor(readonly keys: ort.Tensor, readonly values: ort.Tensor, readonly batch: number, readonly length: number) {}
}

class OrtAdapters implements AdapterStack {
  constructor(readonly a: ort.Tensor, readonly b: ort.Tensor, readonly slots: number) {}
}

class OrtPart implements AdapterPart {
  constructor(readonly a: Float32Array, readonly b: Float32Array, readonly count: number) {}
}

export interface RuntimeOptions {
  device: Device;
  threads: number;
  /** Intra-op threads spin while idle (off by default: they share the CPU with the event loop). */
  spinning: boolean;
  warn: (message: string) => void;
}

function metadata(list: readonly ort.InferenceSession.ValueMetadata[]): RuntimeTensorInfo[] {
  return list.map((m) => m.isTensor ? { name: m.name, type: m.type, shape: m.shape } : { name: m.name, type: 'non-tensor', shape: [] });
}

export class OrtRuntime implements Runtime {
  readonly vocabSize: number;
  private readonly dims: ModelPackage['dims'];
  private readonly rank: number;
  private readonly staticA: Float32Array;
  private readonly staticB: Float32Array;
  private baseStack: OrtAdapters | null = null;

  private constructor(
    readonly provider: string,
    private readonly decoder: ort.InferenceSession,
    private readonly hypernetSession: ort.InferenceSession,
    pkg: ModelPackage,
  ) {
    this.dims = pkg.dims;
    this.vocabSize = pkg.dims.vocab_size;
    this.rank = pkg.manifest.lora.rank;
    this.staticA = pkg.readTensor('static_lora_a');
    this.staticB = pkg.readTensor('static_lora_b');
  }

  /** Opens both sessions (CUDA when asked, CPU when CUDA cannot start) and checks them against the manifest. */
  static async create(pkg: ModelPackage, options: RuntimeOptions): Promise<OrtRuntime> {
    const base: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      extra: { session: { intra_op: { allow_spinning: options.spinning ? '1' : '0' }, inter_op: { allow_spinning: options.spinning ? '1' : '0' } } },
    };
    if (options.threads > 0) base.intraOpNumThreads = options.threads;
    const open = async (providers: ort.InferenceSession.ExecutionProviderConfig[], quiet = false) => {
      // A CUDA attempt that fails is reported once, by us (ONNX Runtime's own error lines would repeat it).
      const options = { ...base, executionProviders: providers, ...(quiet ? { logSeverityLevel: 4 as const } : {}) };
      return Promise.all([ort.InferenceSession.create(pkg.paths.decoder, options), ort.InferenceSession.create(pkg.paths.hypernet, options)]);
    };
    let provider = 'cpu';
    let sessions: [ort.InferenceSession, ort.InferenceSession];
    if (options.device === 'cuda') {
      // A failed CUDA start surfaces as an exception, reported once as a warning below; ONNX Runtime's own
      // error lines for it (logged by its process-wide logger, set up by the first session) would repeat it.
      ort.env.logLevel = 'fatal';
      try {
        sessions = await open([{ name: 'cuda', deviceId: 0 }, 'cpu'], true);
        provider = 'cuda';
      } catch (error) {
        options.warn(`CUDA execution provider could not start (${(error as Error).message.split('\n')[0]}); falling back to CPU`);
        sessions = await open(['cpu']);
      }
    } else {
      sessions = await open(['cpu']);
    }
    const [decoder, hypernet] = sessions;
    const problems = [
      ...checkSignature('decoder.onnx', pkg.manifest.decoder, { inputs: metadata(decoder.inputMetadata), outputs: metadata(decoder.outputMetadata) }),
      ...checkSignature('hypernet.onnx', pkg.manifest.hypernet, { inputs: metadata(hypernet.inputMetadata), outputs: metadata(hypernet.outputMetadata) }),
    ];
    if (problems.length > 0) {
      await Promise.allSettled([decoder.release(), hypernet.release()]);
      throw new ModelPackageError(`Model package ${pkg.dir} does not match its manifest: ${problems.join('; ')}`);
    }
    return new OrtRuntime(provider, decoder, hypernet, pkg);
  }

  async hypernet(contexts: Float32Array, count: number): Promise<AdapterPart> {
    const D = this.dims.d_model;
    const V = this.vocabSize;
    const R = this.rank;
    const out = await this.hypernetSession.run({ context: new ort.Tensor('float32', contexts.subarray(0, count * D), [count, D]) });
    const a = out.lora_a.data as Float32Array;
    const b = out.lora_b.data as Float32Array;
    if (a.length !== count * R * D || b.length !== count * V * R) {
      throw new Error(`hypernet.onnx returned lora_a [${out.lora_a.dims.join(', ')}] and lora_b [${out.lora_b.dims.join(', ')}] for ${count} contexts`);
    }
    return new OrtPart(a, b, count);
  }

  stack(parts: readonly AdapterPart[]): AdapterStack {
    if (parts.length === 0 && this.baseStack !== null) return this.baseStack;
    const D = this.dims.d_model;
    const V = this.vocabSize;
    const R = this.rank;
    const slots = 2 + parts.reduce((n, p) => n + p.count, 0);
    const a = new Float32Array(slots * R * D);
    const b = new Float32Array(slots * V * R);
    a.set(this.staticA, R * D);
    b.set(this.staticB, V * R);
    let slot = 2;
    for (const part of parts as readonly OrtPart[]) {
      a.set(part.a, slot * R * D);
      b.set(part.b, slot * V * R);
      slot += part.count;
    }
    const stack = new OrtAdapters(new ort.Tensor('float32', a, [slots, R, D]), new ort.Tensor('float32', b, [slots, V, R]), slots);
    if (parts.length === 0) this.baseStack = stack;
    return stack;
  }

  async step(feeds: StepFeeds, adapters: AdapterStack): Promise<StepResult> {
    const { n_layer: L, n_head: H, head_dim: HD } = this.dims;
    const stack = adapters as OrtAdapters;
    const past = feeds.past as OrtKv | null;
    const total = (past?.length ?? 0) + feeds.seq;
    const emptyKv = () => new ort.Tensor('float32', new Float32Array(0), [L, feeds.batch, H, 0, HD]);
    const out = await this.decoder.run({
      input_ids: new ort.Tensor('int64', feeds.inputIds, [feeds.batch, feeds.seq]),
      position_ids: new ort.Tensor('int64', feeds.positionIds, [feeds.batch, feeds.seq]),
      attention_mask: new ort.Tensor('int64', feeds.attentionMask, [feeds.batch, total]),
      past_keys: past?.keys ?? emptyKv(),
      past_values: past?.values ?? emptyKv(),
      lora_a: stack.a,
      lora_b: stack.b,
      cluster_index: new ort.Tensor('int64', feeds.clusterIndex, [feeds.batch]),
    });
    const logits = out.logits;
    const want = [feeds.batch, feeds.seq, this.vocabSize];
    if (logits.dims.length !== 3 || logits.dims.some((d, i) => d !== want[i])) {
      throw new Error(`decoder.onnx returned logits [${logits.dims.join(', ')}], expected [${want.join(', ')}]`);
    }
    const kvDims = out.present_keys.dims;
    if (kvDims[1] !== feeds.batch || kvDims[3] !== total) {
      throw new Error(`decoder.onnx returned present_keys [${kvDims.join(', ')}], expected batch ${feeds.batch} and length ${total}`);
    }
    return { logits: logits.data as Float32Array, kv: new OrtKv(out.present_keys, out.present_values, feeds.batch, total) };
  }

  selectRows(kv: KvCache, rows: readonly number[], trim: number): KvCache {
    const cache = kv as OrtKv;
    const { n_layer: L, n_head: H, head_dim: HD } = this.dims;
    const length = cache.length - trim;
    const pick = (tensor: ort.Tensor) => {
      const src = tensor.data as Float32Array;
      const dst = new Float32Array(L * rows.length * H * length * HD);
      for (let l = 0; l < L; l++) {
        rows.forEach((r, i) => {
          for (let h = 0; h < H; h++) {
            const from = (((l * cache.batch + r) * H + h) * cache.length + trim) * HD;
            dst.set(src.subarray(from, from + length * HD), (((l * rows.length + i) * H + h) * length) * HD);
          }
        });
      }
      return new ort.Tensor('float32', dst, [L, rows.length, H, length, HD]);
    };
    return new OrtKv(pick(cache.keys), pick(cache.values), rows.length, length);
  }

  concat(first: KvCache, second: KvCache): KvCache {
    const x = first as OrtKv;
    const y = second as OrtKv;
    const { n_layer: L, n_head: H, head_dim: HD } = this.dims;
    const length = Math.max(x.length, y.length);
    const batch = x.batch + y.batch;
    const join = (tx: ort.Tensor, ty: ort.Tensor) => {
      const dst = new Float32Array(L * batch * H * length * HD); // left padding stays zero (and masked)
      for (const [cache, data, offset] of [[x, tx.data, 0], [y, ty.data, x.batch]] as const) {
        const src = data as Float32Array;
        const shift = length - cache.length;
        for (let l = 0; l < L; l++) {
          for (let r = 0; r < cache.batch; r++) {
            for (let h = 0; h < H; h++) {
              const from = ((l * cache.batch + r) * H + h) * cache.length * HD;
              dst.set(src.subarray(from, from + cache.length * HD), (((l * batch + offset + r) * H + h) * length + shift) * HD);
            }
          }
        }
      }
      return new ort.Tensor('float32', dst, [L, batch, H, length, HD]);
    };
    return new OrtKv(join(x.keys, y.keys), join(x.values, y.values), batch, length);
  }

  async release(): Promise<void> {
    await Promise.allSettled([this.decoder.release(), this.hypernetSession.release()]);
  }
}
