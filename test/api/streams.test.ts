/**
 * Streams end cleanly: a deadline inside a stream sends an error event and then `data: [DONE]`; /metrics counts
 * the stream's real outcome and a client that hangs up (499), each under its own status.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { MODEL, sseData, startApp } from '../helpers/app.js';

let app: FastifyInstance;
let base: string;
// A deadline far below what the longest stream the context allows can take, even on a fast machine.
let hurriedApp: FastifyInstance;
let hurriedBase: string;
before(async () => {
  app = await startApp({ maxWaitMs: 5 });
  hurriedApp = await startApp({ maxWaitMs: 5, requestTimeoutMs: 40 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  await hurriedApp.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  hurriedBase = `http://127.0.0.1:${(hurriedApp.server.address() as AddressInfo).port}`;
});
after(async () => {
  await app.close();
  await hurriedApp.close();
});

const body = (extra: Record<string, unknown>) => JSON.stringify({ model: MODEL, prompt: 'The whale', temperature: 0, ignore_eos: true, ...extra });

async function counter(status: number, server = base): Promise<number> {
  const text = await (await fetch(`${server}/metrics`)).text();
  return Number(new RegExp(`chameleon_requests_total\\{status="${status}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
}

test('a deadline inside a stream: an error event, then data: [DONE]; counted as 504', async () => {
  const before504 = await counter(504, hurriedBase);
  const res = await fetch(`${hurriedBase}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 250, stream: true }) });
  assert.equal(res.status, 200);
  const events = sseData(await res.text());
  assert.equal(events.at(-1), '[DONE]');
  const error = events.at(-2) as { error: Record<string, unknown> };
  assert.equal(error.error.code, 'timeout');
  assert.deepEqual(Object.keys(error.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(await counter(504, hurriedBase), before504 + 1);
});

test('a client that hangs up mid-stream is counted as 499', async () => {
  const before499 = await counter(499);
  const controller = new AbortController();
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 30, stream: true }), signal: controller.signal });
  const reader = res.body!.getReader();
  await reader.read();
  controller.abort();
  for (let i = 0; i < 100 && (await counter(499)) === before499; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await counter(499), before499 + 1);
  const ok = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body({ max_tokens: 2 }) });
  assert.equal(ok.status, 200, 'the server serves on');
});
