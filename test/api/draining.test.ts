/**
 * A request that arrives while the server drains (SIGTERM) is refused with 503 shutting_down, in OpenAI's
 * error shape, by the route itself: not with fastify's own 503 body, nor with "still loading".
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { buildApp } from '../../src/app.js';
import { configWith } from '../../src/config.js';
import { ServiceError } from '../../src/errors.js';
import type { CompletionService } from '../../src/service.js';

test('a completion sent during the drain gets 503 shutting_down in OpenAI shape', async () => {
  const service: CompletionService = {
    state: 'draining',
    failure: null,
    provider: 'cpu',
    modelName: 'm',
    contextLength: 16,
    tokenizer: null,
    created: 0,
    queueFull: false,
    submit() {
      throw new ServiceError('shutting_down', 'The server is shutting down and accepts no new requests.');
    },
  };
  const app = await buildApp(configWith({ logLevel: 'silent', host: '127.0.0.1', port: 0 }), { service, logger: false });
  let releaseDrain = () => {};
  const drainHeld = new Promise<void>((resolve) => { releaseDrain = resolve; });
  app.addHook('preClose', () => drainHeld);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const closed = app.close();
  try {
    const res = await fetch(`http://127.0.0.1:${port}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', prompt: 'a' }),
    });
    assert.equal(res.status, 503);
    const body = (await res.json()) as { error: Record<string, unknown> };
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(body.error.code, 'shutting_down');
    assert.equal(body.error.type, 'server_error');
  } finally {
    releaseDrain();
    await closed;
  }
});
