/**
 * The main thread's handle on the inference worker: starts it, waits for the warm-up, sends batches and
 * routes the worker's events to each batch's sink. Nothing here blocks: the worker does the ONNX runs.
 */
import { Worker } from 'node:worker_threads';
import { EngineError, ModelPackageError } from '../errors.js';
import {
  engineSettings, type BatchStats, type EngineSettingsInput, type ForwardListener, type FromWorker, type GenerateMessage, type Batch, type LoraFactors,
  type RowEvent, type ToWorker, type TokenLogprob, type Waiter,
} from './protocol.js';

export interface EngineLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** What an engine is started with: its settings, and where the worker's logs go. */
export type EngineStart = EngineSettingsInput & { logger: EngineLogger };

/** Receives one batch's events, in order. */
export interface BatchSink {
  onAdapted?(hypernetMs: number, contexts: number): void;
  onPrompt(row: number, logprobs: TokenLogprob[]): void;
  /** The batch's rows' events of one decoder run. */
  onEvents(events: RowEvent[]): void;
}

/**
 * Starts the worker thread: dist/engine/worker.js once compiled; under tsx (tests, development) the worker
 * first registers tsx's loader, which Node does not carry into worker threads, and then imports worker.ts.
 */
function spawnWorker(): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./worker.js', here), { name: 'chameleon-engine' });
  const entry = new URL('./worker.ts', here).href;
  const boot = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { eval: true, name: 'chameleon-engine' });
}

export class EngineClient {
  private readonly pending = new Map<number, Waiter<BatchStats> & { sink: BatchSink }>();
  private readonly adapting = new Map<number, Waiter<LoraFactors[]>>();
  private nextAdaptId = 1;
  private failure: Error | null = null;
  private closing = false;
  private failureListeners: Array<(error: Error) => void> = [];
  private exited = false;
  private forwardListeners: ForwardListener[] = [];

  private constructor(
    private readonly worker: Worker,
    readonly provider: string,
    private readonly logger: EngineLogger,
  ) {
    worker.on('message', (message: FromWorker) => this.dispatch(message));
    worker.on('error', (error) => this.fail(new EngineError(`inference worker failed: ${error.message}`, { cause: error })));
    worker.on('exit', (code) => {
      this.exited = true;
      if (!this.closing) this.fail(new EngineError(`inference worker exited (code ${code})`));
    });
  }

  /** Starts the worker, loads the package and runs the warm-up; rejects with ModelPackageError or EngineError. */
  static start({ logger, ...settings }: EngineStart): Promise<EngineClient> {
    return new Promise((resolve, reject) => {
      const worker = spawnWorker();
      let settled = false;
      const settle = (fn: () => void) => {
        if (!settled) {
          settled = true;
          worker.off('message', onMessage);
          worker.off('error', onError);
          worker.off('exit', onExit);
          fn();
        }
      };
      const onMessage = (message: FromWorker) => {
        if (message.type === 'log') {
          logger[message.level === 'debug' ? 'info' : message.level]({ ...message.data }, message.message);
        } else if (message.type === 'ready') {
          settle(() => resolve(new EngineClient(worker, message.provider, logger)));
          logger.info({ provider: message.provider, warmupMs: Math.round(message.warmupMs) }, 'inference engine ready');
        } else if (message.type === 'init-error') {
          void worker.terminate();
          settle(() => reject(message.kind === 'package' ? new ModelPackageError(message.message) : new EngineError(message.message)));
        }
      };
      const onError = (error: Error) => settle(() => reject(new EngineError(`inference worker failed to start: ${error.message}`, { cause: error })));
      const onExit = (code: number) => settle(() => reject(new EngineError(`inference worker exited during start (code ${code})`)));
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
      worker.postMessage({ type: 'init', settings: engineSettings(settings) } satisfies ToWorker);
    });
  }

  onForward(listener: ForwardListener): void {
    this.forwardListeners.push(listener);
  }

  /** Called once if the worker dies (crash, or exit) while not being closed. */
  onFailure(listener: (error: Error) => void): void {
    this.failureListeners.push(listener);
  }

  /**
   * Sends one batch; its rows join the running decode at the next step (batches run concurrently, up to what
   * the caller admits). Resolves with its stats once every row has finished.
   */
  run(batch: Batch, sink: BatchSink): Promise<BatchStats> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new EngineError('inference engine is closed'));
    return new Promise((resolve, reject) => {
      this.pending.set(batch.batchId, { sink, resolve, reject });
      const message: GenerateMessage = { type: 'generate', ...batch };
      this.worker.postMessage(message, [batch.contexts.buffer as ArrayBuffer]);
    });
  }

  /**
   * Runs the hypernetwork alone on `count` contexts ([count, d_model]), each generated update weighted as `weights`
   * says: the factors of an adapter made from examples.
   */
  adapt(contexts: Float32Array, count: number, weights: Float32Array): Promise<LoraFactors[]> {
    if (this.failure !== null) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new EngineError('inference engine is closed'));
    const id = this.nextAdaptId++;
    return new Promise((resolve, reject) => {
      this.adapting.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'adapt', id, contexts, count, weights } satisfies ToWorker, [contexts.buffer as ArrayBuffer]);
    });
  }

  /** Stops generating for these rows of a running batch (they finish with reason 'cancelled'). */
  cancel(batchId: number, rows: number[]): void {
    if (this.pending.has(batchId)) this.worker.postMessage({ type: 'cancel', batchId, rows } satisfies ToWorker);
  }

  /** Lets queued batches finish, then stops the worker. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ type: 'close' } satisfies ToWorker);
    const timer = setTimeout(() => void this.worker.terminate(), timeoutMs);
    await exited;
    clearTimeout(timer);
    this.fail(new EngineError('inference engine closed'));
  }

  private dispatch(message: FromWorker): void {
    switch (message.type) {
      case 'log':
        this.logger[message.level === 'debug' ? 'info' : message.level]({ ...message.data }, message.message);
        return;
      case 'adapted':
        this.pending.get(message.batchId)?.sink.onAdapted?.(message.hypernetMs, message.contexts);
        return;
      case 'prompt':
        this.pending.get(message.batchId)?.sink.onPrompt(message.row, message.logprobs);
        return;
      case 'events':
        for (const { batchId, events } of message.batches) this.pending.get(batchId)?.sink.onEvents(events);
        return;
      case 'forward':
        for (const listener of this.forwardListeners) listener(message.phase, message.forwardMs, message.rows, message.tokens);
        return;
      case 'batch-done': {
        const pending = this.pending.get(message.batchId);
        this.pending.delete(message.batchId);
        pending?.resolve(message.stats);
        return;
      }
      case 'adapter': {
        const waiter = this.adapting.get(message.id);
        this.adapting.delete(message.id);
        if (message.error !== undefined) waiter?.reject(new EngineError(message.error));
        else waiter?.resolve(message.factors);
        return;
      }
      case 'batch-error': {
        const pending = this.pending.get(message.batchId);
        this.pending.delete(message.batchId);
        this.logger.error({ batchId: message.batchId }, `batch failed: ${message.message}`);
        pending?.reject(new EngineError(message.message));
        return;
      }
      default:
        return;
    }
  }

  private fail(error: Error): void {
    if (this.failure === null && !(this.closing && error.message === 'inference engine closed')) {
      this.logger.error({ err: error }, error.message);
    }
    const first = this.failure === null;
    this.failure ??= error;
    if (first && !this.closing) for (const listener of this.failureListeners) listener(error);
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      pending.reject(error);
    }
    for (const [id, waiter] of this.adapting) {
      this.adapting.delete(id);
      waiter.reject(error);
    }
  }
}
