/**
 * API_KEY, ADMIN_TOKEN and the throttle of failed attempts, through HTTP: the real server on the default package for
 * what a client sees (every protected route, the open probes, the official OpenAI client with and without the key),
 * and a stub service (no engine) for API_KEY_PROTECTS, the throttle and its log, and the full queue's early refusal.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import OpenAI from 'openai';
import { buildApp } from '../../src/app.js';
import type { Config } from '../../src/config.js';
import { MODEL, startApp, testConfig } from '../helpers/app.js';
import { readyStub } from '../helpers/stub-service.js';

const KEY = randomBytes(32).toString('base64url');
const ADMIN = randomBytes(32).toString('base64url');
const bearer = (key: string) => `Bearer ${key}`;

interface Reply { status: number; headers: Record<string, unknown>; body: string }

function assertError(reply: Reply, status: number, code: string, param: string | null = null): string {
  assert.equal(reply.status, status, reply.body);
  const body = JSON.parse(reply.body) as { error: Record<string, unknown> };
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, code);
  assert.equal(body.error.param, param);
  return body.error.message as string;
}

const reply = (res: LightMyRequestResponse): Reply => ({ status: res.statusCode, headers: res.headers, body: res.body });

/** One request on a fresh connection, written as it is (two header lines of one name, say); read to the close. */
function rawRequest(port: number, head: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => { data += chunk; });
    socket.on('error', reject);
    socket.on('close', () => {
      const split = data.indexOf('\r\n\r\n');
      const [statusLine, ...lines] = data.slice(0, split).split('\r\n');
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const body = data.slice(split + 4);
      assert.equal(Number(headers['content-length']), Buffer.byteLength(body), 'Content-Length is the body\'s length');
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body });
    });
    socket.write(head);
  });
}

async function stubApp(config: Partial<Config>, service = readyStub(MODEL), logLines?: string[]): Promise<FastifyInstance> {
  const logger = logLines === undefined ? false : { level: 'info', stream: { write: (line: string) => { logLines.push(line); } } };
  return buildApp(testConfig(config), { service, logger });
}

