/**
 * Prometheus metrics (prom-client), one registry per app so that several apps (tests) can live in a process.
 *
 * Beside the chameleon_* series, the vLLM-named ones that routers and dashboards read (the Gateway API inference
 * extension's endpoint picker, vLLM's Grafana dashboards), with vLLM's names, types, labels (`model_name` = the
 * served model, `engine` = "0") and buckets, as vllm/v1/metrics/loggers.py defines them. What each one measures here:
 * - vllm:num_requests_running / vllm:num_requests_waiting: admitted requests (not prompts) whose rows are in the
 *   engine / still in the queue;
 * - vllm:kv_cache_usage_perc (and its older name vllm:gpu_cache_usage_perc), 0 to 1: the KV cache's slots in use
 *   over its MAX_BATCH_SIZE slots. Each prompt in flight owns a whole slot of MAX_MODEL_LEN positions from its
 *   admission to the engine until it finishes, so a full cache (1) means no request can start, which is what the
 *   endpoint picker reads it for;
 * - vllm:time_to_first_token_seconds: arrival to the request's first generated token (as chameleon_time_to_first_token_seconds);
 * - vllm:inter_token_latency_seconds: between consecutive generated tokens of one prompt (row);
 * - vllm:e2e_request_latency_seconds: arrival to the request's end, whatever ended it (as vLLM counts aborted requests too);
 * - vllm:prompt_tokens_total: the prompt tokens of requests sent to the engine, as their usage counts them (the
 *   beginning-of-text token a package prepends is not counted); vllm:generation_tokens_total: generated tokens;
 * - vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}: the named adapters (`model` =
 *   an adapter, mode `adapter`) of running and of waiting requests, comma-joined, and the most adapters one decoder
 *   run can hold (one per row: MAX_BATCH_SIZE); its value is the time of the scrape (Unix seconds), as vLLM sets it.
 *   Requests of the other modes (batch, static, ...) use no named adapter and are left out. vLLM gives it no model_name.
 */
import type { ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BatchPlan } from '../adaptation/planner.js';

const SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const SIZES = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256];
/** vLLM's buckets (vllm/v1/metrics/loggers.py). */
const VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const VLLM_REQUEST_LATENCY = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

/** What the metrics read of an admitted request (batching's Completion). */
export interface MeteredRequest {
  readonly arrivedAt: number;
  readonly status: 'waiting' | 'running' | 'finished';
  readonly params: { readonly mode: string; readonly adapter?: { readonly id: string } };
  readonly prompts: ReadonlyArray<{ readonly textTokens: number }>;
  onEnd(handler: () => void): void;
}

export interface MetricsOptions {
  /** Node's process metrics (default true). */
  defaultMetrics?: boolean;
  /** The served model (MODEL_NAME, default chameleon-default): the `model_name` label of the vLLM series. */
  modelName?: string;
  /** KV-cache slots, the most prompts in flight (MAX_BATCH_SIZE, default 32). */
  slots?: number;
}

type VllmLabels = 'model_name' | 'engine';

export class Metrics {
  readonly registry = new Registry();
  readonly queueDepth: Gauge;
  readonly inFlight: Gauge;
  readonly batchSize: Histogram;
  readonly clustersPerBatch: Histogram;
  readonly clusteredWith: Histogram;
  readonly adaptationSeconds: Histogram<'stage'>;
  readonly forwardSeconds: Histogram<'phase'>;
  readonly forwardRows: Histogram<'phase'>;
  readonly timeToFirstToken: Histogram;
  readonly tokensGenerated: Counter;
  readonly requests: Counter<'status'>;
  readonly hypernetContexts: Counter<'outcome'>;
  readonly requestsByMode: Counter<'mode'>;
  readonly adapterRequests: Counter<'adapter'>;
  readonly tokensByMode: Counter<'mode'>;
  readonly adapterTokens: Counter<'adapter'>;
  readonly vllm: {
    running: Gauge<VllmLabels>;
    waiting: Gauge<VllmLabels>;
    kvCacheUsage: Gauge<VllmLabels>;
    gpuCacheUsage: Gauge<VllmLabels>;
    timeToFirstToken: Histogram<VllmLabels>;
    interTokenLatency: Histogram<VllmLabels>;
    e2eLatency: Histogram<VllmLabels>;
    promptTokens: Counter<VllmLabels>;
    generationTokens: Counter<VllmLabels>;
    loraRequests: Gauge<'max_lora' | 'waiting_lora_adapters' | 'running_lora_adapters'>;
  };
  /** The labels of every vLLM series but vllm:lora_requests_info. */
  readonly vllmLabels: Record<VllmLabels, string>;
  private queueSource: () => number = () => 0;
  private engineYieldSource: () => number = () => 0;
  /** Admitted requests not yet ended, in admission order: their status says waiting or running. */
  private readonly live = new Set<MeteredRequest>();

