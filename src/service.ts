/**
 * The inference service behind the HTTP API: opens the model package, starts the engine worker, runs the
 * scheduler, and reports its state (loading -> ready -> draining -> closed, or failed).
 */
import { AdapterFiles, type AdapterFileLogger } from './adaptation/adapter-files.js';
import { AdapterRegistry, PACKAGE_ADAPTER_PREFIX, type NamedAdapter } from './adaptation/adapters.js';
import { DomainAdapters } from './adaptation/domains.js';
import { FeatureExtractor } from './adaptation/features.js';
import { ContextGate, gateOutcome } from './adaptation/gate.js';
import { adaptationModesOf, DEFAULT_ADAPTATION_MODE, type RequestAdaptationMode } from './adaptation/modes.js';
import { Scheduler } from './batching/scheduler.js';
import type { Completion } from './batching/completion.js';
import type { QueueOutcome } from './batching/queue.js';
import type { Config } from './config.js';
import { EngineClient, type EngineLogger } from './engine/client.js';
import { CoreClaim } from './engine/core-claim.js';
import { describeShape, formatBytes, planKvCache, type KvPlan } from './engine/kv-memory.js';
import type { LoraFactors } from './engine/protocol.js';
import { ConfigError } from './errors.js';
import { ADAPT_COMMAND } from './model/manifest.js';
import { ModelPackage } from './model/package.js';
import type { ChatTemplate } from './model/chat-template.js';
import type { TextTokenizer } from './model/tokenizer.js';
import type { Metrics } from './observability/metrics.js';

export type ServiceState = 'loading' | 'ready' | 'failed' | 'draining' | 'closed';

export interface ServiceLogger extends EngineLogger {
  debug(obj: object, msg: string): void;
}

/** What the API needs from the service (the real one below, or a stub for tools such as the OpenAPI script). */
export interface CompletionService {
  readonly state: ServiceState;
  readonly failure: Error | null;
  readonly provider: string | null;
  readonly modelName: string;
  /** Longest prompt + completion in tokens (BOS included): MAX_MODEL_LEN, the KV cache's positions per slot. */
  readonly contextLength: number;
  readonly tokenizer: TextTokenizer | null;
  /** The package's chat template (null: it has none, and /v1/chat/completions refuses). */
  readonly chatTemplate: ChatTemplate | null;
  readonly created: number;
  /** Prompts the queue would take now (0: a new request would be refused with 429 anyway, checked before its body is even read). */
  readonly queueRoom: number;
  /** Named adapters, each served as its own model. */
  readonly adapters: AdapterRegistry;
  /**
   * The `adaptation` modes the package serves: a base-only package serves only `none`, which is then also the
   * default; library and masks modes need those sections.
   */
  readonly adaptationModes: readonly RequestAdaptationMode[];
  /** The mode of a request that names none (DEFAULT_ADAPTATION; unset: batch, or none for a base-only package). */
  readonly defaultAdaptation: RequestAdaptationMode;
  /** Queues an admitted request (the caller has checked the state): 'full' or 'closed' when it could not be. */
  submit(completion: Completion): QueueOutcome;
  /** Loads a named adapter from a file or folder under ADAPTER_DIRS (see adapter-files.ts); `log` gets why one is refused. */
  loadAdapter(name: string, path: string, log: AdapterFileLogger): Promise<{ adapter: NamedAdapter; path: string }>;
  /** Makes a named adapter from example texts: the hypernetwork on their mean feature (a cluster of them); the caller checks that the service is ready and has a hypernetwork. */
  adapterFromExamples(name: string, examples: readonly string[]): Promise<NamedAdapter>;
  /** A request was refused in a burst: the engine gives the event loop the cores for a moment (BURST_YIELD_MS). */
  claimCores?(): void;
}

