/**
 * Entry of the inference worker thread: owns the ONNX Runtime sessions and runs one batch at a time.
 * Talks to the main thread only through the messages in protocol.ts.
 */
import { parentPort } from 'node:worker_threads';
import { ModelPackageError } from '../errors.js';
import { ModelPackage } from '../model/package.js';
import { generateBatch, type GenerateHooks } from './generator.js';
import type { FromWorker, GenerateMessage, InitMessage, ToWorker } from './protocol.js';
import { OrtRuntime } from './runtime.js';

if (parentPort === null) throw new Error('engine/worker must run in a worker thread');
const port = parentPort;

let runtime: OrtRuntime | null = null;
let pkg: ModelPackage | null = null;
let queue: Promise<void> = Promise.resolve();
const cancelled = new Map<number, Set<number>>();

function post(message: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(message, transfer);
}

async function init(message: InitMessage): Promise<void> {
  const warnings: string[] = [];
  try {
    pkg = ModelPackage.open(message.modelDir);
    runtime = await OrtRuntime.create(pkg, {
      device: message.device,
      threads: message.threads,
      warn: (text) => {
        warnings.push(text);
        post({ type: 'log', level: 'warn', message: text });
      },
    });
    const started = performance.now();
    await warmUp(runtime, pkg);
    post({ type: 'ready', provider: runtime.provider, warnings, warmupMs: performance.now() - started });
  } catch (error) {
    const kind = error instanceof ModelPackageError ? 'package' : 'runtime';
    post({ type: 'init-error', kind, message: (error as Error).message });
  }
}

/** One tiny batch through every path (hypernetwork, prefill, a decode step, sampling). */
async function warmUp(rt: OrtRuntime, model: ModelPackage): Promise<void> {
  const tok = model.tokenizer;
  const ids = tok.encodePrompt('Hello');
  const rows = [0, 1, 2].map((slot) => ({
    promptIds: slot === 2 ? ids.slice(0, 1) : ids,
    bosAdded: tok.addBos,
    slot,
    maxTokens: 2,
    temperature: slot === 0 ? 0 : 1,
    topP: 0.9,
    topK: 5,
    seed: slot,
    stop: [],
    logprobs: 1,
    promptLogprobs: true,
    ignoreEos: true,
  }));
  if (rows[2].promptIds.length === 0) rows.pop();
  const contexts = new Float32Array(model.dims.d_model);
  let events = 0;
  const hooks: GenerateHooks = {
    onAdapted: () => {},
    onPrompt: () => {},
    onStep: (_phase, _ms, _batch, list) => { events += list.length; },
    isCancelled: () => false,
  };
  await generateBatch(rt, tok, -1, rows, contexts, 1, hooks);
  if (events < rows.length * 2) throw new Error(`warm-up produced ${events} token events for ${rows.length} rows x 2 tokens`);
}

async function generate(message: GenerateMessage): Promise<void> {
  const { batchId } = message;
  const rt = runtime;
  const model = pkg;
  try {
    if (rt === null || model === null) throw new Error('engine is not initialised');
    const hooks: GenerateHooks = {
      onAdapted: (hypernetMs) => post({ type: 'adapted', batchId, hypernetMs, contexts: message.contextCount }),
      onPrompt: (row, logprobs) => post({ type: 'prompt', batchId, row, logprobs }),
      onStep: (phase, forwardMs, batch, events) => post({ type: 'step', batchId, phase, forwardMs, batch, events }),
      isCancelled: (row) => cancelled.get(batchId)?.has(row) ?? false,
    };
    const stats = await generateBatch(rt, model.tokenizer, batchId, message.rows, message.contexts, message.contextCount, hooks);
    post({ type: 'batch-done', batchId, stats });
  } catch (error) {
    post({ type: 'batch-error', batchId, message: (error as Error).message });
  } finally {
    cancelled.delete(batchId);
  }
}

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'init':
      queue = queue.then(() => init(message));
      break;
    case 'generate':
      if (!cancelled.has(message.batchId)) cancelled.set(message.batchId, new Set());
      queue = queue.then(() => generate(message));
      break;
    case 'cancel': {
      const set = cancelled.get(message.batchId);
      if (set !== undefined) for (const row of message.rows) set.add(row);
      break;
    }
    case 'close':
      queue = queue.then(async () => {
        await runtime?.release();
        runtime = null;
        port.close();
      });
      break;
  }
});