  constructor(options: MetricsOptions = {}) {
    const registers = [this.registry];
    const slots = options.slots ?? 32;
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const source = () => this.queueSource();
    this.queueDepth = new Gauge({
      name: 'chameleon_queue_depth',
      help: 'Prompts waiting for a batch',
      registers,
      collect() {
        this.set(source());
      },
    });
    const yielded = () => this.engineYieldSource();
    let yieldedCounted = 0;
    new Counter({
      name: 'chameleon_engine_yield_seconds_total',
      help: 'Time the inference thread waited between decoder runs while refused bursts claimed the cores (BURST_YIELD_MS)',
      registers,
      collect() {
        const total = yielded();
        this.inc(total - yieldedCounted);
        yieldedCounted = total;
      },
    });
    this.inFlight = new Gauge({ name: 'chameleon_batch_rows_in_flight', help: 'Prompts the engine is working on (every batch in flight)', registers });
    this.batchSize = new Histogram({ name: 'chameleon_batch_size', help: 'Prompts per batch', buckets: SIZES, registers });
    this.clustersPerBatch = new Histogram({ name: 'chameleon_clusters_per_batch', help: 'k-means clusters per batch', buckets: [1, 2, 3, 4, 6, 8, 12, 16, 32], registers });
    this.clusteredWith = new Histogram({
      name: 'chameleon_clustered_prompts',
      help: 'Prompts a window of batch requests was clustered with (the window and the batch prompts in flight)',
      buckets: SIZES,
      registers,
    });
    this.adaptationSeconds = new Histogram({
      name: 'chameleon_adaptation_seconds',
      help: 'Time to adapt a batch, by stage (features, clustering, hypernet)',
      labelNames: ['stage'],
      buckets: SECONDS,
      registers,
    });
    this.forwardSeconds = new Histogram({
      name: 'chameleon_forward_seconds',
      help: 'Decoder run time per step (prefill = the prompt pass, decode = one token for every live row)',
      labelNames: ['phase'],
      buckets: SECONDS,
      registers,
    });
    this.forwardRows = new Histogram({
      name: 'chameleon_forward_rows',
      help: 'Rows served by one decoder run (a decode step serves the live rows of every batch in flight)',
      labelNames: ['phase'],
      buckets: SIZES,
      registers,
    });
    this.timeToFirstToken = new Histogram({ name: 'chameleon_time_to_first_token_seconds', help: 'From admission to the first generated token', buckets: SECONDS, registers });
    this.tokensGenerated = new Counter({ name: 'chameleon_tokens_generated_total', help: 'Completion tokens generated', registers });
    this.requests = new Counter({ name: 'chameleon_requests_total', help: 'Completion requests by HTTP status', labelNames: ['status'], registers });
    this.hypernetContexts = new Counter({
      name: 'chameleon_hypernet_prompts_total',
      help: 'Prompts whose adapter comes from a hypernetwork context (batch and request modes, packages with a context gate): adapted, or gated (unlike every training domain: the static LoRA served them)',
      labelNames: ['outcome'],
      registers,
    });
    this.requestsByMode = new Counter({
      name: 'chameleon_requests_by_mode_total',
      help: 'Completion requests admitted to the queue, by adaptation mode (adapter: a named adapter chosen by model)',
      labelNames: ['mode'],
      registers,
    });
    this.adapterRequests = new Counter({ name: 'chameleon_adapter_requests_total', help: 'Completion requests admitted to the queue, by named adapter', labelNames: ['adapter'], registers });
    this.tokensByMode = new Counter({ name: 'chameleon_tokens_generated_by_mode_total', help: 'Completion tokens generated, by adaptation mode', labelNames: ['mode'], registers });
    this.adapterTokens = new Counter({ name: 'chameleon_adapter_tokens_generated_total', help: 'Completion tokens generated, by named adapter', labelNames: ['adapter'], registers });

    const labels = { model_name: options.modelName ?? 'chameleon-default', engine: '0' };
    this.vllmLabels = labels;
    const labelNames: VllmLabels[] = ['model_name', 'engine'];
    const live = this.live;
    const count = (status: MeteredRequest['status']) => {
      let n = 0;
      for (const r of live) if (r.status === status) n++;
      return n;
    };
    const inFlight = this.inFlight;
    const usage = async () => Math.min(1, ((await inFlight.get()).values[0]?.value ?? 0) / slots);
    const namedAdapters = (status: MeteredRequest['status']) => {
      const names = new Set<string>();
      for (const r of live) if (r.status === status && r.params.adapter !== undefined) names.add(r.params.adapter.id);
      return [...names].join(',');
    };
    this.vllm = {
      running: new Gauge({ name: 'vllm:num_requests_running', help: 'Number of requests in model execution batches.', labelNames, registers, collect() { this.set(labels, count('running')); } }),
      waiting: new Gauge({ name: 'vllm:num_requests_waiting', help: 'Number of requests waiting to be processed.', labelNames, registers, collect() { this.set(labels, count('waiting')); } }),
      kvCacheUsage: new Gauge({
        name: 'vllm:kv_cache_usage_perc',
        help: 'KV-cache usage. 1 means 100 percent usage. (KV-cache slots in use over MAX_BATCH_SIZE slots.)',
        labelNames,
        registers,
        async collect() { this.set(labels, await usage()); },
      }),
      gpuCacheUsage: new Gauge({
        name: 'vllm:gpu_cache_usage_perc',
        help: 'KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.',
        labelNames,
        registers,
        async collect() { this.set(labels, await usage()); },
      }),
      timeToFirstToken: new Histogram({ name: 'vllm:time_to_first_token_seconds', help: 'Histogram of time to first token in seconds.', labelNames, buckets: VLLM_TTFT, registers }),
      interTokenLatency: new Histogram({ name: 'vllm:inter_token_latency_seconds', help: 'Histogram of inter-token latency in seconds.', labelNames, buckets: VLLM_ITL, registers }),
      e2eLatency: new Histogram({ name: 'vllm:e2e_request_latency_seconds', help: 'Histogram of e2e request latency in seconds.', labelNames, buckets: VLLM_REQUEST_LATENCY, registers }),
      promptTokens: new Counter({ name: 'vllm:prompt_tokens_total', help: 'Number of prefill tokens processed.', labelNames, registers }),
      generationTokens: new Counter({ name: 'vllm:generation_tokens_total', help: 'Number of generation tokens processed.', labelNames, registers }),
      loraRequests: new Gauge({
        name: 'vllm:lora_requests_info',
        help: 'Running stats on lora requests.',
        labelNames: ['max_lora', 'waiting_lora_adapters', 'running_lora_adapters'],
        registers,
        collect() {
          // one series, the current one: vLLM's value is the time it was set, and readers take the latest
          this.reset();
          this.set({ max_lora: String(slots), running_lora_adapters: namedAdapters('running'), waiting_lora_adapters: namedAdapters('waiting') }, Date.now() / 1000);
        },
      }),
    };
    // vLLM's series exist from the start, at zero
    for (const histogram of [this.vllm.timeToFirstToken, this.vllm.interTokenLatency, this.vllm.e2eLatency]) histogram.zero(labels);
    this.vllm.promptTokens.inc(labels, 0);
    this.vllm.generationTokens.inc(labels, 0);
  }

