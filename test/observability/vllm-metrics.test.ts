/**
 * The vLLM-named series and the per-mode / per-adapter counters, fed by the real scheduler over a scripted engine
 * whose batches finish only when the test says: running / waiting requests, KV-cache slots in use and the named
 * adapters of vllm:lora_requests_info are checked at each stage, then the token counters and latencies.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FeatureExtractor } from '../../src/adaptation/features.js';
import { Completion, type CompletionEvent, type GenerationParams } from '../../src/batching/completion.js';
import { Scheduler, type Engine } from '../../src/batching/scheduler.js';
import type { BatchSink } from '../../src/engine/client.js';
import type { Batch, BatchStats } from '../../src/engine/protocol.js';
import { Metrics } from '../../src/observability/metrics.js';

const VOCAB = 8;
const DIM = 2;
const features = new FeatureExtractor(Float32Array.from({ length: VOCAB * DIM }, (_, i) => (i % 3) + 1), VOCAB, DIM, [0]);
const noLibrary = { factors(): never { throw new Error('no library in these tests'); } };
const factors = { rank: 1, a: new Float32Array(DIM), b: new Float32Array(VOCAB) };

/** Each row gets one token at once, then a second one and its finish when the test releases the batch. */
class GatedEngine implements Engine {
  private readonly gates: Array<() => void> = [];
  batches = 0;
  async run(job: Batch, sink: BatchSink): Promise<BatchStats> {
    this.batches++;
    sink.onEvents(job.rows.map((_, row) => ({ row, token: 1, text: 'a', completionTokens: 1 })));
    await new Promise<void>((resolve) => this.gates.push(resolve));
    await new Promise((resolve) => setTimeout(resolve, 15)); // an inter-token gap well above zero
    sink.onEvents(job.rows.map((_, row) => ({ row, token: 2, text: 'b', completionTokens: 2, finish: 'length' as const })));
    return { batchId: job.batchId, rows: job.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 2, decodeMs: 0, tokens: 2 * job.rows.length };
  }
  cancel(): void {}
  /** Lets the oldest waiting batch finish. */
  release(): void {
    this.gates.shift()!();
  }
  get waiting(): number {
    return this.gates.length;
  }
}

const params = (mode: GenerationParams['mode'], adapter?: string): GenerationParams => ({
  echo: false, n: 1, mode, adaptationScale: 1, ...(adapter === undefined ? {} : { adapter: { id: adapter, factors } }),
  sampling: { maxTokens: 2, temperature: 0, topP: 1, topK: 0, seed: 1, stop: [], logprobs: null, ignoreEos: false, minTokens: 0, stopTokenIds: [] },
});

const prompt = (textTokens: number) => ({ text: 'x', ids: [0, ...Array.from({ length: textTokens }, (_, i) => 1 + (i % (VOCAB - 1)))], textTokens });

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 2));
  assert.ok(condition(), 'condition reached');
}

