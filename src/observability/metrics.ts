/**
 * Prometheus metrics (prom-client), one registry per app so that several apps (tests) can live in a process.
 */
import type { ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BatchPlan } from '../adaptation/planner.js';

const SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const SIZES = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256];

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
  private queueSource: () => number = () => 0;

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
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

  /** Where the queue-depth gauge reads from. */
  watchQueue(source: () => number): void {
    this.queueSource = source;
  }
}
