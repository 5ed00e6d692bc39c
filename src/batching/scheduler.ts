/**
 * The scheduler owns waiting and running work (vLLM's shape): it queues admitted requests, closes batch windows
 * (batcher.ts) while at most MAX_BATCH_SIZE prompts are in flight, has each window planned (adaptation/planner.ts),
 * sends it to the engine, where its rows join the running decode, and routes each row's events back to its request.
 */
import { ContextPool } from '../adaptation/context-pool.js';
import { CLUSTERED_MODES, type ClusteredMode } from '../adaptation/modes.js';
import { planBatch, type Planner } from '../adaptation/planner.js';
import type { Config } from '../config.js';
import type { BatchSink } from '../engine/client.js';
import type { Batch, BatchStats } from '../engine/protocol.js';
import { ServiceError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import { WindowBatcher } from './batcher.js';
import { batchInfoOf, type Completion } from './completion.js';
import { BoundedQueue, type QueueOutcome } from './queue.js';
import { BatchRoute, type Row } from './route.js';

/** What the scheduler needs from the engine (EngineClient, or a fake in tests). */
export interface Engine {
  run(batch: Batch, sink: BatchSink): Promise<BatchStats>;
  cancel(batchId: number, rows: number[]): void;
}

/** A prompt of a request in a batch (its choices share it). */
interface PoolKey {
  completion: Completion;
  index: number;
}

export type SchedulerConfig = Pick<Config,
  'maxBatchSize' | 'maxWaitMs' | 'targetClusterSize' | 'maxClusters' | 'queueSize' | 'idleDispatch' | 'clusterInFlight' | 'kmeansSeed' | 'requestTimeoutMs'>;

export interface SchedulerLogger {
  debug(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export class Scheduler {
  private readonly queue: BoundedQueue<Completion>;
  private readonly batcher: WindowBatcher<Completion>;
  /** Per clustered mode, its prompts in flight, which later windows of that mode are clustered with. */
  private readonly pools = new Map<ClusteredMode, ContextPool<PoolKey>>(CLUSTERED_MODES.map((m) => [m, new ContextPool<PoolKey>()]));
  private loop: Promise<void> | null = null;
  private nextBatchId = 1;
  private inFlightRows = 0;
  private capacityWaiters: Array<() => void> = [];

  constructor(
    private readonly engine: Engine,
    private readonly planner: Planner,
    private readonly config: SchedulerConfig,
    private readonly metrics: Metrics,
    private readonly logger: SchedulerLogger,
  ) {
    this.queue = new BoundedQueue(config.queueSize);
    this.batcher = new WindowBatcher(this.queue, config);
    metrics.watchQueue(() => this.queue.rows);
  }

  get queueRoom(): number { return this.queue.room; }

  start(): void { this.loop ??= this.runLoop(); }

  /** Queues a request unless the queue is full or closed. Its results arrive on `completion.events()`. */
  submit(completion: Completion): QueueOutcome {
    const outcome = this.queue.push(completion);
    if (outcome !== 'queued') return outcome;
    this.metrics.observeAdmitted(completion);
    const stop = (error: ServiceError) => {
      if (!this.queue.remove(completion) && completion.placement !== null) this.engine.cancel(completion.placement.batchId, completion.placement.rows);
      completion.emit({ type: 'error', error });
    };
    const { requestTimeoutMs } = this.config;
    if (requestTimeoutMs > 0) {
      const timer = setTimeout(() => stop(new ServiceError('timeout', `The request did not finish within ${requestTimeoutMs} ms (REQUEST_TIMEOUT_MS).`)), requestTimeoutMs);
      timer.unref();
      completion.onEnd(() => clearTimeout(timer));
    }
    completion.onCancel(() => stop(new ServiceError('client_closed', 'The request was cancelled by its client (connection closed).')));
    return outcome;
  }

  /** Stops admitting, serves everything already admitted, and resolves when the last batch has finished. */
  async drain(): Promise<void> {
    this.queue.close();
    await this.loop;
  }

  private async runLoop(): Promise<void> {
    const running = new Set<Promise<void>>();
    const max = this.config.maxBatchSize;
    for (;;) {
      while (this.inFlightRows >= max) await this.capacityChanged();
      const window = await this.batcher.next(() => max - this.inFlightRows, () => this.config.idleDispatch && this.inFlightRows === 0);
      if (window === null) break;
      if (window.length === 0) {
        await this.capacityChanged(); // the oldest request needs more free rows than there are
        continue;
      }
      const run: Promise<void> = this.runBatch(window)
        .catch((error: unknown) => this.logger.error({ err: error }, 'batch failed'))
        .finally(() => running.delete(run));
      running.add(run);
    }
    await Promise.all(running);
  }

  private capacityChanged(): Promise<void> {
    return new Promise((resolve) => this.capacityWaiters.push(resolve));
  }

  private occupy(rows: number): void {
    this.inFlightRows += rows;
    this.metrics.inFlight.set(this.inFlightRows);
    if (rows >= 0) return;
    const waiters = this.capacityWaiters;
    this.capacityWaiters = [];
    for (const wake of waiters) wake();
  }

  private async runBatch(window: Completion[]): Promise<void> {
    const live = window.filter((c) => !c.finished);
    // a prompt is planned once, and its n choices (rows) take its plan
    const rows: Row[] = [];
    const prompts: PoolKey[] = [];
    const promptOfRow: number[] = [];
    for (const completion of live) {
      const first = prompts.length;
      completion.prompts.forEach((_, index) => prompts.push({ completion, index }));
      for (let choice = 0; choice < completion.rows; choice++) {
        rows.push({ completion, choice });
        promptOfRow.push(first + completion.promptOf(choice));
      }
    }
    if (rows.length === 0) return;
    const batchId = this.nextBatchId++;
    const { targetClusterSize, maxClusters, kmeansSeed, clusterInFlight } = this.config;
    const plan = planBatch(prompts.map((p) => p.completion.planRow(p.index)), (mode) => (clusterInFlight ? this.pools.get(mode)!.entries() : []), this.planner,
      { targetClusterSize, maxClusters, seed: (kmeansSeed + batchId) % 2 ** 31 });
    this.metrics.observePlan(plan);
    const inPool = new Map<PoolKey, number>();
    plan.rows.forEach(({ poolEntry }, i) => {
      if (poolEntry === null) return;
      this.pools.get(prompts[i].completion.params.mode as ClusteredMode)!.add(prompts[i], poolEntry.feature, poolEntry.tokens);
      inPool.set(prompts[i], prompts[i].completion.params.n);
    });
    const rowPlans = promptOfRow.map((p) => plan.rows[p]);
    this.occupy(rows.length);
    for (const completion of live) {
      const indices = rows.flatMap((r, i) => (r.completion === completion ? [i] : []));
      completion.placement = { batchId, rows: indices };
      completion.emit({ type: 'batched', batch: batchInfoOf(batchId, completion.params, indices.map((i) => rowPlans[i])) });
      this.metrics.observeRunning(completion);
    }
    // a prompt leaves its mode's pool once the last of its choices has finished
    const rowFinished = (row: number) => {
      const key = prompts[promptOfRow[row]];
      const left = inPool.get(key);
      if (left === undefined) return;
      if (left > 1) {
        inPool.set(key, left - 1);
        return;
      }
      inPool.delete(key);
      this.pools.get(key.completion.params.mode as ClusteredMode)!.remove(key);
    };
    const route = new BatchRoute(rows, this.metrics, (row) => {
      rowFinished(row);
      this.occupy(-1);
    });
    try {
      const specs = rows.map((r, i) => r.completion.rowSpec(r.choice, rowPlans[i].adapterIndex));
      const stats = await this.engine.run({ batchId, rows: specs, ...plan.adapters }, route);
      this.logger.debug({ ...stats, hypernetContexts: plan.adapters.contextCount, readyAdapters: plan.adapters.factors.length }, 'batch done');
    } catch (error) {
      route.fail(new ServiceError('engine_error', `Inference failed: ${(error as Error).message}`, { cause: error }));
      throw error;
    } finally {
      const left = route.unfinished();
      for (const row of left) rowFinished(row);
      this.occupy(-left.length);
      route.close();
    }
  }
}
