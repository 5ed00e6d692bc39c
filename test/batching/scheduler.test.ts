/**
 * The scheduler with a scripted engine: routing (each caller gets exactly its own rows), batching,
 * cancellation, deadlines, drain.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeatureExtractor } from '../../src/adaptation/features.js';
import { Completion, type CompletionEvent, type GenerationParams, type RequestSampling } from '../../src/batching/completion.js';
import { Scheduler, type Engine, type SchedulerConfig } from '../../src/batching/scheduler.js';
import type { BatchSink } from '../../src/engine/client.js';
import type { Batch, BatchStats } from '../../src/engine/protocol.js';
import { ServiceError } from '../../src/errors.js';
import { Metrics } from '../../src/observability/metrics.js';

const VOCAB = 8;
const DIM = 2;
const features = new FeatureExtractor(Float32Array.from({ length: VOCAB * DIM }, (_, i) => (i % 3) + 1), VOCAB, DIM, [0]);

const noLibrary = { factors(): never { throw new Error('no library in these tests'); } };

/** Echoes each row's prompt ids back as text, one id per step, tagged with the row's slot. */
class EchoEngine implements Engine {
  jobs: Batch[] = [];
  cancelled: number[] = [];
  stepDelayMs = 0;
  async run(job: Batch, sink: BatchSink): Promise<BatchStats> {
    this.jobs.push(job);
    const longest = Math.max(...job.rows.map((r) => r.sampling.maxTokens));
    for (let step = 0; step < longest; step++) {
      if (this.stepDelayMs > 0) await new Promise((r) => setTimeout(r, this.stepDelayMs));
      const events = job.rows.flatMap((r, row) => {
        if (step >= r.sampling.maxTokens || this.cancelled.includes(row)) return [];
        const last = step === r.sampling.maxTokens - 1;
        return [{ row, token: r.promptIds[step % r.promptIds.length], text: `${r.promptIds[step % r.promptIds.length]}`, completionTokens: step + 1, ...(last ? { finish: 'length' as const } : {}) }];
      });
      sink.onEvents(events);
    }
    const cancelledEvents = this.cancelled.map((row) => ({ row, text: '', finish: 'cancelled' as const, completionTokens: 0 }));
    if (cancelledEvents.length > 0) sink.onEvents(cancelledEvents);
    return { batchId: job.batchId, rows: job.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: longest, decodeMs: 0, tokens: 0 };
  }
  cancel(_batchId: number, rows: number[]): void {
    this.cancelled.push(...rows);
  }
}

const params = (over: Partial<Omit<GenerationParams, 'sampling'> & RequestSampling> = {}): GenerationParams => {
  const { echo = false, mode = 'batch', adaptationScale = 1, adapter, n = 1, ...sampling } = over;
  return { echo, mode, adaptationScale, adapter, n, sampling: { maxTokens: 3, temperature: 0, topP: 1, topK: 0, seed: 1, stop: [], logprobs: null, ignoreEos: false, minTokens: 0, stopTokenIds: [], ...sampling } };
};

function scheduler(engine: Engine, over: Partial<SchedulerConfig> = {}) {
  const s = new Scheduler(engine, { features, domains: noLibrary, gate: null }, {
    maxBatchSize: 8, maxWaitMs: 30, targetClusterSize: 2, maxClusters: 4, queueSize: 16, idleDispatch: false, clusterInFlight: false, kmeansSeed: 0, requestTimeoutMs: 0, ...over,
  }, new Metrics({ defaultMetrics: false }), { debug() {}, error() {} });
  s.start();
  return s;
}

async function collect(c: Completion): Promise<CompletionEvent[]> {
  const events: CompletionEvent[] = [];
  for await (const e of c.events()) events.push(e);
  return events;
}

test('requests of one window share a batch; each caller gets exactly its own rows', async () => {
  const engine = new EchoEngine();
  const s = scheduler(engine);
  const completions = [[0, 1, 2], [0, 3], [0, 5, 6, 7]].map((ids, i) => new Completion(`r${i}`, [{ text: `p${i}`, ids, textTokens: ids.length - 1 }], params({ maxTokens: i + 1 })));
  for (const c of completions) s.submit(c);
  const results = await Promise.all(completions.map(collect));
  assert.equal(engine.jobs.length, 1);
  results.forEach((events, i) => {
    const batched = events[0];
    assert.equal(batched.type, 'batched');
    if (batched.type === 'batched') assert.equal(batched.batch.batchSize, 3);
    const text = events.flatMap((e) => (e.type === 'text' ? [e.text] : [])).join('');
    const ids = completions[i].prompts[0].ids;
    assert.equal(text, ids.slice(0, i + 1).join(''), `request ${i} got its own tokens`);
    assert.deepEqual(events.at(-1), { type: 'done' });
    assert.deepEqual(events.at(-2), { type: 'finish', choice: 0, reason: 'length', completionTokens: i + 1 });
  });
  await s.drain();
});

