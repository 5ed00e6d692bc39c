/**
 * Entry of the inference worker thread: owns the ONNX Runtime sessions and the decode loop. Batches arrive as
 * 'generate' messages and join the running decode at its next step; results go back as messages
 * (protocol.ts), the only link with the main thread.
 */
import { execFileSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import type { EnginePriority } from '../config.js';
import { ModelPackageError } from '../errors.js';
import { ModelPackage } from '../model/package.js';
import { CoreClaim } from './core-claim.js';
import { DecodeLoop, type BatchHooks } from './decode-loop.js';
import { FIRST_BATCH_ADAPTER, STATIC_ADAPTER, ZERO_ADAPTER, type AdaptMessage, type FromWorker, type EngineSettings, type GenerateMessage, type RowEvent, type RowSpec, type ToWorker } from './protocol.js';
import { OrtRuntime } from './runtime.js';

if (parentPort === null) throw new Error('engine/worker must run in a worker thread');
const port = parentPort;

let runtime: OrtRuntime | null = null;
let loop: DecodeLoop | null = null;
let ready: Promise<void> = Promise.resolve();
const cancelled = new Map<number, Set<number>>();

function post(message: FromWorker): void {
  port.postMessage(message);
}

/** Events of the current decoder run, posted as one message once the run's events are all in. */
let runEvents: Array<{ batchId: number; events: RowEvent[] }> = [];
function postEvents(batchId: number, events: RowEvent[]): void {
  if (runEvents.length === 0) {
    queueMicrotask(() => {
      post({ type: 'events', batches: runEvents });
      runEvents = [];
    });
  }
  runEvents.push({ batchId, events });
}

/**
 * Lowers this thread's scheduling priority (Linux: a thread is a task with its own scheduling class and nice value,
 * and the ONNX Runtime threads the sessions start inherit both), so that when the cores are busy the event loop
 * (HTTP, health checks) runs first and inference takes what is left. `idle` puts the thread in SCHED_IDLE: a waking
 * thread of any other class preempts it at once, where a nice value only weighs its share. Node has no binding for
 * sched_setscheduler, so util-linux's `chrt` sets it. Returns a warning where it cannot be done.
 */
function lowerPriority(priority: EnginePriority): string | null {
  if (priority === 0) return null;
  const unapplied = (why: string) => `ENGINE_NICE=${priority} could not be applied to the inference thread (${why}); it runs at the event loop's priority`;
  let thread: number;
  try {
    thread = Number(readlinkSync('/proc/thread-self').split('/').pop());
  } catch (error) {
    return unapplied((error as Error).message);
  }
  if (priority === 'idle') {
    try {
      execFileSync('chrt', ['--idle', '--pid', '0', String(thread)], { stdio: 'pipe', timeout: 5000 });
      return null;
    } catch (error) {
      const chrtFailure = (error as Error).message.split('\n')[0];
      const niceFailure = setNice(thread, LOWEST_NICE);
      return niceFailure === null
        ? `ENGINE_NICE=idle: chrt could not put the inference thread in SCHED_IDLE (${chrtFailure}); it runs at nice ${LOWEST_NICE} instead`
        : unapplied(`chrt: ${chrtFailure}; nice ${LOWEST_NICE}: ${niceFailure}`);
    }
  }
  const niceFailure = setNice(thread, priority);
  return niceFailure === null ? null : unapplied(niceFailure);
}

const LOWEST_NICE = 19;

/** Sets a thread's nice value; returns why it could not, or null. */
function setNice(thread: number, nice: number): string | null {
  try {
    setPriority(thread, nice);
    return null;
  } catch (error) {
    return (error as Error).message;
  }
}

async function init(settings: EngineSettings): Promise<void> {
  const niceWarning = lowerPriority(settings.priority);
  if (niceWarning !== null) post({ type: 'log', level: 'warn', message: niceWarning });
  try {
    const pkg = ModelPackage.open(settings.modelDir);
    runtime = await OrtRuntime.create(pkg, settings, (text) => post({ type: 'log', level: 'warn', message: text }));
    const started = performance.now();
    await warmUp(new DecodeLoop(runtime, pkg.tokenizer, settings), pkg);
    const claim = settings.coreClaim === null ? null : new CoreClaim(settings.coreClaim);
    loop = new DecodeLoop(runtime, pkg.tokenizer, settings, {
      onForward: (phase, forwardMs, rows, tokens) => post({ type: 'forward', phase, forwardMs, rows, tokens }),
      yieldToEvents: () => {
        claim?.waitOut();
        return new Promise((resolve) => setImmediate(resolve));
      },
    });
    post({ type: 'ready', provider: runtime.provider, warmupMs: performance.now() - started });
  } catch (error) {
    const kind = error instanceof ModelPackageError ? 'package' : 'runtime';
    post({ type: 'init-error', kind, message: (error as Error).message });
  }
}

/**
 * Two small batches through every path: hypernetwork, prefill, joining a running decode, sampling, logprobs (a base-only
 * package has no hypernetwork: every row reads the zero adapter).
 */
async function warmUp(warm: DecodeLoop, pkg: ModelPackage): Promise<void> {
  const tok = pkg.tokenizer;
  // at most 4 ids, so that the longer batch (8 prompt ids, 3 generated) fits the shortest MAX_MODEL_LEN (16)
  const ids = tok.encodePrompt('Hello').slice(0, 4);
  const adaptive = pkg.adaptive !== null;
  const spec = (adapterIndex: number, promptIds: number[]): RowSpec => ({
    promptIds, bosAdded: tok.addBos, adapterIndex: adaptive ? adapterIndex : ZERO_ADAPTER, adaptationScale: adapterIndex === FIRST_BATCH_ADAPTER ? 0.5 : 1, promptLogprobs: true,
    sampling: { maxTokens: 3, temperature: adapterIndex === ZERO_ADAPTER ? 0 : 1, topP: 0.9, topK: 5, seed: adapterIndex, stop: [], logprobs: 1, ignoreEos: true, minTokens: 0, stopTokenIds: [] },
  });
  let events = 0;
  const hooks: BatchHooks = { onAdapted() {}, onPrompt() {}, onEvents: (list) => { events += list.length; }, isCancelled: () => false };
  const contextCount = adaptive ? 1 : 0;
  const batch = (batchId: number, rows: RowSpec[]) => ({
    batchId, rows, contexts: new Float32Array(pkg.dims.d_model), contextCount, contextWeights: new Float32Array(contextCount).fill(1), factors: [],
  });
  const first = warm.submit(batch(-1, [spec(ZERO_ADAPTER, ids), spec(STATIC_ADAPTER, ids), spec(FIRST_BATCH_ADAPTER, ids)]), hooks);
  const second = warm.submit(batch(-2, [spec(FIRST_BATCH_ADAPTER, [...ids, ...ids])]), hooks);
  await Promise.all([first, second]);
  if (events !== 4 * 3) throw new Error(`warm-up produced ${events} token events, expected 12`);
}

function generate(message: GenerateMessage): void {
  const { batchId } = message;
  if (loop === null) {
    post({ type: 'batch-error', batchId, message: 'engine is not initialised' });
    return;
  }
  const hooks: BatchHooks = {
    onAdapted: (hypernetMs) => post({ type: 'adapted', batchId, hypernetMs, contexts: message.contextCount }),
    onPrompt: (row, logprobs) => post({ type: 'prompt', batchId, row, logprobs }),
    onEvents: (events) => postEvents(batchId, events),
    isCancelled: (row) => cancelled.get(batchId)?.has(row) ?? false,
  };
  loop.submit({ batchId, rows: message.rows, contexts: message.contexts, contextCount: message.contextCount, contextWeights: message.contextWeights, factors: message.factors }, hooks).then(
    (stats) => post({ type: 'batch-done', batchId, stats }),
    (error: Error) => post({ type: 'batch-error', batchId, message: error.message }),
  ).finally(() => cancelled.delete(batchId));
}

/** The hypernetwork's factors for each context, split per context (an adapter made from examples). */
async function adapt(message: AdaptMessage): Promise<void> {
  const { id, contexts, count, weights } = message;
  try {
    if (runtime === null) throw new Error('engine is not initialised');
    const part = await runtime.hypernet(contexts, count, weights);
    const D = part.a.length / (count * part.rank);
    const V = part.b.length / (count * part.rank);
    const factors = Array.from({ length: count }, (_, k) => ({
      rank: part.rank,
      a: part.a.slice(k * part.rank * D, (k + 1) * part.rank * D),
      b: part.b.slice(k * V * part.rank, (k + 1) * V * part.rank),
    }));
    post({ type: 'adapter', id, factors });
  } catch (error) {
    post({ type: 'adapter', id, factors: [], error: (error as Error).message });
  }
}

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'init':
      ready = init(message.settings);
      break;
    case 'generate':
      cancelled.set(message.batchId, new Set());
      void ready.then(() => generate(message));
      break;
    case 'cancel':
      for (const row of message.rows) cancelled.get(message.batchId)?.add(row);
      break;
    case 'adapt':
      void ready.then(() => adapt(message));
      break;
    case 'close':
      void ready.then(async () => {
        await loop?.drained();
        await runtime?.release();
        runtime = null;
        port.close();
      });
      break;
  }
});