/** DEFAULT_ADAPTATION resolved against what the package serves; a mode it does not serve stops the start. */
function defaultAdaptationOf(setting: RequestAdaptationMode | '', served: readonly RequestAdaptationMode[]): RequestAdaptationMode {
  if (setting === '') return served.includes(DEFAULT_ADAPTATION_MODE) ? DEFAULT_ADAPTATION_MODE : 'none';
  if (!served.includes(setting)) throw new ConfigError(`DEFAULT_ADAPTATION=${setting}, but this model package serves only ${served.join(', ')}`);
  return setting;
}

export class InferenceService implements CompletionService {
  state: ServiceState = 'loading';
  private failureListeners: Array<(error: Error) => void> = [];
  failure: Error | null = null;
  provider: string | null = null;
  readonly created = Math.floor(Date.now() / 1000);
  private engine: EngineClient | null = null;
  private scheduler: Scheduler | null = null;
  private starting: Promise<void> | null = null;
  private readonly features: FeatureExtractor;
  private readonly domains: DomainAdapters;
  private readonly gate: ContextGate | null;
  /** The package's static LoRA as factors (what a gated context gets), read on first use. */
  private staticLora: LoraFactors | null = null;
  readonly adapters: AdapterRegistry;
  private readonly adapterFiles: AdapterFiles;
  readonly adaptationModes: readonly RequestAdaptationMode[];
  readonly defaultAdaptation: RequestAdaptationMode;
  /** The KV cache's shape and size (MAX_MODEL_LEN, MAX_BATCH_SIZE), checked against the memory limit. */
  readonly kvCache: KvPlan;
  private readonly coreClaim: CoreClaim | null;

  private constructor(
    private readonly config: Config,
    readonly model: ModelPackage,
    private readonly metrics: Metrics,
    private readonly logger: ServiceLogger,
  ) {
    const m = model.manifest;
    this.kvCache = planKvCache(config, model);
    // a base-only package serves no mode that needs features: its embedding table is read only if ever one is wanted
    const embeddings = model.adaptive === null ? () => model.readTensor('embeddings') : model.readTensor('embeddings');
    this.features = new FeatureExtractor(embeddings, m.dims.vocab_size, m.dims.d_model, m.features.exclude_token_ids);
    this.domains = DomainAdapters.fromPackage(model);
    this.gate = ContextGate.fromPackage(model);
    this.adaptationModes = adaptationModesOf(model);
    this.defaultAdaptation = defaultAdaptationOf(config.defaultAdaptation, this.adaptationModes);
    const maxRank = Math.max(64, m.hypernet?.rank ?? 0);
    this.adapters = new AdapterRegistry(config.maxAdapters, { vocabSize: m.dims.vocab_size, dim: m.dims.d_model, maxRank }, config.modelName);
    for (const [domain, factors] of this.domains.libraryEntries()) this.adapters.add(`${PACKAGE_ADAPTER_PREFIX}${domain}`, factors, 'package');
    this.adapterFiles = new AdapterFiles(config.adapterDirs, config.retryAfterSeconds);
    this.coreClaim = config.burstYieldMs > 0 ? new CoreClaim() : null;
    metrics.watchEngineYield(() => this.coreClaim?.pausedSeconds ?? 0);
  }

  claimCores(): void {
    this.coreClaim?.claim(this.config.burstYieldMs);
  }

  /** Opens and checks the model package (synchronously: a bad package stops the start here). */
  static open(config: Config, metrics: Metrics, logger: ServiceLogger): InferenceService {
    const service = new InferenceService(config, ModelPackage.open(config.modelDir), metrics, logger);
    const kv = service.kvCache;
    logger.info(
      { kvCacheBytes: kv.bytes, kvCacheLimitBytes: kv.limit, slots: kv.shape.slots, maxModelLen: kv.shape.capacity, layers: kv.shape.layers, kvHeads: kv.shape.heads, headDim: kv.shape.headDim },
      `KV cache: ${formatBytes(kv.bytes)} = ${describeShape(kv.shape)}; limit ${formatBytes(kv.limit)} (${kv.limitRule})`,
    );
    if (service.model.adaptive === null) logger.info({ adaptationModes: service.adaptationModes }, `base-only model package: serving adaptation 'none' only (${ADAPT_COMMAND} adds the rest)`);
    return service;
  }

