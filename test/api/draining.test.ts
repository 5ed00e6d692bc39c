/**
 * While the server drains (SIGTERM), it no longer listens, and a request that was already received when the
 * drain began is answered with 503 shutting_down in OpenAI's shape (not fastify's own 503 body, nor "still
 * loading"), with Connection: close.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { buildApp } from '../../src/app.js';
import { configWith } from '../../src/config.js';
import { ServiceError } from '../../src/errors.js';
import type { CompletionService } from '../../src/service.js';
import { noAdapters } from '../helpers/stub-service.js';

test('a completion received before the drain and admitted during it gets 503 shutting_down; new connections are refused', async () => {
  let state: CompletionService['state'] = 'ready';
  const service: CompletionService = {
    ...noAdapters('m'),
    get state() { return state; },
    failure: null,
    provider: 'cpu',
    modelName: 'm',
    contextLength: 16,
    tokenizer: null,
    created: 0,
    queueRoom: 16,
    submit: () => 'closed',
  };
  const app = await buildApp(configWith({ logLevel: 'silent', host: '127.0.0.1', port: 0 }), { service, logger: false });
  let inHandler = () => {};
  const reached = new Promise<void>((resolve) => { inHandler = resolve; });
  let releaseHandler = () => {};
  const held = new Promise<void>((resolve) => { releaseHandler = resolve; });
  app.addHook('preHandler', async () => {
    inHandler();
    await held;
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const pending = fetch(`http://127.0.0.1:${port}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', prompt: 'a' }),
  });
  await reached;
  state = 'draining';
  const closed = app.close();
  await assert.rejects(fetch(`http://127.0.0.1:${port}/health/live`), 'no longer listening');
  releaseHandler();
  const res = await pending;
  assert.equal(res.status, 503);
  assert.equal(res.headers.get('connection'), 'close');
  const body = (await res.json()) as { error: Record<string, unknown> };
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, 'shutting_down');
  assert.equal(body.error.type, 'server_error');
  await closed;
  await app.connections.settled();
});
