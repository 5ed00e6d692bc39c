/**
 * Each kind of bad input gets its error, in OpenAI's shape, with the right status.
 */
import assert from 'node:assert/strict';
import { connect, type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/app.js';
import { FeatureExtractor } from '../../src/adaptation/features.js';
import { Scheduler, type Engine } from '../../src/batching/scheduler.js';
import type { BatchSink } from '../../src/engine/client.js';
import type { Batch, BatchStats } from '../../src/engine/protocol.js';
import { ModelPackage } from '../../src/model/package.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { CompletionService } from '../../src/service.js';
import { noAdapters } from '../helpers/stub-service.js';
import { complete, MODEL, MODEL_DIR, startApp, testConfig } from '../helpers/app.js';

function assertOpenAIError(body: any, code: string, param: string | null) {
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, code, body.error.message);
  assert.equal(body.error.param, param, body.error.message);
  assert.ok(body.error.message.length > 10);
}

describe('400, 404 on the real app', () => {
  let app: FastifyInstance;
  before(async () => {
    app = await startApp({ maxWaitMs: 5 });
  });
  after(async () => {
    await app.close();
  });

  const cases: Array<[string, Record<string, unknown>, string, string | null]> = [
    ['a missing prompt', { prompt: undefined }, 'invalid_request', 'prompt'],
    ['a prompt of the wrong type', { prompt: 42 }, 'invalid_request', 'prompt'],
    ['an empty prompt array', { prompt: [] }, 'invalid_request', 'prompt'],
    ['a negative max_tokens', { prompt: 'a', max_tokens: -1 }, 'invalid_request', 'max_tokens'],
    ['a fractional max_tokens', { prompt: 'a', max_tokens: 1.5 }, 'invalid_request', 'max_tokens'],
    ['a temperature above 2', { prompt: 'a', temperature: 3 }, 'invalid_request', 'temperature'],
    ['top_p of 0', { prompt: 'a', top_p: 0 }, 'invalid_request', 'top_p'],
    ['a negative top_k', { prompt: 'a', top_k: -2 }, 'invalid_request', 'top_k'],
    ['logprobs above 5', { prompt: 'a', logprobs: 6 }, 'invalid_request', 'logprobs'],
    ['five stop strings', { prompt: 'a', stop: ['a', 'b', 'c', 'd', 'e'] }, 'invalid_request', 'stop'],
    ['an unknown adaptation mode', { prompt: 'a', adaptation: 'cluster' }, 'invalid_request', 'adaptation'],
    ['n of 0', { prompt: 'a', n: 0 }, 'invalid_request', 'n'],
    ['best_of other than 1', { prompt: 'a', best_of: 3 }, 'unsupported_parameter', 'best_of'],
    ['a suffix', { prompt: 'a', suffix: 'x' }, 'unsupported_parameter', 'suffix'],
    ['a presence penalty above 2', { prompt: 'a', presence_penalty: 2.5 }, 'invalid_request', 'presence_penalty'],
    ['a logit bias outside the vocabulary', { prompt: 'a', logit_bias: { '50256': -100 } }, 'invalid_request', 'logit_bias'],
  ];
  for (const [what, body, code, param] of cases) {
    test(`400 for ${what}`, async () => {
      const res = await complete(app, body);
      assert.equal(res.status, 400);
      assertOpenAIError(res.body, code, param);
    });
  }

  test('400 for a missing model', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/completions', payload: { prompt: 'a' } });
    assert.equal(res.statusCode, 400);
    assertOpenAIError(res.json(), 'invalid_request', 'model');
  });

  test('400 for a body that is not JSON', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': 'application/json' }, payload: '{"model": ' });
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.type, 'invalid_request_error');
  });

  test('400 for a prompt longer than the context', async () => {
    const context = app.chameleon.service.contextLength;
    const res = await complete(app, { prompt: 'the whale '.repeat(context), max_tokens: 1 });
    assert.equal(res.status, 400);
    assertOpenAIError(res.body, 'context_length_exceeded', 'prompt');
    assert.match(res.body.error.message, new RegExp(`maximum context length is ${context} tokens`));
  });

  test('400 for prompt + max_tokens beyond the context', async () => {
    const context = app.chameleon.service.contextLength;
    const scored = await complete(app, { prompt: 'The whale', max_tokens: 0 });
    const fed = scored.body.usage.prompt_tokens + (app.chameleon.service.tokenizer!.addBos ? 1 : 0);
    const res = await complete(app, { prompt: 'The whale', max_tokens: context - fed + 1 });
    assert.equal(res.status, 400);
    assertOpenAIError(res.body, 'context_length_exceeded', 'max_tokens');
    const fits = await complete(app, { prompt: 'The whale', max_tokens: context - fed, temperature: 0, ignore_eos: true });
    assert.equal(fits.status, 200, JSON.stringify(fits.body));
    assert.equal(fits.body.usage.completion_tokens, context - fed, 'the whole context can be used');
  });

  test('404 for an unknown model, in the body or the path', async () => {
    const res = await complete(app, { model: 'gpt-4', prompt: 'a' });
    assert.equal(res.status, 404);
    assertOpenAIError(res.body, 'model_not_found', 'model');
    const path = await app.inject({ url: '/v1/models/gpt-4' });
    assert.equal(path.statusCode, 404);
    assertOpenAIError(path.json(), 'model_not_found', 'model');
  });

  test('404 for an unknown route', async () => {
    const res = await app.inject({ url: '/v1/chat/nothing' });
    assert.equal(res.statusCode, 404);
    assertOpenAIError(res.json(), 'not_found', null);
  });

  test('405 with Allow for a path that exists under other methods', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/completions' });
    assert.equal(res.statusCode, 405);
    assert.equal(res.headers.allow, 'POST');
    assertOpenAIError(res.json(), 'method_not_allowed', null);
    const param = await app.inject({ method: 'PUT', url: '/v1/adapters/some-name?x=1' });
    assert.equal(param.statusCode, 405);
    assert.equal(param.headers.allow, 'DELETE');
  });
});

