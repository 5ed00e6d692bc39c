/**
 * Load shedding while the engine runs, over real sockets: a burst is refused before fastify sees it (the requests
 * still arriving count against the queue), the engine gives the event loop the cores while it refuses, and every
 * accepted request is answered once with its own content.
 */
import assert from 'node:assert/strict';
import { Agent, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import type { Config } from '../../src/config.js';
import { MODEL, startApp } from '../helpers/app.js';

interface Reply { status: number; body: string }

function post(agent: Agent, port: number, path: string, body: unknown): Promise<Reply> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** A server on a real port whose log lines are kept: fastify logs each request it handles, the early refusal does not. */
async function listening(overrides: Partial<Config>): Promise<{ app: FastifyInstance; port: number; handled: () => number[] }> {
  const lines: string[] = [];
  const app = await startApp({ maxWaitMs: 2, ...overrides }, { logger: { level: 'info', stream: { write: (line: string) => { lines.push(line); } } } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const handled = () => lines.map((line) => JSON.parse(line) as { msg: string; res?: { statusCode: number } }).filter((l) => l.msg === 'request completed').map((l) => l.res!.statusCode);
  return { app, port: (app.server.address() as AddressInfo).port, handled };
}

async function yieldSeconds(app: FastifyInstance): Promise<number> {
  const text = (await app.inject({ url: '/metrics' })).body;
  return Number(/^chameleon_engine_yield_seconds_total (\S+)$/m.exec(text)?.[1]);
}

/** `count` concurrent completions from new connections, each echoing its own prompt, half on each route. */
function burst(port: number, count: number): Promise<Array<{ prompt: string; reply: Reply; chat: boolean }>> {
  const agent = new Agent({ keepAlive: false, maxSockets: count });
  return Promise.all(Array.from({ length: count }, async (_, i) => {
    const prompt = `burst ${i} says`;
    const chat = i % 4 === 3;
    const reply = chat
      ? await post(agent, port, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: prompt }], max_tokens: 4, temperature: 0 })
      : await post(agent, port, '/v1/completions', { model: MODEL, prompt, max_tokens: i % 2 === 0 ? 0 : 8, echo: true, temperature: 0 });
    return { prompt, reply, chat };
  }));
}

describe('a burst while the engine decodes', () => {
  test('is refused before fastify (arriving requests count against the queue); the engine waits out the claims; every accepted request gets its own answer', async () => {
    const { app, port, handled } = await listening({ queueSize: 4, maxBatchSize: 2 });
    try {
      const agent = new Agent({ keepAlive: true });
      const long = post(agent, port, '/v1/completions', { model: MODEL, prompt: 'a long one', max_tokens: 200, ignore_eos: true, temperature: 0 });
      await new Promise((r) => setTimeout(r, 100));
      const before = await yieldSeconds(app);
      const replies = await burst(port, 60);
      const refused = replies.filter(({ reply }) => reply.status === 429);
      const accepted = replies.filter(({ reply }) => reply.status === 200);
      assert.equal(refused.length + accepted.length, replies.length, `statuses: ${[...new Set(replies.map(({ reply }) => reply.status))].join(', ')}`);
      assert.ok(refused.length >= 40, `${refused.length} of 60 refused with a queue of 4`);
      for (const { reply } of refused) assert.equal(JSON.parse(reply.body).error.code, 'queue_full');
      for (const { prompt, reply, chat } of accepted) {
        const choice = JSON.parse(reply.body).choices[0];
        if (chat) assert.equal(typeof choice.message.content, 'string');
        else assert.ok(choice.text.startsWith(prompt), `an accepted request got ${JSON.stringify(choice.text)} for ${JSON.stringify(prompt)}`);
      }
      const lateRefusals = handled().filter((status) => status === 429).length;
      assert.equal(lateRefusals, 0, `${lateRefusals} refusals went through fastify, parsing and tokenizing first`);
      assert.ok((await yieldSeconds(app)) > before, 'the engine paused for the refusals');
      const longReply = await long;
      assert.equal(longReply.status, 200);
      assert.equal(JSON.parse(longReply.body).usage.completion_tokens, 200, 'the running request finished in full');
      agent.destroy();
    } finally {
      await app.close();
    }
  });

  test('without refusals nothing claims the cores, and with BURST_YIELD_MS=0 the engine never pauses', async () => {
    for (const burstYieldMs of [10, 0]) {
      const { app, port } = await listening({ queueSize: 4, maxBatchSize: 2, burstYieldMs });
      try {
        const agent = new Agent({ keepAlive: true });
        const replies = await Promise.all([0, 1].map((i) => post(agent, port, '/v1/completions', { model: MODEL, prompt: `steady ${i}`, max_tokens: 40, ignore_eos: true })));
        assert.deepEqual(replies.map((r) => r.status), [200, 200]);
        if (burstYieldMs === 0) assert.ok((await burst(port, 40)).some(({ reply }) => reply.status === 429));
        assert.equal(await yieldSeconds(app), 0);
        agent.destroy();
      } finally {
        await app.close();
      }
    }
  });
});
