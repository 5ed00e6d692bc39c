/**
 * The pipeline:
 *
 *   queue -> window batcher -> features -> per clustered mode, k-means over the window's prompts of that mode and
 *   those in flight (context pools) -> adapter slots (hypernetwork inputs, library / mask selections, named
 *   adapters) -> engine (hypernetwork once per window, chunked prefill, then decode steps over a slot KV
 *   cache, one decoder run for every running row) -> per-row events routed back to each request.
 *
 * The scheduler owns waiting and running work: it admits requests into the bounded queue, closes windows,
 * and sends a window to the engine as soon as it closes while at most MAX_BATCH_SIZE prompts are in flight;
 * its rows then join the running decode. Each stage is its own module; this file wires them and owns the
 * per-window bookkeeping.
 */
import { randomInt } from 'node:crypto';
import { clusterContexts, clusterFeatures } from '../adaptation/clustering.js';
import { ContextPool } from '../adaptation/context-pool.js';
import type { DomainAdapters } from '../adaptation/domains.js';
import type { FeatureExtractor } from '../adaptation/features.js';
import type { ContextGate } from '../adaptation/gate.js';
import { CLUSTERED_MODES, isClustered, planSlots, type ClusteredMode } from '../adaptation/slots.js';
import type { BatchSink } from '../engine/client.js';
import type { Batch, BatchStats, RowEvent, RowSpec } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import { WindowBatcher } from './batcher.js';
import type { Completion } from './completion.js';
import { BoundedQueue, type QueueOutcome } from './queue.js';

/** What the scheduler needs from the engine (EngineClient, or a fake in tests). */
export interface Engine {
  run(batch: Batch, sink: BatchSink): Promise<BatchStats>;
  cancel(batchId: number, rows: number[]): void;
}

export interface SchedulerOptions {
  maxBatchSize: number;
  maxWaitMs: number;
  targetClusterSize: number;
  maxClusters: number;
  queueSize: number;
  /** An idle engine takes the first request at once instead of waiting maxWaitMs for companions. */
  idleDispatch: boolean;
  /** Cluster each window's batch prompts together with the batch prompts in flight (else the window alone). */
  clusterInFlight: boolean;
  kmeansSeed: number;
  requestTimeoutMs: number;
  retryAfterSeconds: number;
}

