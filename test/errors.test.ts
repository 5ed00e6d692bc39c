/**
 * What a client sees of each kind of error, through the real app on a stub service (no engine): the status, and
 * the OpenAI error's code, type and param, Retry-After where retrying helps, and nothing else in the body.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { buildApp } from '../src/app.js';
import type { Completion } from '../src/batching/completion.js';
import type { Config } from '../src/config.js';
import { ServiceError } from '../src/errors.js';
import { ModelPackage } from '../src/model/package.js';
import type { CompletionService } from '../src/service.js';
import { MODEL, MODEL_DIR, testConfig } from './helpers/app.js';
import { noAdapters } from './helpers/stub-service.js';

const model = ModelPackage.open(MODEL_DIR);

/** A ready service with the real tokenizer whose queue takes every request and never answers it. */
function stubService(overrides: Partial<CompletionService> = {}): CompletionService {
  return {
    ...noAdapters(MODEL),
    state: 'ready', failure: null, provider: 'cpu', modelName: MODEL, contextLength: model.dims.context,
    tokenizer: model.tokenizer, created: 0, queueRoom: 16, submit: () => 'queued',
    ...overrides,
  };
}

async function withApp(service: CompletionService, config: Partial<Config>, use: (app: FastifyInstance) => Promise<void>): Promise<void> {
  const app = await buildApp(testConfig(config), { service, logger: false });
  try {
    await use(app);
  } finally {
    await app.close();
  }
}

const completion = (app: FastifyInstance, body: Record<string, unknown> = {}) =>
  app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'The whale', max_tokens: 1, ...body } });

interface Expected { status: number; code: string; type: string; param?: string | null; retryAfter?: string }

function assertError(res: LightMyRequestResponse, expected: Expected): string {
  assert.equal(res.statusCode, expected.status, res.body);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  const body = res.json();
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, expected.code);
  assert.equal(body.error.type, expected.type);
  assert.equal(body.error.param, expected.param ?? null);
  assert.equal(res.headers['retry-after'], expected.retryAfter);
  assert.ok(res.headers['x-request-id'], 'an error names its request too');
  return body.error.message as string;
}

describe('a service that cannot take work answers 503, with Retry-After only while retrying can help', () => {
  test('while the model loads: not_ready, Retry-After 1, on completions and on the readiness probe', async () => {
    await withApp(stubService({ state: 'loading' }), {}, async (app) => {
      const expected = { status: 503, code: 'not_ready', type: 'server_error', retryAfter: '1' };
      assert.match(assertError(await completion(app), expected), /still loading/);
      assertError(await app.inject({ url: '/health/ready' }), expected);
      assertError(await app.inject({ url: '/health' }), expected);
    });
  });

  test('when the model failed to load: not_ready, naming the failure', async () => {
    await withApp(stubService({ state: 'failed', failure: new Error('the worker crashed') }), {}, async (app) => {
      const message = assertError(await completion(app), { status: 503, code: 'not_ready', type: 'server_error', retryAfter: '1' });
      assert.match(message, /the worker crashed/);
      assertError(await app.inject({ url: '/health' }), { status: 503, code: 'not_ready', type: 'server_error', retryAfter: '1' });
    });
  });

  test('while draining: shutting_down, without Retry-After; so too a queue that closed after the request was admitted', async () => {
    await withApp(stubService({ state: 'draining' }), {}, async (app) => {
      assertError(await completion(app), { status: 503, code: 'shutting_down', type: 'server_error' });
      assertError(await app.inject({ url: '/health' }), { status: 503, code: 'shutting_down', type: 'server_error' });
    });
    await withApp(stubService({ submit: () => 'closed' }), {}, async (app) => {
      assertError(await completion(app), { status: 503, code: 'shutting_down', type: 'server_error' });
    });
  });
});

