/**
 * ONNX Runtime behind the generator's `Runtime` interface. Imported only by worker.ts: ONNX Runtime runs
 * (synchronous native work) never touch the main thread's event loop.
 */
import * as ort from 'onnxruntime-node';
import { ModelPackageError } from '../errors.js';
import { cacheInputNames, checkSignature, kvHeads, type RuntimeTensorInfo } from '../model/manifest.js';
import type { ModelPackage } from '../model/package.js';
import { AdapterArena } from './adapter-arena.js';
import type { AdapterPart, Runtime, StepFeeds } from './decode-loop.js';
import { resolveMaxModelLen } from './kv-memory.js';
import { KvSlots } from './kv-slots.js';
import { FLOAT, model, node, tensorInfo } from './onnx-proto.js';
import type { EngineSettings } from './protocol.js';

/** The settings the sessions and the KV cache are made with. */
export type RuntimeSettings = Pick<EngineSettings, 'device' | 'threads' | 'spinning' | 'slots' | 'maxModelLen'>;

/** softmax(logits * inv_temperature) per row: the sampling rows' probabilities, vectorised by ONNX Runtime. */
function softmaxModel(vocabSize: number): Uint8Array {
  return model({
    nodes: [node('Mul', ['logits', 'inv_temperature'], ['scaled']), node('Softmax', ['scaled'], ['probs'], { axis: -1 })],
    inputs: [tensorInfo('logits', FLOAT, ['rows', vocabSize]), tensorInfo('inv_temperature', FLOAT, ['rows', 1])],
    outputs: [tensorInfo('probs', FLOAT, ['rows', vocabSize])],
    opset: 13,
  });
}

function metadata(list: readonly ort.InferenceSession.ValueMetadata[]): RuntimeTensorInfo[] {
  return list.map((m) => m.isTensor ? { name: m.name, type: m.type, shape: m.shape } : { name: m.name, type: 'non-tensor', shape: [] });
}

export class OrtRuntime implements Runtime {
  readonly vocabSize: number;
  private readonly dims: ModelPackage['dims'];
  /** Key/value heads: the cache's head axis. */
  private readonly kvHeads: number;
  private readonly hypernetRank: number;
  /** Leading ranks of the hypernetwork's factors that are the static LoRA (a network on static), which weights leave whole. */
  private readonly staticRank: number;
  private readonly adapters: AdapterArena;
  /** The arena's buffers as decoder inputs, rebuilt when the arena replaces them. */
  private adapterTensors: { version: number; a: ort.Tensor; b: ort.Tensor } | null = null;
  private readonly cache: KvSlots;
  private readonly cacheNames: string[];

  private constructor(
    readonly provider: string,
    private readonly decoder: ort.InferenceSession,
    /** null for a base-only package (no hypernetwork). */
    private readonly hypernetSession: ort.InferenceSession | null,
    private readonly softmaxSession: ort.InferenceSession,
    pkg: ModelPackage,
    slots: number,
    positions: number,
  ) {
    this.dims = pkg.dims;
    this.vocabSize = pkg.dims.vocab_size;
    this.kvHeads = kvHeads(pkg.dims);
    const adaptive = pkg.adaptive;
    this.hypernetRank = adaptive?.hypernet.rank ?? 0;
    this.staticRank = adaptive?.hypernet.on_static === true ? adaptive.lora.rank : 0;
    // A base-only package has no static LoRA: its entry holds a zero adapter of rank 1 (the decoder still takes
    // lora_a and lora_b, and every row of such a package reads the zero adapter).
    const { d_model: D, vocab_size: V } = pkg.dims;
    const staticPart = adaptive === null
      ? { count: 1, rank: 1, a: new Float32Array(D), b: new Float32Array(V) }
      : { count: 1, rank: adaptive.lora.rank, a: pkg.readTensor('static_lora_a'), b: pkg.readTensor('static_lora_b') };
    this.adapters = new AdapterArena(D, V, staticPart);
    const { n_layer: layers, head_dim: headDim } = pkg.dims;
    this.cache = new KvSlots({ layers, heads: this.kvHeads, headDim, capacity: positions, slots });
    this.cacheNames = cacheInputNames(layers);
  }

  get slotCount(): number {
    return this.cache.shape.slots;
  }