/** The samples of a scrape: `name{labels}` -> value, labels as exposed. */
async function scrape(metrics: Metrics): Promise<Map<string, number>> {
  const samples = new Map<string, number>();
  for (const line of (await metrics.registry.metrics()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const L = '{model_name="served-model",engine="0"}';

function loraInfo(samples: Map<string, number>): { running: string; waiting: string; maxLora: string; value: number } {
  const series = [...samples].filter(([key]) => key.startsWith('vllm:lora_requests_info{'));
  assert.equal(series.length, 1, 'one vllm:lora_requests_info series');
  const [key, value] = series[0];
  const label = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(key)![1];
  return { running: label('running_lora_adapters'), waiting: label('waiting_lora_adapters'), maxLora: label('max_lora'), value };
}

async function drainEvents(c: Completion): Promise<CompletionEvent[]> {
  const events: CompletionEvent[] = [];
  for await (const e of c.events()) events.push(e);
  return events;
}

test('vLLM series: running and waiting requests, KV slots in use, the named adapters running and waiting, tokens and latencies', async () => {
  const engine = new GatedEngine();
  const metrics = new Metrics({ defaultMetrics: false, modelName: 'served-model', slots: 2 });
  const scheduler = new Scheduler(engine, { features, domains: noLibrary, gate: null }, {
    maxBatchSize: 2, maxWaitMs: 0, targetClusterSize: 2, maxClusters: 4, queueSize: 16, idleDispatch: true, clusterInFlight: false, kmeansSeed: 0, requestTimeoutMs: 0,
  }, metrics, { debug() {}, error() {} });
  scheduler.start();

  let s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_running${L}`), 0);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 0);
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 0);
  assert.equal(s.get(`vllm:prompt_tokens_total${L}`), 0, 'the counters exist before any request');
  assert.equal(s.get(`vllm:time_to_first_token_seconds_count${L}`), 0);
  assert.deepEqual({ ...loraInfo(s), value: 0 }, { running: '', waiting: '', maxLora: '2', value: 0 });

  // a: a named adapter, one prompt, runs at once; b: another adapter, two prompts, cannot fit beside it; c waits behind b
  const a = new Completion('a', [prompt(3)], params('adapter', 'alpha'));
  const b = new Completion('b', [prompt(4), prompt(5)], params('adapter', 'beta'));
  const c = new Completion('c', [prompt(6)], params('static'));
  const results = [a, b, c].map(drainEvents);
  scheduler.submit(a);
  await until(() => a.status === 'running' && engine.waiting === 1);
  scheduler.submit(b);
  scheduler.submit(c);
  const before = Date.now() / 1000;
  s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_running${L}`), 1);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 2, 'requests, not prompts: b (2 prompts) and c');
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 0.5, 'one slot of two');
  assert.equal(s.get(`vllm:gpu_cache_usage_perc${L}`), 0.5);
  let lora = loraInfo(s);
  assert.deepEqual([lora.running, lora.waiting], ['alpha', 'beta'], 'c (static) names no adapter');
  assert.ok(Math.abs(lora.value - before) < 5, 'the value is the time of the scrape, in seconds');
  assert.equal(s.get(`vllm:prompt_tokens_total${L}`), 3, 'only the prompts sent to the engine');

  engine.release();
  await until(() => b.status === 'running' && engine.waiting === 1);
  s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_running${L}`), 1);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 1);
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 1, 'b holds both slots');
  lora = loraInfo(s);
  assert.deepEqual([lora.running, lora.waiting], ['beta', '']);

  engine.release();
  await until(() => c.status === 'running' && engine.waiting === 1);
  engine.release();
  await Promise.all(results);
  await scheduler.drain();

  s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_running${L}`), 0);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 0);
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 0);
  lora = loraInfo(s);
  assert.deepEqual([lora.running, lora.waiting], ['', '']);
  assert.equal(s.get(`vllm:prompt_tokens_total${L}`), 3 + 4 + 5 + 6);
  assert.equal(s.get(`vllm:generation_tokens_total${L}`), 8, 'two tokens for each of four prompts');
  assert.equal(s.get(`vllm:time_to_first_token_seconds_count${L}`), 3, 'one per request');
  assert.equal(s.get(`vllm:inter_token_latency_seconds_count${L}`), 4, 'one gap per prompt');
  assert.ok(s.get(`vllm:inter_token_latency_seconds_sum${L}`)! >= 4 * 0.01, 'the gaps are measured per prompt');
  assert.equal(s.get(`vllm:e2e_request_latency_seconds_count${L}`), 3);
  assert.ok(s.get(`vllm:e2e_request_latency_seconds_sum${L}`)! > s.get(`vllm:time_to_first_token_seconds_sum${L}`)!);
  assert.equal(s.get('vllm:e2e_request_latency_seconds_bucket{le="7680",model_name="served-model",engine="0"}'), 3, "vLLM's buckets");

  assert.equal(s.get('chameleon_requests_by_mode_total{mode="adapter"}'), 2);
  assert.equal(s.get('chameleon_requests_by_mode_total{mode="static"}'), 1);
  assert.equal(s.get('chameleon_adapter_requests_total{adapter="alpha"}'), 1);
  assert.equal(s.get('chameleon_adapter_requests_total{adapter="beta"}'), 1);
  assert.equal(s.get('chameleon_tokens_generated_by_mode_total{mode="adapter"}'), 6);
  assert.equal(s.get('chameleon_tokens_generated_by_mode_total{mode="static"}'), 2);
  assert.equal(s.get('chameleon_adapter_tokens_generated_total{adapter="beta"}'), 4);
  assert.equal(s.get('chameleon_tokens_generated_total'), 8);
});

test('a request cancelled while waiting leaves the waiting count and is timed to its end', async () => {
  const engine = new GatedEngine();
  const metrics = new Metrics({ defaultMetrics: false, modelName: 'served-model', slots: 1 });
  const scheduler = new Scheduler(engine, { features, domains: noLibrary, gate: null }, {
    maxBatchSize: 1, maxWaitMs: 0, targetClusterSize: 2, maxClusters: 4, queueSize: 16, idleDispatch: true, clusterInFlight: false, kmeansSeed: 0, requestTimeoutMs: 0,
  }, metrics, { debug() {}, error() {} });
  scheduler.start();
  const running = new Completion('r', [prompt(2)], params('none'));
  const gone = new Completion('g', [prompt(2)], params('adapter', 'alpha'));
  const results = [running, gone].map(drainEvents);
  scheduler.submit(running);
  await until(() => engine.waiting === 1);
  scheduler.submit(gone);
  let s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 1);
  assert.equal(loraInfo(s).waiting, 'alpha');
  gone.cancel();
  s = await scrape(metrics);
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 0);
  assert.equal(loraInfo(s).waiting, '');
  assert.equal(s.get(`vllm:e2e_request_latency_seconds_count${L}`), 1, 'an aborted request ends too, as vLLM counts it');
  engine.release();
  await Promise.all(results);
  await scheduler.drain();
  assert.equal(engine.batches, 1, 'the cancelled request never ran');
});