describe('a full queue answers 429 with RETRY_AFTER_SECONDS', () => {
  test('before the body is read, and when the queue fills while the request is admitted', async () => {
    const expected = { status: 429, code: 'queue_full', type: 'rate_limit_error', retryAfter: '7' };
    await withApp(stubService({ queueRoom: 0 }), { retryAfterSeconds: 7 }, async (app) => {
      const early = assertError(await completion(app), expected);
      await withApp(stubService({ submit: () => 'full' }), { retryAfterSeconds: 7 }, async (late) => {
        assert.equal(assertError(await completion(late), expected), early, 'one refusal, one message');
      });
      assert.equal((await app.inject({ url: '/v1/models' })).statusCode, 200, 'other routes are served');
    });
  });
});

describe('bad requests answer 4xx naming the parameter', () => {
  test('schema violations, unsupported options and an unknown model', async () => {
    await withApp(stubService(), {}, async (app) => {
      const invalid = { status: 400, code: 'invalid_request', type: 'invalid_request_error' };
      assertError(await completion(app, { temperature: 3 }), { ...invalid, param: 'temperature' });
      assertError(await completion(app, { prompt: undefined }), { ...invalid, param: 'prompt' });
      assertError(await completion(app, { best_of: 2 }), { status: 400, code: 'unsupported_parameter', type: 'invalid_request_error', param: 'best_of' });
      const unknown = { status: 404, code: 'model_not_found', type: 'invalid_request_error', param: 'model' };
      const inBody = assertError(await completion(app, { model: 'gpt-4' }), unknown);
      const inPath = assertError(await app.inject({ url: '/v1/models/gpt-4' }), unknown);
      assert.equal(inPath, inBody, 'an unknown model is said one way wherever it is named');
    });
  });

  test('the wrong media type, route or method', async () => {
    await withApp(stubService(), {}, async (app) => {
      const plain = await app.inject({ method: 'POST', url: '/v1/completions', headers: { 'content-type': 'text/plain' }, payload: 'hello' });
      assertError(plain, { status: 415, code: 'unsupported_media_type', type: 'invalid_request_error' });
      assertError(await app.inject({ url: '/v1/nothing' }), { status: 404, code: 'not_found', type: 'invalid_request_error' });
      const wrongMethod = await app.inject({ url: '/v1/completions' });
      assertError(wrongMethod, { status: 405, code: 'method_not_allowed', type: 'invalid_request_error' });
      assert.equal(wrongMethod.headers.allow, 'POST');
    });
  });

  test('admin routes: 403 permission_error while disabled, 401 authentication_error with WWW-Authenticate for a wrong token', async () => {
    const load = (app: FastifyInstance, headers: Record<string, string> = {}) =>
      app.inject({ method: 'POST', url: '/v1/adapters', headers, payload: { name: 'a', path: '/nowhere' } });
    await withApp(stubService(), {}, async (app) => {
      assertError(await load(app), { status: 403, code: 'admin_disabled', type: 'permission_error' });
    });
    await withApp(stubService(), { adminToken: 'secret' }, async (app) => {
      const wrong = await load(app, { authorization: 'Bearer guess' });
      assertError(wrong, { status: 401, code: 'unauthorized', type: 'authentication_error' });
      assert.equal(wrong.headers['www-authenticate'], 'Bearer');
    });
  });
});

describe('a request that fails after admission answers with its error', () => {
  const failing = (error: ServiceError) => stubService({
    submit: (c: Completion) => {
      setImmediate(() => c.emit({ type: 'error', error }));
      return 'queued';
    },
  });

  test('504 timeout_error past the deadline, 500 server_error when the engine fails', async () => {
    await withApp(failing(new ServiceError('timeout', 'The request took longer than REQUEST_TIMEOUT_MS.')), {}, async (app) => {
      assertError(await completion(app), { status: 504, code: 'timeout', type: 'timeout_error' });
    });
    await withApp(failing(new ServiceError('engine_error', 'The engine failed.')), {}, async (app) => {
      assertError(await completion(app), { status: 500, code: 'engine_error', type: 'server_error' });
    });
  });

  test('an unexpected exception is a 500 internal_error that does not show its message', async () => {
    const service = stubService({ submit: () => { throw new Error('secret detail'); } });
    await withApp(service, {}, async (app) => {
      const message = assertError(await completion(app), { status: 500, code: 'internal_error', type: 'server_error' });
      assert.doesNotMatch(message, /secret detail/);
    });
  });
});
