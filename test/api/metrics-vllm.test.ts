/**
 * /metrics on the real server exposes vLLM's series (what the Gateway API inference extension's endpoint picker and
 * vLLM's dashboards read) with model_name = the served model, counting what the responses report; /health answers
 * as vLLM's does.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ModelPackage } from '../../src/model/package.js';
import { complete, MODEL, MODEL_DIR, sseData, startApp } from '../helpers/app.js';

const ADAPTER = `library:${ModelPackage.open(MODEL_DIR).manifest.library!.names[0]}`;
const SLOTS = 4;
const L = `{model_name="${MODEL}",engine="0"}`;

let app: FastifyInstance;
let base: string;
before(async () => {
  app = await startApp({ maxBatchSize: SLOTS, maxWaitMs: 0, idleDispatch: true });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});
after(async () => {
  await app.close();
});

/** The samples of a scrape: `name{labels}` -> value. */
async function scrape(): Promise<Map<string, number>> {
  const res = await app.inject({ url: '/metrics' });
  assert.equal(res.statusCode, 200);
  const samples = new Map<string, number>();
  for (const line of res.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

function lora(samples: Map<string, number>): { running: string; waiting: string; maxLora: string } {
  const keys = [...samples.keys()].filter((key) => key.startsWith('vllm:lora_requests_info{'));
  assert.equal(keys.length, 1);
  const label = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(keys[0])![1];
  return { running: label('running_lora_adapters'), waiting: label('waiting_lora_adapters'), maxLora: label('max_lora') };
}

test('the vLLM series count what the responses report, labelled with the served model', async () => {
  const start = await scrape();
  for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc', 'vllm:prompt_tokens_total', 'vllm:generation_tokens_total',
    'vllm:time_to_first_token_seconds_count', 'vllm:inter_token_latency_seconds_count', 'vllm:e2e_request_latency_seconds_count']) {
    assert.equal(start.get(`${name}${L}`), 0, `${name}${L} before any request`);
  }
  assert.deepEqual(lora(start), { running: '', waiting: '', maxLora: String(SLOTS) });

  const common = { temperature: 0, ignore_eos: true, max_tokens: 6 };
  const bodies = [
    { ...common, prompt: 'The whale rose from the sea' },
    { ...common, prompt: ['The ship sailed', 'Hi Bob, the meeting moved'], adaptation: 'static' },
    { ...common, prompt: 'Permission is hereby granted', model: ADAPTER },
    { ...common, prompt: 'Call me Ishmael.', adaptation: 'none', max_tokens: 3 },
  ];
  let promptTokens = 0;
  let completionTokens = 0;
  let gaps = 0;
  for (const body of bodies) {
    const res = await complete(app, body);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    promptTokens += res.body.usage.prompt_tokens;
    completionTokens += res.body.usage.completion_tokens;
    gaps += res.body.choices.length * (body.max_tokens - 1);
  }
  const streamed = await fetch(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, ...common, prompt: 'Dear team,', stream: true, stream_options: { include_usage: true } }),
  });
  const usage = (sseData(await streamed.text()).slice(0, -1).at(-1) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
  promptTokens += usage.prompt_tokens;
  completionTokens += usage.completion_tokens;
  gaps += common.max_tokens - 1;

  const s = await scrape();
  assert.equal(s.get(`vllm:prompt_tokens_total${L}`), promptTokens, 'the prompt tokens the responses report');
  assert.equal(s.get(`vllm:generation_tokens_total${L}`), completionTokens, 'the completion tokens the responses report');
  assert.equal(s.get(`vllm:time_to_first_token_seconds_count${L}`), bodies.length + 1, 'one first token per request');
  assert.equal(s.get(`vllm:e2e_request_latency_seconds_count${L}`), bodies.length + 1);
  assert.equal(s.get(`vllm:inter_token_latency_seconds_count${L}`), gaps, 'one gap between consecutive tokens of each choice');
  assert.ok(s.get(`vllm:e2e_request_latency_seconds_sum${L}`)! > 0);
  assert.equal(s.get(`vllm:num_requests_running${L}`), 0, 'nothing runs any more');
  assert.equal(s.get(`vllm:num_requests_waiting${L}`), 0);
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 0);
  assert.equal(s.get('chameleon_requests_by_mode_total{mode="static"}'), 1);
  assert.equal(s.get('chameleon_requests_by_mode_total{mode="none"}'), 1);
  assert.equal(s.get('chameleon_requests_by_mode_total{mode="adapter"}'), 1);
  assert.equal(s.get(`chameleon_adapter_requests_total{adapter="${ADAPTER}"}`), 1);
  assert.equal(s.get(`chameleon_adapter_tokens_generated_total{adapter="${ADAPTER}"}`), common.max_tokens);
  assert.equal(s.get('chameleon_tokens_generated_by_mode_total{mode="static"}'), 2 * common.max_tokens);
});

test('vllm:lora_requests_info names the adapter of a running request, and the request counts as running', async () => {
  const controller = new AbortController();
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: controller.signal,
    body: JSON.stringify({ model: ADAPTER, prompt: 'The whale', temperature: 0, ignore_eos: true, max_tokens: 240, stream: true }),
  });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  await reader.read(); // its first chunk: its row is in the engine, for about 240 more decode steps
  const s = await scrape();
  assert.deepEqual(lora(s), { running: ADAPTER, waiting: '', maxLora: String(SLOTS) });
  assert.equal(s.get(`vllm:num_requests_running${L}`), 1);
  assert.equal(s.get(`vllm:kv_cache_usage_perc${L}`), 1 / SLOTS, 'one KV-cache slot in use');
  controller.abort();
  let after = s;
  for (let i = 0; i < 200 && after.get(`vllm:num_requests_running${L}`) !== 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    after = await scrape();
  }
  assert.equal(after.get(`vllm:num_requests_running${L}`), 0, 'the request ended when its client left');
  assert.equal(lora(after).running, '');
});

test('GET /health answers as vLLM\'s: 200 once ready', async () => {
  const res = await app.inject({ url: '/health' });
  assert.equal(res.statusCode, 200);
  assert.equal(res.json().status, 'ready');
});