describe('API_KEY on the real server', () => {
  let app: FastifyInstance;
  let port: number;
  let address: string;

  before(async () => {
    app = await startApp({ apiKey: KEY, adminToken: ADMIN, maxWaitMs: 0 });
    address = await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as AddressInfo).port;
  });
  after(async () => {
    await app.close();
  });

  // Each injected request comes from an address of its own, so that the 401s below never add up to the throttle's limit.
  let clients = 0;
  const call = async (method: string, url: string, authorization?: string, payload?: object) => reply(await app.inject({
    method: method as 'GET', url, payload, remoteAddress: `10.0.${Math.floor(clients / 250)}.${(clients++ % 250) + 1}`,
    headers: authorization === undefined ? {} : { authorization },
  }));

  const PROTECTED: Array<[string, string, object?]> = [
    ['POST', '/v1/completions', { model: MODEL, prompt: 'The whale', max_tokens: 2 }],
    ['POST', '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 2 }],
    ['GET', '/v1/models'],
    ['GET', `/v1/models/${MODEL}`],
    ['GET', '/v1/adapters'],
    ['POST', '/tokenize', { prompt: 'The whale' }],
    ['POST', '/detokenize', { tokens: [10, 20] }],
    ['GET', '/tokenizer_info'],
    ['GET', '/metrics'],
    ['GET', '/docs'],
    ['GET', '/docs/json'],
    ['GET', '/docs/static/swagger-initializer.js'],
  ];

  test('without the key, every route but the health probes answers 401 invalid_api_key, with WWW-Authenticate; unknown paths and methods too', async () => {
    const unknown: Array<[string, string]> = [['GET', '/v1/nothing'], ['GET', '/nothing'], ['DELETE', '/v1/completions'], ['GET', '/V1/models'], ['GET', '/health/../v1/models']];
    for (const [method, url, payload] of [...PROTECTED, ...unknown]) {
      const res = await call(method, url, undefined, payload);
      const message = assertError(res, 401, 'invalid_api_key');
      assert.match(message, /Authorization: Bearer <API_KEY>/, `${method} ${url}`);
      assert.equal(JSON.parse(res.body).error.type, 'invalid_request_error');
      assert.equal(res.headers['www-authenticate'], 'Bearer', `${method} ${url}`);
    }
  });

  test('a wrong key is refused, however close: one character short, one more, one changed, another scheme, no scheme', async () => {
    const last = KEY.at(-1) === 'A' ? 'B' : 'A';
    const wrong = [bearer(KEY.slice(0, -1)), bearer(`${KEY}A`), bearer(`${KEY.slice(0, -1)}${last}`), bearer(KEY.toLowerCase() === KEY ? KEY.toUpperCase() : KEY.toLowerCase()), `Basic ${KEY}`, KEY, 'Bearer', bearer('')];
    for (const authorization of wrong) {
      for (const [method, url, payload] of [PROTECTED[0]!, PROTECTED[2]!]) {
        assertError(await call(method, url, authorization, payload), 401, 'invalid_api_key');
      }
    }
    assert.match(assertError(await call('GET', '/v1/models', bearer(`${KEY}A`)), 401, 'invalid_api_key'), /wrong/);
  });

  test('the health probes stay open, with no key or a wrong one', async () => {
    for (const url of ['/health', '/health/live', '/health/ready', '/health/live?probe=1']) {
      assert.equal((await call('GET', url)).status, 200, url);
      assert.equal((await call('GET', url, bearer('wrong'.repeat(8)))).status, 200, url);
    }
  });

  test('with the key every route answers as usual; the admin token is taken too', async () => {
    for (const [method, url, payload] of PROTECTED) {
      const res = await call(method, url, bearer(KEY), payload);
      assert.ok(res.status !== 401 && res.status < 500, `${method} ${url}: ${res.status} ${res.body.slice(0, 200)}`);
    }
    const completion = await call('POST', '/v1/completions', bearer(KEY), PROTECTED[0]![2]);
    assert.equal(completion.status, 200, completion.body);
    assert.equal(typeof JSON.parse(completion.body).choices[0].text, 'string');
    assert.equal((await call('GET', '/metrics', bearer(KEY))).status, 200);
    assert.equal((await call('GET', '/docs/json', bearer(KEY))).status, 200);
    assert.equal((await call('GET', '/v1/models', bearer(ADMIN))).status, 200);
    assert.equal((await call('GET', '/v1/models', `bearer  ${KEY} `)).status, 200, 'the scheme is case-insensitive (RFC 9110)');
  });

  test('admin routes need ADMIN_TOKEN: the API key alone gets 401 unauthorized, no key 401 invalid_api_key', async () => {
    const load = { name: 'x' }; // neither path nor examples: a 400 once both checks pass
    assertError(await call('POST', '/v1/adapters', undefined, load), 401, 'invalid_api_key');
    assert.match(assertError(await call('POST', '/v1/adapters', bearer(KEY), load), 401, 'unauthorized'), /admin token is wrong/);
    assertError(await call('DELETE', '/v1/adapters/none', bearer(KEY)), 401, 'unauthorized');
    assertError(await call('POST', '/v1/adapters', bearer(ADMIN), load), 400, 'invalid_request', 'path');
    assertError(await call('DELETE', '/v1/adapters/none', bearer(ADMIN)), 404, 'model_not_found', 'name');
  });

  test('the official OpenAI client sends its apiKey as the key: served with the right one, AuthenticationError with a wrong one', async () => {
    const client = new OpenAI({ baseURL: `${address}/v1`, apiKey: KEY, maxRetries: 0 });
    const completion = await client.completions.create({ model: MODEL, prompt: 'The ship sailed', max_tokens: 4, temperature: 0 });
    assert.equal(completion.object, 'text_completion');
    const intruder = new OpenAI({ baseURL: `${address}/v1`, apiKey: 'sk-not-the-key', maxRetries: 0 });
    await assert.rejects(intruder.models.list(), (error: unknown) => {
      assert.ok(error instanceof OpenAI.AuthenticationError);
      assert.equal(error.status, 401);
      assert.equal(error.code, 'invalid_api_key');
      return true;
    });
  });

  test('two Authorization headers are refused with 400, even when both carry the key, on open routes too', async () => {
    for (const path of ['/v1/models', '/health/live']) {
      const res = await rawRequest(port, `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: ${bearer(KEY)}\r\nAuthorization: ${bearer(KEY)}\r\nConnection: close\r\n\r\n`);
      assertError(res, 400, 'invalid_request', 'authorization');
    }
    const single = await rawRequest(port, `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: ${bearer(KEY)}\r\nConnection: close\r\n\r\n`);
    assert.equal(single.status, 200, single.body);
  });
});

