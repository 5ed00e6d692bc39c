/**
 * First benchmark: completion tokens per second at 1, 8 and 32 concurrent HTTP clients, and the same batch
 * shapes through a raw ONNX Runtime loop in the same run; prints the ratios (HTTP / raw).
 *
 *   npm run bench                      # defaults below
 *   BENCH_SECONDS=10 BENCH_MAX_TOKENS=32 BENCH_CONCURRENCY=1,8,32 MODEL_DIR=models/default npm run bench
 *
 * Every request asks for exactly BENCH_MAX_TOKENS greedy tokens (ignore_eos), so both sides count the same work.
 */
import { cpus } from 'node:os';
import { buildApp } from '../src/app.js';
import { chooseK } from '../src/adaptation/clustering.js';
import { configWith } from '../src/config.js';
import { ModelPackage } from '../src/model/package.js';
import { RawLoop } from './raw-loop.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const maxTokens = Number(process.env.BENCH_MAX_TOKENS ?? 32);
const levels = (process.env.BENCH_CONCURRENCY ?? '1,8,32').split(',').map(Number);
const modelDir = process.env.MODEL_DIR ?? 'models/default';
const threads = Number(process.env.THREADS ?? 0);
const spinning = process.env.ORT_SPINNING === '1';

const SUBJECTS = ['The ship', 'A letter', 'The license', 'Our nation', 'The whale', 'My friend', 'The court', 'This email'];
const prompt = (i: number) => `${SUBJECTS[i % SUBJECTS.length]} of day ${i}`;

interface Result { tokens: number; requests: number; elapsed: number; latencies: number[]; batchSizes: number[] }

async function httpLoad(url: string, model: string, clients: number): Promise<Result> {
  const result: Result = { tokens: 0, requests: 0, elapsed: 0, latencies: [], batchSizes: [] };
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  let counter = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < deadline) {
      const t = performance.now();
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, prompt: prompt(counter++), max_tokens: maxTokens, temperature: 0, ignore_eos: true }),
      });
      const body = await res.json() as { usage: { completion_tokens: number }; chameleon: { batch_size: number } };
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
      result.latencies.push(performance.now() - t);
      result.tokens += body.usage.completion_tokens;
      result.batchSizes.push(body.chameleon.batch_size);
      result.requests++;
    }
  }));
  result.elapsed = (performance.now() - started) / 1000;
  return result;
}

async function rawLoad(loop: RawLoop, pkg: ModelPackage, batch: number, clusters: number): Promise<{ tokens: number; elapsed: number; batches: number }> {
  const prompts = Array.from({ length: batch }, (_, i) => pkg.tokenizer.encodePrompt(prompt(i)));
  await loop.run({ batch, prompts, newTokens: maxTokens, clusters }); // warm-up
  const deadline = performance.now() + (seconds * 1000) / 2;
  const started = performance.now();
  let tokens = 0;
  let batches = 0;
  while (performance.now() < deadline) {
    tokens += await loop.run({ batch, prompts, newTokens: maxTokens, clusters });
    batches++;
  }
  return { tokens, elapsed: (performance.now() - started) / 1000, batches };
}

/** Sum and count of a histogram's series for one phase (prom-client's own values). */
async function histogram(metric: { get(): Promise<{ values: Array<{ metricName?: string; labels: Record<string, unknown>; value: number }> }> }, phase: string) {
  const { values } = await metric.get();
  const pick = (suffix: string) => values.find((v) => v.metricName?.endsWith(suffix) && v.labels.phase === phase)?.value ?? 0;
  return { sum: pick('_sum'), count: pick('_count') };
}

const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] ?? NaN;
const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);

const config = configWith({ modelDir, logLevel: 'warn', host: '127.0.0.1', port: 0, threads, ortSpinning: spinning, maxBatchSize: Math.max(...levels), queueSize: 1024 });
const pkg = ModelPackage.open(modelDir);
const app = await buildApp(config, { logger: false });
await app.chameleon.started;
const url = await app.listen({ host: config.host, port: 0 });
const loop = await RawLoop.open(modelDir, threads, spinning);

console.log(`chameleon-serve benchmark: model ${pkg.manifest.name} (${pkg.dims.n_layer} layers, d=${pkg.dims.d_model}, vocab ${pkg.dims.vocab_size}), ` +
  `${maxTokens} greedy tokens per request, ${seconds} s per level, ${cpus().length} CPUs, THREADS=${threads || 'default'}, ORT_SPINNING=${spinning ? 1 : 0}, ` +
  `MAX_WAIT_MS=${config.maxWaitMs}, TARGET_CLUSTER_SIZE=${config.targetClusterSize}, MAX_CLUSTERS=${config.maxClusters}`);
const rows: string[][] = [['clients', 'HTTP tok/s', 'raw ORT tok/s', 'ratio', 'rows/decode run', 'batch (window)', 'engine busy', 'p50 latency ms', 'p95 latency ms', 'requests']];
const { metrics } = app.chameleon;
// Warm-up: one request through every stage.
await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: config.modelName, prompt: prompt(0), max_tokens: maxTokens }) });
for (const clients of levels) {
  const rowsBefore = await histogram(metrics.forwardRows, 'decode');
  const busyBefore = [await histogram(metrics.forwardSeconds, 'decode'), await histogram(metrics.forwardSeconds, 'prefill')];
  const http = await httpLoad(url, config.modelName, clients);
  const rowsAfter = await histogram(metrics.forwardRows, 'decode');
  const busyAfter = [await histogram(metrics.forwardSeconds, 'decode'), await histogram(metrics.forwardSeconds, 'prefill')];
  const decodeRows = (rowsAfter.sum - rowsBefore.sum) / Math.max(1, rowsAfter.count - rowsBefore.count);
  const busy = busyAfter.reduce((s, h, i) => s + h.sum - busyBefore[i].sum, 0) / http.elapsed;
  // The raw loop runs the batch shape the decoder actually saw: the mean rows per decode run.
  const batch = Math.max(1, Math.round(decodeRows));
  const raw = await rawLoad(loop, pkg, batch, chooseK(batch, config.targetClusterSize, config.maxClusters));
  const httpRate = http.tokens / http.elapsed;
  const rawRate = raw.tokens / raw.elapsed;
  rows.push([String(clients), httpRate.toFixed(0), rawRate.toFixed(0), (httpRate / rawRate).toFixed(2), decodeRows.toFixed(1), mean(http.batchSizes).toFixed(1),
    `${(100 * busy).toFixed(0)}%`, percentile(http.latencies, 0.5).toFixed(0), percentile(http.latencies, 0.95).toFixed(0), String(http.requests)]);
}
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
for (const [i, r] of rows.entries()) {
  console.log(r.map((cell, c) => cell.padStart(widths[c])).join('  '));
  if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
}
console.log('ratio = HTTP tokens/s over raw ONNX Runtime tokens/s for the same batch shape (batch = the mean rows per decode run over HTTP);');
console.log('batch (window) = mean size of the batching windows; engine busy = share of the wall time spent in decoder runs');
await loop.close();
await app.close();