  /** Opens the sessions (decoder, hypernetwork, the sampler's softmax; CUDA when asked, CPU when CUDA cannot start) and checks the package's against its manifest. */
  static async create(pkg: ModelPackage, settings: RuntimeSettings, warn: (message: string) => void): Promise<OrtRuntime> {
    const positions = resolveMaxModelLen(settings.maxModelLen, pkg.dims.context);
    if (positions < 1) throw new RangeError(`MAX_MODEL_LEN ${settings.maxModelLen} is outside 1 to the model's context (${pkg.dims.context})`);
    const base: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: 'all',
      extra: { session: { intra_op: { allow_spinning: settings.spinning ? '1' : '0' }, inter_op: { allow_spinning: settings.spinning ? '1' : '0' } } },
    };
    if (settings.threads > 0) base.intraOpNumThreads = settings.threads;
    const open = async (providers: ort.InferenceSession.ExecutionProviderConfig[], quiet = false) => {
      // A CUDA attempt that fails is reported once, by us (ONNX Runtime's own error lines would repeat it).
      const options = { ...base, executionProviders: providers, ...(quiet ? { logSeverityLevel: 4 as const } : {}) };
      const hypernetPath = pkg.paths.hypernet;
      return Promise.all([
        ort.InferenceSession.create(pkg.paths.decoder, options),
        hypernetPath === undefined ? null : ort.InferenceSession.create(hypernetPath, options),
        ort.InferenceSession.create(softmaxModel(pkg.dims.vocab_size), options),
      ]);
    };
    let provider = 'cpu';
    let sessions: [ort.InferenceSession, ort.InferenceSession | null, ort.InferenceSession];
    if (settings.device === 'cuda') {
      // A failed CUDA start surfaces as an exception, reported once as a warning below; ONNX Runtime's own
      // error lines for it (logged by its process-wide logger, set up by the first session) would repeat it.
      ort.env.logLevel = 'fatal';
      try {
        sessions = await open([{ name: 'cuda', deviceId: 0 }, 'cpu'], true);
        provider = 'cuda';
      } catch (error) {
        warn(`CUDA execution provider could not start (${(error as Error).message.split('\n')[0]}); falling back to CPU`);
        sessions = await open(['cpu']);
      }
    } else {
      sessions = await open(['cpu']);
    }
    const [decoder, hypernet, softmax] = sessions;
    const hypernetSignature = pkg.manifest.hypernet;
    const problems = [
      ...checkSignature('decoder.onnx', pkg.manifest.decoder, { inputs: metadata(decoder.inputMetadata), outputs: metadata(decoder.outputMetadata) }),
      ...(hypernet === null || hypernetSignature === undefined ? [] : checkSignature('hypernet.onnx', hypernetSignature, { inputs: metadata(hypernet.inputMetadata), outputs: metadata(hypernet.outputMetadata) })),
    ];
    if (problems.length > 0) {
      await Promise.allSettled([decoder.release(), hypernet?.release(), softmax.release()]);
      throw new ModelPackageError(`Model package ${pkg.dir} does not match its manifest: ${problems.join('; ')}`);
    }
    return new OrtRuntime(provider, decoder, hypernet, softmax, pkg, settings.slots, positions);
  }

  async hypernet(contexts: Float32Array, count: number, weights: Float32Array): Promise<AdapterPart> {
    const D = this.dims.d_model;
    const V = this.vocabSize;
    const R = this.hypernetRank;
    if (this.hypernetSession === null) throw new Error('this model package is base-only: it has no hypernetwork');
    const out = await this.hypernetSession.run({ context: new ort.Tensor('float32', contexts.subarray(0, count * D), [count, D]) });
    const a = out.lora_a.data as Float32Array;
    const b = out.lora_b.data as Float32Array;
    if (a.length !== count * R * D || b.length !== count * V * R) {
      throw new Error(`hypernet.onnx returned lora_a [${out.lora_a.dims.join(', ')}] and lora_b [${out.lora_b.dims.join(', ')}] for ${count} contexts`);
    }
    if (weights.length !== count) throw new Error(`hypernetwork run for ${count} contexts got ${weights.length} weights`);
    // The update is sum over ranks of b[:, r] a[r, :], so scaling b's generated columns scales the generated part alone.
    for (let k = 0; k < count; k++) {
      const w = weights[k];
      if (w === 1) continue;
      for (let v = 0; v < V; v++) {
        const row = (k * V + v) * R;
        for (let r = this.staticRank; r < R; r++) b[row + r] *= w;
      }
    }
    return { count, rank: R, a, b };
  }

  placeAdapters(parts: readonly AdapterPart[]): number {
    return this.adapters.place(parts);
  }

  releaseAdapters(first: number): void {
    this.adapters.release(first);
  }

  private adapterInputs(): { a: ort.Tensor; b: ort.Tensor } {
    const arena = this.adapters;
    if (this.adapterTensors?.version !== arena.version) {
      const { d_model: D, vocab_size: V } = this.dims;
      this.adapterTensors = {
        version: arena.version,
        a: new ort.Tensor('float32', arena.a, [arena.capacity, arena.rank, D]),
        b: new ort.Tensor('float32', arena.b, [arena.capacity, V, arena.rank]),
      };
    }
    return this.adapterTensors;
  }

  async step(feeds: StepFeeds): Promise<Float32Array> {
    const { n_layer: L, head_dim: HD } = this.dims;
    const H = this.kvHeads;
    const { rows: B, seq: T } = feeds;
    const wanted = feeds.logitsIndex.length;
    this.cache.reserve(Math.max(...feeds.pastLength.map((past, b) => past + feeds.newTokens[b])));
    const stack = this.adapterInputs();
    const inputs: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', feeds.inputIds, [B, T]),
      position_ids: new ort.Tensor('int64', feeds.positionIds, [B, T]),
      past_length: new ort.Tensor('int64', BigInt64Array.from(feeds.pastLength, BigInt), [B]),
      lora_a: stack.a,
      lora_b: stack.b,
      cluster_index: new ort.Tensor('int64', feeds.clusterIndex, [B]),
      lora_scale: new ort.Tensor('float32', feeds.rowScale, [B]),
      // An empty logits_index makes ONNX Runtime divide by zero inside the graph's reshapes (SIGFPE, the whole process
      // dies), so a run that needs no logits (a middle prefill chunk) asks for one position and drops it.
      logits_index: new ort.Tensor('int64', BigInt64Array.from(wanted === 0 ? [0] : feeds.logitsIndex, BigInt), [Math.max(wanted, 1)]),
    };
    const stride = this.cache.stride;
    this.cache.view(feeds.firstSlot, B).forEach((view, i) => {
      inputs[this.cacheNames[i]] = new ort.Tensor('float32', view, [B, H, stride, HD]);
    });
    const out = await this.decoder.run(inputs);
    const expect = (name: string, want: number[]) => {
      const dims = out[name].dims;
      if (dims.length !== want.length || dims.some((d, i) => d !== want[i])) {
        throw new Error(`decoder.onnx returned ${name} [${dims.join(', ')}], expected [${want.join(', ')}]`);
      }
    };
    expect('logits', [Math.max(wanted, 1), this.vocabSize]);
    expect('present_keys', [L, B, H, T, HD]);
    expect('present_values', [L, B, H, T, HD]);
    this.cache.write(feeds.firstSlot, out.present_keys.data as Float32Array, out.present_values.data as Float32Array, T, feeds.pastLength, feeds.newTokens);
    return wanted === 0 ? new Float32Array(0) : (out.logits.data as Float32Array);
  }

  async softmax(logits: Float32Array, rows: readonly number[], temperatures: readonly number[]): Promise<Float32Array> {
    const V = this.vocabSize;
    const n = rows.length;
    const inOrder = rows.every((r, j) => r === j);
    const picked = inOrder ? logits.subarray(0, n * V) : new Float32Array(n * V);
    if (!inOrder) rows.forEach((r, j) => picked.set(logits.subarray(r * V, (r + 1) * V), j * V));
    const out = await this.softmaxSession.run({
      logits: new ort.Tensor('float32', picked, [n, V]),
      inv_temperature: new ort.Tensor('float32', Float32Array.from(temperatures, (t) => 1 / t), [n, 1]),
    });
    return out.probs.data as Float32Array;
  }

  moveSlot(from: number, to: number, length: number): void {
    this.cache.move(from, to, length);
  }

  trimCache(longestRow: number): void {
    this.cache.trim(longestRow);
  }

  async release(): Promise<void> {
    await Promise.allSettled([this.decoder.release(), this.hypernetSession?.release(), this.softmaxSession.release()]);
  }
}