describe('failed attempts are logged and throttled per address', () => {
  test('ten failures within a minute: the address then gets 429 without its key being checked, with Retry-After; probes and other addresses are served; each failure is logged at warn with the address and no credential', async () => {
    const logLines: string[] = [];
    const app = await stubApp({ apiKey: KEY }, readyStub(MODEL), logLines);
    try {
      const base = await app.listen({ host: '127.0.0.1', port: 0 });
      const get = (path: string, key?: string) => fetch(`${base}${path}`, { headers: key === undefined ? {} : { authorization: bearer(key) } });
      const guesses = Array.from({ length: 10 }, (_, i) => `guess-${i}-${'x'.repeat(32)}`);
      for (const guess of guesses) assert.equal((await get('/v1/models', guess)).status, 401);
      const refused = await get('/v1/models', KEY);
      const text = await refused.text();
      assertError({ status: refused.status, headers: {}, body: text }, 429, 'too_many_auth_failures');
      assert.equal(JSON.parse(text).error.type, 'rate_limit_error');
      const retryAfter = Number(refused.headers.get('retry-after'));
      assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
      assert.equal((await get('/health/live')).status, 200, 'the probes are not throttled');
      const elsewhere = await app.inject({ url: '/v1/models', remoteAddress: '10.9.9.9', headers: { authorization: bearer(KEY) } });
      assert.equal(elsewhere.statusCode, 200, 'another address is not throttled');

      const records = logLines.map((line) => JSON.parse(line) as { level: number; msg: string; client?: string });
      const failures = records.filter((r) => r.msg === 'authentication failed');
      assert.equal(failures.length, 10);
      for (const r of failures) {
        assert.equal(r.level, 40, 'warn');
        assert.equal(r.client, '127.0.0.1');
      }
      assert.equal(records.filter((r) => r.level === 40 && /too many failed authentications/.test(r.msg)).length, 1, 'the block is logged once');
      for (const secret of [KEY, ...guesses]) assert.ok(!logLines.some((line) => line.includes(secret)), 'no credential in the log');
    } finally {
      await app.close();
    }
  });

  test('failed admin tokens count too', async () => {
    const app = await stubApp({ apiKey: KEY, adminToken: ADMIN });
    try {
      const remove = (authorization: string) => app.inject({ method: 'DELETE', url: '/v1/adapters/x', remoteAddress: '10.2.2.2', headers: { authorization } });
      for (let i = 0; i < 10; i++) assertError(reply(await remove(bearer(KEY))), 401, 'unauthorized');
      assertError(reply(await remove(bearer(ADMIN))), 429, 'too_many_auth_failures');
    } finally {
      await app.close();
    }
  });
});

describe('API_KEY_PROTECTS and an unset API_KEY', () => {
  const statuses = async (config: Partial<Config>) => {
    const app = await stubApp(config);
    try {
      const status = async (url: string) => (await app.inject({ url })).statusCode;
      return { metrics: await status('/metrics'), docs: await status('/docs/json'), models: await status('/v1/models'), live: await status('/health/live') };
    } finally {
      await app.close();
    }
  };

  test('none opens /metrics and /docs, docs opens /metrics only; the API needs the key either way; no API_KEY, no key asked for', async () => {
    assert.deepEqual(await statuses({ apiKey: KEY, apiKeyProtects: [] }), { metrics: 200, docs: 200, models: 401, live: 200 });
    assert.deepEqual(await statuses({ apiKey: KEY, apiKeyProtects: ['docs'] }), { metrics: 200, docs: 401, models: 401, live: 200 });
    assert.deepEqual(await statuses({ apiKey: KEY, apiKeyProtects: ['metrics'] }), { metrics: 401, docs: 200, models: 401, live: 200 });
    assert.deepEqual(await statuses({}), { metrics: 200, docs: 200, models: 200, live: 200 });
  });
});

describe('the full queue\'s refusal before fastify (api/fast-refusal.ts)', () => {
  test('tells the queue is full only to a client with the key; one without gets 401', async () => {
    const app = await stubApp({ apiKey: KEY }, readyStub(MODEL, { queueRoom: 0 }));
    try {
      await app.listen({ host: '127.0.0.1', port: 0 });
      const port = (app.server.address() as AddressInfo).port;
      const post = (authorization: string) => rawRequest(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\n${authorization}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`);
      assertError(await post(''), 401, 'invalid_api_key');
      assertError(await post(`Authorization: ${bearer('guess'.repeat(8))}\r\n`), 401, 'invalid_api_key');
      assertError(await post(`Authorization: ${bearer(KEY)}\r\n`), 429, 'queue_full');
    } finally {
      await app.close();
    }
  });
});
