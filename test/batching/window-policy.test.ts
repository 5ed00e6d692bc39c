/**
 * The window policy under saturation: 32 clients, each sending its next request as soon as the last one ends,
 * with mixed output lengths, so that the engine's rows free up one or two at a time. Every batch request must
 * still be clustered with a full batch's worth of prompts (the batch prompts in flight), never more than MAX_BATCH_SIZE
 * prompts may be in flight, and every caller gets its own rows.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeatureExtractor } from '../../src/adaptation/features.js';
import { Completion, type BatchInfo, type GenerationParams } from '../../src/batching/completion.js';
import { Scheduler, type Engine } from '../../src/batching/scheduler.js';
import type { BatchSink } from '../../src/engine/client.js';
import type { Batch, BatchStats } from '../../src/engine/protocol.js';
import { Random } from '../../src/engine/sampling.js';
import { Metrics } from '../../src/observability/metrics.js';

const VOCAB = 64;
const DIM = 8;
const table = (() => {
  const rng = new Random(5);
  return Float32Array.from({ length: VOCAB * DIM }, () => rng.next() - 0.5);
})();
const features = new FeatureExtractor(table, VOCAB, DIM, [0]);

/** Continuous batching in miniature: every row makes one token per tick; rows leave as soon as they are done. */
class TickingEngine implements Engine {
  inFlight = 0;
  peak = 0;
  async run(job: Batch, sink: BatchSink): Promise<BatchStats> {
    this.inFlight += job.rows.length;
    this.peak = Math.max(this.peak, this.inFlight);
    const left = job.rows.map((r) => r.sampling.maxTokens);
    for (let step = 1; left.some((n) => n > 0); step++) {
      await new Promise((resolve) => setTimeout(resolve, 1));
      const events = job.rows.flatMap((r, row) => {
        if (left[row] === 0) return [];
        left[row]--;
        if (left[row] === 0) this.inFlight--;
        return [{ row, token: 1, text: `${r.promptIds[1]}.`, completionTokens: step, ...(left[row] === 0 ? { finish: 'length' as const } : {}) }];
      });
      sink.onEvents(events);
    }
    return { batchId: job.batchId, rows: job.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 0, decodeMs: 0, tokens: 0 };
  }
  cancel(): void {}
}

const params = (maxTokens: number): GenerationParams => ({
  sampling: { maxTokens, temperature: 0, topP: 1, topK: 0, seed: 1, stop: [], logprobs: null, ignoreEos: true, minTokens: 0, stopTokenIds: [] }, n: 1, echo: false, mode: 'batch', adaptationScale: 1,
});

const noLibrary = { factors(): never { throw new Error('no library in these tests'); } };

async function saturate(clusterInFlight: boolean): Promise<{ infos: BatchInfo[]; peak: number }> {
  const engine = new TickingEngine();
  const scheduler = new Scheduler(engine, { features, domains: noLibrary, gate: null }, {
    maxBatchSize: 32, maxWaitMs: 5, targetClusterSize: 4, maxClusters: 8, queueSize: 256, idleDispatch: true, clusterInFlight, kmeansSeed: 0, requestTimeoutMs: 0,
  }, new Metrics({ defaultMetrics: false }), { debug() {}, error() {} });
  scheduler.start();
  const rng = new Random(3);
  const infos: BatchInfo[] = [];
  let sent = 0;
  const client = async () => {
    while (sent < 400) {
      const id = sent++;
      const ids = [0, 1 + (id % (VOCAB - 1)), ...Array.from({ length: 2 + Math.floor(rng.next() * 6) }, () => 1 + Math.floor(rng.next() * (VOCAB - 1)))];
      const completion = new Completion(`r${id}`, [{ text: '', ids, textTokens: ids.length - 1 }], params(8 + Math.floor(rng.next() * 49)));
      scheduler.submit(completion);
      let text = '';
      for await (const event of completion.events()) {
        if (event.type === 'batched') infos.push(event.batch);
        if (event.type === 'text') text += event.text;
        if (event.type === 'error') throw event.error;
      }
      assert.equal(text, `${ids[1]}.`.repeat(completion.params.sampling.maxTokens), 'each caller gets its own rows');
    }
  };
  await Promise.all(Array.from({ length: 32 }, client));
  await scheduler.drain();
  return { infos: infos.slice(64), peak: engine.peak }; // past the ramp-up
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

test('under saturation with mixed lengths, batch requests are still clustered in large windows', async () => {
  const { infos, peak } = await saturate(true);
  const clusteredWith = mean(infos.map((i) => i.batchSize));
  const clusterSize = mean(infos.map((i) => i.clusterSizes[0]));
  assert.ok(peak <= 32, `at most MAX_BATCH_SIZE prompts in flight (peak ${peak})`);
  assert.ok(clusteredWith >= 24, `mean prompts clustered with ${clusteredWith.toFixed(1)} (goal >= 24)`);
  assert.ok(clusterSize >= 3, `mean cluster that formed the context ${clusterSize.toFixed(2)} (goal >= 3)`);
  for (const info of infos) assert.ok(info.clusterSizes[0] >= 1 && info.clusterSizes[0] <= info.batchSize);
});

test('clustering each window alone, the same traffic collapses to tiny windows (what the pool prevents)', async () => {
  const { infos } = await saturate(false);
  const clusteredWith = mean(infos.map((i) => i.batchSize));
  assert.ok(clusteredWith < 12, `mean window ${clusteredWith.toFixed(1)}`);
});