  get modelName(): string {
    return this.config.modelName;
  }

  get contextLength(): number {
    return this.kvCache.shape.capacity;
  }

  get tokenizer(): TextTokenizer {
    return this.model.tokenizer;
  }

  get chatTemplate(): ChatTemplate | null {
    return this.model.chatTemplate;
  }

  /** Starts the worker (sessions, signature checks, warm-up) and the scheduler; resolves when ready. */
  start(): Promise<void> {
    this.starting ??= this.boot();
    return this.starting;
  }

  private async boot(): Promise<void> {
    try {
      this.engine = await EngineClient.start({
        modelDir: this.model.dir, device: this.config.device, threads: this.config.threads, spinning: this.config.ortSpinning,
        slots: this.config.maxBatchSize, maxModelLen: this.kvCache.shape.capacity, prefillChunkTokens: this.config.prefillChunkTokens, priority: this.config.engineNice, coreClaim: this.coreClaim?.buffer ?? null, logger: this.logger,
      });
    } catch (error) {
      this.state = 'failed';
      this.failure = error as Error;
      throw error;
    }
    this.provider = this.engine.provider;
    this.engine.onForward((phase, ms, rows) => {
      this.metrics.forwardSeconds.observe({ phase }, ms / 1000);
      this.metrics.forwardRows.observe({ phase }, rows);
    });
    this.engine.onFailure((error) => {
      this.state = 'failed';
      this.failure = error;
      for (const listener of this.failureListeners) listener(error);
    });
    this.scheduler = new Scheduler(this.engine, { features: this.features, domains: this.domains, gate: this.gate }, this.config, this.metrics, this.logger);
    this.scheduler.start();
    if (this.state === 'loading') this.state = 'ready';
  }

  /** Called if the engine dies after a successful start (the process should restart). */
  onFailure(listener: (error: Error) => void): void {
    this.failureListeners.push(listener);
  }

  get queueRoom(): number {
    return this.scheduler?.queueRoom ?? this.config.queueSize;
  }

  submit(completion: Completion): QueueOutcome {
    if (this.scheduler === null) return 'closed';
    return this.scheduler.submit(completion);
  }

  async loadAdapter(name: string, path: string, log: AdapterFileLogger): Promise<{ adapter: NamedAdapter; path: string }> {
    this.adapters.checkName(name);
    const loaded = await this.adapterFiles.load(path, this.model, this.adapters.shape, log);
    return { adapter: this.adapters.add(name, loaded.factors, 'file'), path: loaded.path };
  }

  async adapterFromExamples(name: string, examples: readonly string[]): Promise<NamedAdapter> {
    this.adapters.checkName(name);
    const D = this.model.dims.d_model;
    const context = new Float32Array(D);
    let tokens = 0;
    for (const text of examples) {
      const ids = await this.tokenizer.tokenizePrompt(text);
      tokens += this.tokenizer.textTokenCount(ids);
      const feature = this.features.feature(ids);
      for (let j = 0; j < D; j++) context[j] += feature[j] / examples.length;
    }
    const { similarity, gated, weight } = gateOutcome(this.gate, context, tokens);
    const factors = weight === 0 ? this.staticFactors() : (await this.engine!.adapt(context, 1, Float32Array.of(weight)))[0];
    return this.adapters.add(name, factors, 'examples', {
      examples: examples.length,
      ...(similarity === null ? {} : { contextSimilarity: similarity, gated, dynamicWeight: weight }),
    });
  }

  private staticFactors(): LoraFactors {
    this.staticLora ??= { rank: this.model.adaptive!.lora.rank, a: this.model.readTensor('static_lora_a'), b: this.model.readTensor('static_lora_b') };
    return this.staticLora;
  }

  /** Stops admitting, finishes every admitted request, then stops the worker. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    const wasStarting = this.starting;
    if (this.state !== 'failed') this.state = 'draining';
    if (wasStarting !== null) await wasStarting.catch(() => {});
    await this.scheduler?.drain();
    await this.engine?.close();
    this.state = 'closed';
  }
}