  /** A request got into the queue: counted by mode and adapter; followed until its end (running / waiting, end-to-end latency). */
  observeAdmitted(request: MeteredRequest): void {
    const { mode, adapter } = request.params;
    this.requestsByMode.inc({ mode });
    if (adapter !== undefined) this.adapterRequests.inc({ adapter: adapter.id });
    this.live.add(request);
    request.onEnd(() => {
      this.live.delete(request);
      this.vllm.e2eLatency.observe(this.vllmLabels, (performance.now() - request.arrivedAt) / 1000);
    });
  }

  /** A request's rows were sent to the engine: their prompts are prefilled. */
  observeRunning(request: MeteredRequest): void {
    this.vllm.promptTokens.inc(this.vllmLabels, request.prompts.reduce((n, p) => n + p.textTokens, 0));
  }

  /**
   * One generated token of a request: `first` when it is the request's first, `sincePrevious` the seconds since the
   * previous token of the same row (null for a row's first token).
   */
  observeToken(request: MeteredRequest, first: boolean, sincePrevious: number | null): void {
    const { mode, adapter } = request.params;
    this.tokensGenerated.inc();
    this.tokensByMode.inc({ mode });
    if (adapter !== undefined) this.adapterTokens.inc({ adapter: adapter.id });
    this.vllm.generationTokens.inc(this.vllmLabels);
    if (first) {
      const ttft = (performance.now() - request.arrivedAt) / 1000;
      this.timeToFirstToken.observe(ttft);
      this.vllm.timeToFirstToken.observe(this.vllmLabels, ttft);
    }
    if (sincePrevious !== null) this.vllm.interTokenLatency.observe(this.vllmLabels, sincePrevious);
  }

  /** Counts a completion request once: `statusOnFinish()` when its response is sent, 499 when the client left first. */
  countRequest(response: ServerResponse, statusOnFinish: () => number): void {
    let counted = false;
    const count = (status: number) => {
      if (counted) return;
      counted = true;
      this.requests.inc({ status: String(status) });
    };
    response.once('finish', () => count(statusOnFinish()));
    response.once('close', () => count(499));
  }

  /** A batch's plan: its size, its clusterings, its gated contexts, and how long planning took. */
  observePlan(plan: BatchPlan): void {
    this.adaptationSeconds.observe({ stage: 'features' }, plan.featuresMs / 1000);
    this.adaptationSeconds.observe({ stage: 'clustering' }, plan.clusteringMs / 1000);
    for (const { mode, clusters, points } of plan.clusterings) {
      this.clustersPerBatch.observe(clusters);
      if (mode === 'batch') this.clusteredWith.observe(points);
    }
    for (const { gate } of plan.rows) if (gate !== null && gate.similarity !== null) this.hypernetContexts.inc({ outcome: gate.gated ? 'gated' : 'adapted' });
    this.batchSize.observe(plan.rows.length);
  }

  /** Where the engine-yield counter reads from: the seconds the inference thread has waited out claims so far. */
  watchEngineYield(source: () => number): void {
    this.engineYieldSource = source;
  }

  /** Where the queue-depth gauge reads from. */
  watchQueue(source: () => number): void {
    this.queueSource = source;
  }
}