test('modes map to slots; several prompts of one request stay in one batch', async () => {
  const engine = new EchoEngine();
  const s = scheduler(engine);
  const multi = new Completion('m', [{ text: 'a', ids: [0, 1], textTokens: 1 }, { text: 'b', ids: [0, 2], textTokens: 1 }], params({ mode: 'request' }));
  const none = new Completion('n', [{ text: 'c', ids: [0, 3], textTokens: 1 }], params({ mode: 'none' }));
  const stat = new Completion('s', [{ text: 'd', ids: [0, 4], textTokens: 1 }], params({ mode: 'static' }));
  for (const c of [multi, none, stat]) s.submit(c);
  await Promise.all([multi, none, stat].map(collect));
  const job = engine.jobs[0];
  assert.deepEqual(job.rows.map((r) => r.adapterIndex), [2, 3, 0, 1]);
  assert.equal(job.contextCount, 2);
  await s.drain();
});

test('n choices are rows of their own that share their prompt\'s plan; a seeded choice j draws with seed + j', async () => {
  const engine = new EchoEngine();
  const s = scheduler(engine);
  const sampled = new Completion('n3', [{ text: 'a', ids: [0, 1], textTokens: 1 }, { text: 'b', ids: [0, 2], textTokens: 1 }], params({ mode: 'request', n: 3, seed: 40 }));
  const other = new Completion('o', [{ text: 'c', ids: [0, 3], textTokens: 1 }], params({ mode: 'batch' }));
  for (const c of [sampled, other]) s.submit(c);
  const [events] = await Promise.all([collect(sampled), collect(other)]);
  const job = engine.jobs[0];
  assert.equal(job.rows.length, 7);
  // one hypernetwork context per prompt, not per choice: the three choices of a prompt share its adapter
  assert.equal(job.contextCount, 3);
  assert.deepEqual(job.rows.slice(0, 6).map((r) => r.adapterIndex), [2, 2, 2, 3, 3, 3]);
  assert.deepEqual(job.rows.slice(0, 6).map((r) => r.sampling.seed), [40, 41, 42, 40, 41, 42]);
  assert.deepEqual(job.rows.slice(0, 6).map((r) => r.promptIds), [[0, 1], [0, 1], [0, 1], [0, 2], [0, 2], [0, 2]]);
  const finished = events.flatMap((e) => (e.type === 'finish' ? [e.choice] : []));
  assert.deepEqual(finished.sort(), [0, 1, 2, 3, 4, 5]);
  const batched = events[0];
  assert.ok(batched.type === 'batched' && batched.batch.clusterIndices.length === 6);
  await s.drain();
});

test('a request cancelled while queued never reaches the engine', async () => {
  const engine = new EchoEngine();
  const s = scheduler(engine, { maxWaitMs: 50 });
  const gone = new Completion('gone', [{ text: 'x', ids: [0, 1], textTokens: 1 }], params());
  const kept = new Completion('kept', [{ text: 'y', ids: [0, 2], textTokens: 1 }], params());
  s.submit(gone);
  s.submit(kept);
  gone.cancel();
  const events = await collect(kept);
  assert.equal(events.at(-1)?.type, 'done');
  assert.equal(engine.jobs[0].rows.length, 1);
  await s.drain();
});

test('a request past REQUEST_TIMEOUT_MS gets a 504 error and its rows are cancelled', async () => {
  const engine = new EchoEngine();
  engine.stepDelayMs = 20;
  const s = scheduler(engine, { requestTimeoutMs: 60, maxWaitMs: 0 });
  const slow = new Completion('slow', [{ text: 'x', ids: [0, 1], textTokens: 1 }], params({ maxTokens: 50 }));
  s.submit(slow);
  const events = await collect(slow);
  const last = events.at(-1);
  assert.equal(last?.type, 'error');
  if (last?.type === 'error') {
    assert.ok(last.error instanceof ServiceError);
    assert.equal(last.error.status, 504);
  }
  assert.deepEqual(engine.cancelled, [0]);
  await s.drain();
});

test('drain serves what was admitted, then refuses newcomers as closed', async () => {
  const engine = new EchoEngine();
  const s = scheduler(engine, { maxWaitMs: 20 });
  const admitted = new Completion('a', [{ text: 'x', ids: [0, 1], textTokens: 1 }], params());
  s.submit(admitted);
  const done = collect(admitted);
  await s.drain();
  assert.equal((await done).at(-1)?.type, 'done');
  assert.equal(s.submit(new Completion('late', [{ text: 'y', ids: [0, 1], textTokens: 1 }], params())), 'closed');
});

test('windows run concurrently, never more than MAX_BATCH_SIZE prompts in flight', async () => {
  const engine = new EchoEngine();
  engine.stepDelayMs = 5;
  let peak = 0;
  const run = engine.run.bind(engine);
  let inFlight = 0;
  engine.run = (job, sink) => {
    inFlight += job.rows.length; // unfinished rows
    peak = Math.max(peak, inFlight);
    return run(job, { ...sink, onEvents: (events) => {
      inFlight -= events.filter((e) => e.finish !== undefined).length;
      sink.onEvents(events);
    } });
  };
  const s = scheduler(engine, { maxBatchSize: 4, maxWaitMs: 1 });
  const completions = Array.from({ length: 10 }, (_, i) => new Completion(`r${i}`, [{ text: 'x', ids: [0, 1 + (i % 5)], textTokens: 1 }], params({ maxTokens: 2 + (i % 4) })));
  for (const c of completions) s.submit(c);
  const results = await Promise.all(completions.map(collect));
  for (const events of results) assert.equal(events.at(-1)?.type, 'done');
  assert.ok(peak <= 4, `peak ${peak} prompts in flight`);
  assert.ok(engine.jobs.length >= 3, 'several windows');
  await s.drain();
});