describe('503 before the model is ready', () => {
  test('completions and readiness answer 503 until the warm-up passed, then 200', async () => {
    const app = await buildApp(testConfig());
    try {
      const early = await complete(app, { prompt: 'a', max_tokens: 1 });
      assert.equal(early.status, 503);
      assertOpenAIError(early.body, 'not_ready', null);
      assert.equal(early.headers['retry-after'], '1');
      const notReady = await app.inject({ url: '/health/ready' });
      assert.equal(notReady.statusCode, 503);
      assert.equal((await app.inject({ url: '/health/live' })).statusCode, 200);
      await app.chameleon.started;
      assert.equal((await app.inject({ url: '/health/ready' })).statusCode, 200);
      assert.equal((await complete(app, { prompt: 'a', max_tokens: 1 })).status, 200);
    } finally {
      await app.close();
    }
  });
});

describe('the prompts of one request: at most min(MAX_BATCH_SIZE, QUEUE_SIZE)', () => {
  /** A ready service with the real tokenizer whose queue is full by the time a request has been admitted. */
  const service = (): CompletionService => {
    const model = ModelPackage.open(MODEL_DIR);
    return {
      ...noAdapters(MODEL),
      state: 'ready', failure: null, provider: 'cpu', modelName: MODEL, contextLength: model.dims.context,
      tokenizer: model.tokenizer, created: 0, queueRoom: 16, submit: () => 'full',
    };
  };
  const prompts = (n: number) => Array.from({ length: n }, (_, i) => `prompt ${i}`);

  for (const [limits, setting] of [[{ queueSize: 2, maxBatchSize: 4 }, 'QUEUE_SIZE'], [{ queueSize: 8, maxBatchSize: 2 }, 'MAX_BATCH_SIZE']] as const) {
    test(`a request with more prompts than ${setting} (the smaller) is refused with 400 (param prompt), not a 429 that retrying never cures`, async () => {
      const app = await buildApp(testConfig(limits), { service: service(), logger: false });
      try {
        const over = await complete(app, { prompt: prompts(3), max_tokens: 1 });
        assert.equal(over.status, 400);
        assertOpenAIError(over.body, 'invalid_request', 'prompt');
        assert.equal(over.body.error.message, `At most 2 prompts per request (${setting}); got 3.`);
        const fits = await complete(app, { prompt: prompts(2), max_tokens: 1 });
        assert.equal(fits.status, 429, 'as many as the limit are admitted (and then meet the full queue)');
        assertOpenAIError(fits.body, 'queue_full', null);
      } finally {
        await app.close();
      }
    });
  }
});

/** An engine that holds every batch until released: the queue fills up deterministically. */
class HeldEngine implements Engine {
  private releases: Array<() => void> = [];
  run(job: Batch, sink: BatchSink): Promise<BatchStats> {
    return new Promise((resolve) => {
      this.releases.push(() => {
        sink.onEvents(job.rows.map((_, row) => ({ row, text: '', finish: 'length' as const, completionTokens: 0 })));
        resolve({ batchId: job.batchId, rows: job.rows.length, hypernetMs: 0, prefillMs: 0, decodeSteps: 0, decodeMs: 0, tokens: 0 });
      });
    });
  }
  cancel(): void {}
  get running(): number {
    return this.releases.length;
  }
  releaseAll(): void {
    const all = this.releases;
    this.releases = [];
    for (const r of all) r();
  }
}