export interface SchedulerLogger {
  debug(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

interface Row {
  completion: Completion;
  choice: number;
}

export class Scheduler {
  private readonly queue: BoundedQueue<Completion>;
  private readonly batcher: WindowBatcher<Completion>;
  private readonly pools = new Map<ClusteredMode, ContextPool<Row>>(CLUSTERED_MODES.map((m) => [m, new ContextPool<Row>()]));
  private loop: Promise<void> | null = null;
  private nextBatchId = 1;
  private inFlightRows = 0;
  private capacityWaiters: Array<() => void> = [];
  /** Per admitted request: told its batch and rows once placed (for cancellation), and when it is done. */
  private readonly placed = new WeakMap<Completion, (batchId: number, rows: number[]) => void>();
  private readonly finished = new WeakMap<Completion, () => void>();

  constructor(
    private readonly engine: Engine,
    private readonly features: FeatureExtractor,
    private readonly domains: Pick<DomainAdapters, 'factors'>,
    private readonly options: SchedulerOptions,
    private readonly metrics: Metrics,
    private readonly logger: SchedulerLogger,
    /** The package's context gate (hypernetwork contexts unlike every training domain take the static LoRA). */
    private readonly gate: ContextGate | null = null,
  ) {
    this.queue = new BoundedQueue(options.queueSize);
    this.batcher = new WindowBatcher(this.queue, options);
    metrics.watchQueue(() => this.queue.rows);
  }

  /** Prompts waiting for a batch. */
  get queued(): number {
    return this.queue.rows;
  }

  get queueFull(): boolean { return this.queue.full; }

  start(): void {
    this.loop ??= this.runLoop();
  }

  /** Queues a request unless the queue is full or closed. Its results arrive on `completion.events()`. */
  submit(completion: Completion): QueueOutcome {
    const outcome = this.queue.push(completion);
    if (outcome !== 'queued') return outcome;
    let batchId: number | null = null;
    let rows: number[] = [];
    const stop = () => {
      if (this.queue.remove(completion)) return;
      if (batchId !== null) this.engine.cancel(batchId, rows);
    };
    let timer: NodeJS.Timeout | undefined;
    if (this.options.requestTimeoutMs > 0) {
      timer = setTimeout(() => {
        stop();
        completion.emit({ type: 'error', error: new ServiceError('timeout', `The request did not finish within ${this.options.requestTimeoutMs} ms (REQUEST_TIMEOUT_MS).`) });
      }, this.options.requestTimeoutMs);
      timer.unref();
    }
    completion.onCancel(() => {
      if (timer !== undefined) clearTimeout(timer);
      stop();
      completion.emit({ type: 'error', error: new ServiceError('client_closed', 'The request was cancelled by its client (connection closed).') });
    });
    this.placed.set(completion, (id, assigned) => {
      batchId = id;
      rows = assigned;
    });
    this.finished.set(completion, () => {
      if (timer !== undefined) clearTimeout(timer);
    });
    return outcome;
  }

  /** Stops admitting, serves everything already admitted, and resolves when the last batch has finished. */
  async drain(): Promise<void> {
    this.queue.close();
    await this.loop;
  }

  private async runLoop(): Promise<void> {
    const running = new Set<Promise<void>>();
    const max = this.options.maxBatchSize;
    for (;;) {
      while (this.inFlightRows >= max) await this.capacityChanged();
      const batch = await this.batcher.next(() => max - this.inFlightRows, () => this.options.idleDispatch && this.inFlightRows === 0);
      if (batch === null) break;
      if (batch.length === 0) {
        await this.capacityChanged(); // the oldest request needs more free rows than there are
        continue;
      }
      const run: Promise<void> = this.runBatch(batch)
        .catch((error: unknown) => this.logger.error({ err: error }, 'batch failed'))
        .finally(() => running.delete(run));
      running.add(run);
    }
    await Promise.all(running);
  }

  private capacityChanged(): Promise<void> {
    return new Promise((resolve) => this.capacityWaiters.push(resolve));
  }

  private release(rows: number): void {
    if (rows === 0) return;
    this.inFlightRows -= rows;
    this.metrics.inFlight.set(this.inFlightRows);
    const waiters = this.capacityWaiters;
    this.capacityWaiters = [];
    for (const wake of waiters) wake();
  }

  private async runBatch(batch: Completion[]): Promise<void> {
    const live = batch.filter((c) => !c.finished);
    const rows: Row[] = live.flatMap((completion) => completion.prompts.map((_, choice) => ({ completion, choice })));
    if (rows.length === 0) return;
    const batchId = this.nextBatchId++;
    const dim = this.features.dim;

    let t = performance.now();
    const modes = rows.map((r) => r.completion.params.mode);
    const features = rows.map((r, i) => (isClustered(modes[i]) || modes[i] === 'request' ? this.features.feature(r.completion.prompts[r.choice].ids) : new Float32Array(dim)));
    this.metrics.adaptationSeconds.observe({ stage: 'features' }, (performance.now() - t) / 1000);
    t = performance.now();
    // Each clustered mode is clustered on its own, with the prompts of that mode in flight; the other modes take
    // no part in any context.
    const rowCluster = new Array<number>(rows.length).fill(-1);
    const clusterSize = new Array<number>(rows.length).fill(0);
    const clusteredWith = new Array<number>(rows.length).fill(rows.length);
    const clusterCount = new Array<number>(rows.length).fill(0);
    /** Prompt tokens behind each row's hypernetwork context: its cluster's members together (request mode: its own). */
    const contextTokens = rows.map((r) => r.completion.prompts[r.choice].textTokens);
    const contexts = new Map<ClusteredMode, Float32Array[]>();
    for (const mode of CLUSTERED_MODES) {
      const members = rows.flatMap((_, i) => (modes[i] === mode ? [i] : []));
      if (members.length === 0) continue;
      const pool = this.pools.get(mode)!;
      const neighbours = this.options.clusterInFlight ? pool.entries() : [];
      const points = [...neighbours.map((n) => n.feature), ...members.map((i) => features[i])];
      const pointTokens = [...neighbours.map((n) => n.tokens), ...members.map((i) => contextTokens[i])];
      const clustering = clusterFeatures(points, {
        targetClusterSize: this.options.targetClusterSize,
        maxClusters: this.options.maxClusters,
        seed: (this.options.kmeansSeed + batchId) % 2 ** 31,
      });
      contexts.set(mode, clusterContexts(points, clustering, dim));
      const memberCount = new Array<number>(clustering.k).fill(0);
      const memberTokens = new Array<number>(clustering.k).fill(0);
      clustering.assignments.forEach((c, p) => {
        memberCount[c]++;
        memberTokens[c] += pointTokens[p];
      });
      members.forEach((i, j) => {
        rowCluster[i] = clustering.assignments[neighbours.length + j];
        clusterSize[i] = memberCount[rowCluster[i]];
        contextTokens[i] = memberTokens[rowCluster[i]];
        clusteredWith[i] = points.length;
        clusterCount[i] = clustering.k;
        pool.add(rows[i], features[i], pointTokens[neighbours.length + j]);
      });
      this.metrics.clustersPerBatch.observe(clustering.k);
      if (mode === 'batch') this.metrics.clusteredWith.observe(points.length);
    }
    const plan = planSlots(
      rows.map((r, i) => ({ mode: modes[i], feature: features[i], cluster: rowCluster[i], contextTokens: contextTokens[i], adapter: r.completion.params.adapter })),
      contexts, dim, (mode, context) => this.domains.factors(mode, context), this.gate,
    );
    for (let i = 0; i < rows.length; i++) {
      if (plan.similarities[i] !== null) this.metrics.hypernetContexts.inc({ outcome: plan.gated[i] ? 'gated' : 'adapted' });
    }
    this.metrics.adaptationSeconds.observe({ stage: 'clustering' }, (performance.now() - t) / 1000);
    this.metrics.batchSize.observe(rows.length);
    this.inFlightRows += rows.length;
    this.metrics.inFlight.set(this.inFlightRows);
    let released = 0;

    const remaining = new Map<Completion, number>();
    const firstToken = new Set<Completion>();
    for (const completion of live) {
      const indices = rows.flatMap((r, i) => r.completion === completion ? [i] : []);
      remaining.set(completion, indices.length);
      this.placed.get(completion)?.(batchId, indices);
      const mode = completion.params.mode;
      completion.emit({
        type: 'batched',
        batch: {
          batchId,
          batchSize: clusteredWith[indices[0]],
          clusters: clusterCount[indices[0]],
          clusterIndices: indices.map((i) => Math.max(rowCluster[i], 0)),
          clusterSizes: indices.map((i) => (isClustered(mode) ? clusterSize[i] : mode === 'request' ? 1 : 0)),
          contextSimilarities: indices.map((i) => plan.similarities[i]),
          gated: indices.map((i) => plan.gated[i]),
          dynamicWeights: indices.map((i) => plan.dynamicWeights[i]),
          mode,
          adapter: completion.params.adapter?.id ?? null,
          adaptationScale: completion.params.adaptationScale,
        },
      });
    }

    const specs: RowSpec[] = rows.map((r, i) => {
      const prompt = r.completion.prompts[r.choice];
      const p = r.completion.params;
      return {
        promptIds: prompt.ids,
        bosAdded: prompt.ids.length > prompt.textTokens,
        adapterIndex: plan.slots[i],
        adaptationScale: p.adaptationScale,
        promptLogprobs: p.echo && p.logprobs !== null,
        sampling: { maxTokens: p.maxTokens, temperature: p.temperature, topP: p.topP, topK: p.topK, seed: p.seed ?? randomInt(0, 2 ** 32), stop: p.stop, logprobs: p.logprobs, ignoreEos: p.ignoreEos },
      };
    });

    const onEvents = (events: RowEvent[]) => {
      for (const event of events) {
        const { completion, choice } = rows[event.row];
        if (event.token !== undefined) {
          this.metrics.tokensGenerated.inc();
          if (!firstToken.has(completion)) {
            firstToken.add(completion);
            this.metrics.timeToFirstToken.observe((performance.now() - completion.arrivedAt) / 1000);
          }
        }
        if (event.token !== undefined || event.text !== '') {
          completion.emit({ type: 'text', choice, text: event.text, ...(event.logprob ? { logprob: event.logprob } : {}) });
        }
        if (event.finish !== undefined) {
          this.leavePool(rows[event.row]);
          completion.emit({ type: 'finish', choice, reason: event.finish, completionTokens: event.completionTokens });
          released++;
          this.release(1);
          const left = remaining.get(completion)! - 1;
          remaining.set(completion, left);
          if (left === 0) this.complete(completion);
        }
      }
    };

    try {
      const stats = await this.engine.run(
        { batchId, rows: specs, contexts: plan.contexts, contextCount: plan.count, contextWeights: plan.contextWeights, factors: plan.factors },
        {
          onAdapted: (ms) => this.metrics.adaptationSeconds.observe({ stage: 'hypernet' }, ms / 1000),
          onPrompt: (row, logprobs) => rows[row].completion.emit({ type: 'prompt', choice: rows[row].choice, logprobs }),
          onEvents,
        },
      );
      this.logger.debug({ ...stats, hypernetContexts: plan.count, readyAdapters: plan.factors.length }, 'batch done');
    } catch (error) {
      const failure = new ServiceError('engine_error', `Inference failed: ${(error as Error).message}`, { cause: error });
      for (const completion of live) if (!completion.finished) completion.emit({ type: 'error', error: failure });
      throw error;
    } finally {
      for (const row of rows) this.leavePool(row);
      this.release(rows.length - released);
      for (const completion of live) this.complete(completion);
    }
  }

  /** The prompt finished (or failed): it no longer shapes the context of later windows of its mode. */
  private leavePool(row: Row): void {
    const mode = row.completion.params.mode;
    if (isClustered(mode)) this.pools.get(mode)!.remove(row);
  }

  private complete(completion: Completion): void {
    this.finished.get(completion)?.();
    completion.emit({ type: 'done' });
  }
}