/** Sends `head` on a fresh connection and reads the first response the server writes (one with a Content-Length). */
function rawResponse(port: number, head: string): Promise<{ statusLine: string; headers: Record<string, string>; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    socket.on('data', (chunk) => {
      data += chunk.toString('utf8');
      const split = data.indexOf('\r\n\r\n');
      if (split < 0) return;
      const [statusLine, ...lines] = data.slice(0, split).split('\r\n');
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const body = data.slice(split + 4);
      if (Buffer.byteLength(body) < Number(headers['content-length'])) return;
      socket.destroy();
      resolve({ statusLine: statusLine!, headers, body });
    });
    socket.on('error', reject);
    socket.write(head);
  });
}

describe('429 when the queue is full', () => {
  test('the request beyond QUEUE_SIZE is refused with Retry-After (before any 100 Continue); the admitted ones complete', async () => {
    const config = testConfig({ queueSize: 2, maxBatchSize: 1, maxWaitMs: 0, retryAfterSeconds: 3 });
    const model = ModelPackage.open(MODEL_DIR);
    const metrics = new Metrics({ defaultMetrics: false });
    const engine = new HeldEngine();
    const features = new FeatureExtractor(model.readTensor('embeddings'), model.dims.vocab_size, model.dims.d_model, [0]);
    const scheduler = new Scheduler(engine, { features, domains: { factors: () => { throw new Error('no library'); } }, gate: null }, config, metrics, { debug() {}, error() {} });
    scheduler.start();
    const service: CompletionService = {
      ...noAdapters(MODEL),
      state: 'ready', failure: null, provider: 'cpu', modelName: MODEL, contextLength: model.dims.context,
      tokenizer: model.tokenizer, created: 0, get queueRoom() { return scheduler.queueRoom; }, submit: (c) => scheduler.submit(c),
    };
    const logLines: string[] = [];
    const app = await buildApp(config, { service, metrics, logger: { level: 'info', stream: { write: (line: string) => { logLines.push(line); } } } });
    try {
      const first = complete(app, { prompt: 'one', max_tokens: 1 });
      while (engine.running === 0) await new Promise((r) => setTimeout(r, 5)); // batch 1 holds the engine
      const queued = [complete(app, { prompt: 'two', max_tokens: 1 }), complete(app, { prompt: 'three', max_tokens: 1 })];
      while (scheduler.queueRoom > 0) await new Promise((r) => setTimeout(r, 5));
      const refused = await complete(app, { prompt: 'four', max_tokens: 1 });
      assert.equal(refused.status, 429);
      assertOpenAIError(refused.body, 'queue_full', null);
      assert.equal(refused.body.error.type, 'rate_limit_error');
      assert.equal(refused.headers['retry-after'], '3');
      // Over a real socket the refusal is sent before fastify handles the request (api/fast-refusal.ts): same
      // answer, and a client that waits for 100 Continue before sending its body gets it from its headers alone.
      await app.listen({ host: '127.0.0.1', port: 0 });
      const expecting = await rawResponse((app.server.address() as AddressInfo).port,
        'POST /v1/completions?x=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Id: burst-7\r\nExpect: 100-continue\r\nContent-Length: 40\r\n\r\n');
      assert.equal(expecting.statusLine, 'HTTP/1.1 429 Too Many Requests');
      assert.equal(expecting.headers['retry-after'], '3');
      assert.equal(expecting.headers['x-request-id'], 'burst-7');
      assert.equal(expecting.headers.connection, 'close', 'its body was never sent: the connection cannot be reused');
      assertOpenAIError(JSON.parse(expecting.body), 'queue_full', null);
      assert.ok(logLines.some((line) => line.includes('"reqId":"req-')), 'fastify logs the requests it handles');
      assert.ok(!logLines.some((line) => line.includes('burst-7')), 'the early refusal never reached fastify');
      // other routes are served as usual while the queue is full
      const models = await rawResponse((app.server.address() as AddressInfo).port, 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(models.statusLine, 'HTTP/1.1 200 OK');
      const timer = setInterval(() => engine.releaseAll(), 5);
      const done = await Promise.all([first, ...queued]);
      clearInterval(timer);
      assert.deepEqual(done.map((r) => r.status), [200, 200, 200]);
      const metricsText = (await app.inject({ url: '/metrics' })).body;
      assert.match(metricsText, /chameleon_requests_total\{status="429"\} 2/);
    } finally {
      const release = setInterval(() => engine.releaseAll(), 5); // so that a failed assertion does not leave the drain waiting
      await app.close();
      await scheduler.drain();
      clearInterval(release);
    }
  });
});
