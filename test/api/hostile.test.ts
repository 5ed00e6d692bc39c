/**
 * Hostile input against the real server on a real port: whatever arrives, the answer has the right status and
 * OpenAI's error shape (with Connection: close where the socket is closed), and /health/live keeps answering.
 * Seeded and bounded: the whole file runs in well under a minute.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { MODEL, startApp, testConfig } from '../helpers/app.js';
import { Random } from '../../src/engine/sampling.js';

let app: FastifyInstance;
let port: number;

before(async () => {
  app = await startApp({ maxWaitMs: 5, headersTimeoutMs: 1000, receiveTimeoutMs: 2000 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});
after(async () => {
  await app.close();
});

interface RawReply { status: number; headers: Record<string, string>; body: string; closed: boolean; continued: boolean }

/** Writes raw bytes on a fresh connection and reads one response (the server may close after it). */
function raw(...parts: Array<string | Buffer>): Promise<RawReply> {
  return exchange(parts, null);
}

/**
 * Writes `head` and reads one final response; `deferred` (a body sent with `Expect: 100-continue`) is written only
 * after an interim 100 Continue, which the reply reports as `continued`.
 */
function exchange(head: Array<string | Buffer>, deferred: string | Buffer | null): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    let closed = false;
    let continued = false;
    const finish = () => {
      const text = data.toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`no response: ${JSON.stringify(text)}`));
      const [statusLine, ...lines] = text.slice(0, split).split('\r\n');
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      let body = text.slice(split + 4);
      if (headers['transfer-encoding'] === 'chunked') body = body.replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '');
      resolve({ status: Number(statusLine!.split(' ')[1]), headers, body, closed, continued });
    };
    socket.on('data', (chunk) => {
      data = Buffer.concat([data, chunk]);
      const interim = 'HTTP/1.1 100 Continue\r\n\r\n';
      if (deferred !== null && !continued && data.toString('latin1').startsWith(interim)) {
        continued = true;
        data = data.subarray(interim.length);
        socket.write(deferred);
      }
      const text = data.toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      const length = /content-length: (\d+)/i.exec(text.slice(0, split))?.[1];
      if (split >= 0 && length !== undefined && Buffer.byteLength(text.slice(split + 4)) >= Number(length)) {
        socket.destroy();
        finish();
      }
    });
    socket.on('end', () => { closed = true; });
    socket.on('close', () => { closed = true; if (!socket.destroyed || data.length > 0) finish(); });
    socket.on('error', () => {});
    for (const part of head) socket.write(part);
  });
}

/** `count` header lines of 6 bytes each. */
const fields = (count: number) => 'a: b\r\n'.repeat(count);

const post = (body: string | Buffer, headers = 'Content-Type: application/json\r\n') =>
  raw(`POST /v1/completions HTTP/1.1\r\nHost: x\r\n${headers}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`, body);

function assertError(reply: RawReply, status: number, code: string): void {
  assert.equal(reply.status, status, reply.body);
  if (reply.headers['content-length'] !== undefined) {
    assert.equal(Number(reply.headers['content-length']), Buffer.byteLength(reply.body), 'Content-Length is the body\'s length');
  }
  const body = JSON.parse(reply.body) as { error: Record<string, unknown> };
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
}

async function assertAlive(): Promise<void> {
  const started = performance.now();
  const res = await fetch(`http://127.0.0.1:${port}/health/live`);
  assert.equal(res.status, 200);
  assert.ok(performance.now() - started < 1000, '/health/live answered quickly');
}

/** A seeded uniform [0, 1) source (the engine's own generator). */
function seeded(seed: number): () => number {
  const rng = new Random(seed);
  return () => rng.next();
}

describe('hostile bodies', () => {
  const cases: Array<[string, () => Promise<RawReply>, number, string]> = [
    ['malformed JSON', () => post('{"model": "x", "prompt": '), 400, 'invalid_request'],
    ['an empty body', () => post(''), 400, 'invalid_request'],
    ['wrong types', () => post(JSON.stringify({ model: 7, prompt: { a: 1 }, max_tokens: 'many' })), 400, 'invalid_request'],
    ['a prompt nested 10,000 deep', () => post(`{"model":"${MODEL}","prompt":${'['.repeat(10_000)}${']'.repeat(10_000)}}`), 400, 'invalid_request'],
    ['an array of 10,000 prompts', () => post(JSON.stringify({ model: MODEL, prompt: Array.from({ length: 10_000 }, (_, i) => `p${i}`) })), 400, 'invalid_request'],
    ['a prompt over the byte bound', () => post(JSON.stringify({ model: MODEL, prompt: 'a'.repeat(256 * 64 + 1) })), 400, 'context_length_exceeded'],
    ['a prompt of 16,000 spaces (passes the bounds, too many tokens)', () => post(JSON.stringify({ model: MODEL, prompt: ' '.repeat(16_000), max_tokens: 0 })), 400, 'context_length_exceeded'],
    ['__proto__ in the body', () => post(`{"model":"${MODEL}","prompt":"a","__proto__":{"x":1}}`), 400, 'invalid_request'],
    ['a body over the limit', () => post(JSON.stringify({ model: MODEL, prompt: 'a'.repeat(3 * 2 ** 20) })), 413, 'payload_too_large'],
    ['text/plain', () => post('hello', 'Content-Type: text/plain\r\n'), 415, 'unsupported_media_type'],
    ['an unknown model', () => post(JSON.stringify({ model: 'gpt-4', prompt: 'a' })), 404, 'model_not_found'],
  ];
  for (const [what, send, status, code] of cases) {
    test(`${what}: ${status} ${code}`, async () => {
      const reply = await send();
      assertError(reply, status, code);
      if (status === 413) assert.equal(reply.headers.connection, 'close');
      await assertAlive();
    });
  }

  test('invalid UTF-8 and lone surrogates are served, and an unknown field refused, not crashed on', async () => {
    const invalid = Buffer.concat([Buffer.from(`{"model":"${MODEL}","max_tokens":1,"prompt":"a`), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('b"}')]);
    for (const body of [invalid, `{"model":"${MODEL}","max_tokens":1,"prompt":"x\\ud800y\\udfffz"}`]) {
      const reply = await post(body);
      assert.equal(reply.status, 200, reply.body);
      assert.equal(JSON.parse(reply.body).object, 'text_completion');
    }
    assertError(await post(JSON.stringify({ model: MODEL, prompt: 'a', max_tokens: 1, frobnicate: true })), 400, 'unsupported_parameter');
    await assertAlive();
  });

  test('random bytes, seeded: never a 500, always the error shape', async () => {
    const random = seeded(8);
    for (let i = 0; i < 30; i++) {
      const bytes = Buffer.from(Array.from({ length: 1 + Math.floor(random() * 300) }, () => Math.floor(random() * 256)));
      const reply = await post(bytes);
      assert.ok(reply.status >= 400 && reply.status < 500, `${reply.status} ${reply.body}`);
      assertError(reply, reply.status, JSON.parse(reply.body).error.code);
    }
    await assertAlive();
  });
});

describe('large bodies share a byte budget', () => {
  test('back-to-back bodies of about a megabyte: the second is refused unread, after a pause, with 429 and Connection: close; small bodies pass, chunked or not; the budget refills', async () => {
    // one prompt far over the byte bound: parsed, then refused with a 400 before any tokenization
    const big = JSON.stringify({ model: MODEL, prompt: 'a'.repeat(1_000_000) });
    const small = JSON.stringify({ model: MODEL, prompt: 'a'.repeat(20_000) });
    const chunked = (body: string) => raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
      `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`);
    assertError(await post(big), 400, 'context_length_exceeded');
    // a chunked body declares no length: it is charged as it arrives and cut short when the budget runs out
    assertError(await chunked(big), 429, 'queue_full');
    const started = performance.now();
    const refused = await post(big);
    assertError(refused, 429, 'queue_full');
    assert.ok(performance.now() - started >= 200, 'the refusal waits out its pause (a tarpit for clients that ignore Retry-After)');
    assert.equal(refused.headers.connection, 'close');
    assert.ok(Number(refused.headers['retry-after']) >= 1);
    await assertAlive();
    // small bodies are never held back, chunked or not
    assertError(await post(small), 400, 'context_length_exceeded');
    assertError(await chunked(small), 400, 'context_length_exceeded');
    await new Promise((resolve) => setTimeout(resolve, 400)); // 4 MiB/s refills well over a megabyte
    assertError(await post(big), 400, 'context_length_exceeded');
  });
});

describe('Expect: 100-continue', () => {
  const withExpect = (length: number, body: string) =>
    exchange([`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${length}\r\n\r\n`], body);

  test('a body the server will read is invited with 100 Continue, then answered', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: 'The ship', max_tokens: 2 });
    const reply = await withExpect(Buffer.byteLength(body), body);
    assert.ok(reply.continued, 'the client was told to send its body');
    assert.equal(reply.status, 200, reply.body);
    assert.equal(JSON.parse(reply.body).object, 'text_completion');
  });

  test('a body over the limit is refused from its headers alone: 413, never 100', async () => {
    const reply = await withExpect(5 * 2 ** 20, '');
    assert.equal(reply.continued, false, 'no 100 Continue before the refusal');
    assertError(reply, 413, 'payload_too_large');
    assert.equal(reply.headers.connection, 'close');
    await assertAlive();
  });
});

describe('hostile requests (routes, methods, the HTTP layer)', () => {
  const cases: Array<[string, () => Promise<RawReply>, number, string, boolean]> = [
    ['an unknown route', () => raw('GET /v2/everything HTTP/1.1\r\nHost: x\r\n\r\n'), 404, 'not_found', false],
    ['a method without a route on a known path', () => raw('DELETE /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n'), 405, 'method_not_allowed', false],
    ['a path without a route', () => raw('DELETE /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n'), 404, 'not_found', false],
    ['an invalid method', () => raw('FOO\x01 / HTTP/1.1\r\nHost: x\r\n\r\n'), 400, 'invalid_request', true],
    ['bad percent-encoding', () => raw('GET /v1/models/%E0%A4%A HTTP/1.1\r\nHost: x\r\n\r\n'), 400, 'invalid_request', false],
    ['a path parameter that is too long', () => raw(`GET /v1/models/${'m'.repeat(500)} HTTP/1.1\r\nHost: x\r\n\r\n`), 414, 'uri_too_long', false],
    ['headers over 16 KiB', () => raw(`GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`), 431, 'headers_too_large', true],
    ['1,900 header fields (under 16 KiB)', () => raw(`GET /health/live HTTP/1.1\r\nHost: x\r\n${fields(1_899)}\r\n`), 431, 'headers_too_large', true],
    ['101 header fields', () => raw(`GET /health/live HTTP/1.1\r\nHost: x\r\n${fields(100)}\r\n`), 431, 'headers_too_large', true],
    ['HTTP/1.1 without Host', () => raw('GET /health/live HTTP/1.1\r\n\r\n'), 400, 'invalid_request', false],
    ['two Host headers', () => raw('GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'), 400, 'invalid_request', false],
    ['two Authorization headers', () => raw('GET /health/live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n'), 400, 'invalid_request', false],
    ['bad chunking', () => raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n'), 400, 'invalid_request', true],
    ['a duplicate Content-Length', () => raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}'), 400, 'invalid_request', true],
    ['Expect: other than 100-continue', () => raw('POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'), 417, 'expectation_failed', true],
  ];
  for (const [what, send, status, code, closes] of cases) {
    test(`${what}: ${status} ${code}${closes ? ', Connection: close' : ''}`, async () => {
      const reply = await send();
      assertError(reply, status, code);
      if (closes) {
        assert.equal(reply.headers.connection, 'close');
      }
      await assertAlive();
    });
  }

  test('a malformed HEAD request is refused without a body, so a client does not read one as the next response', async () => {
    const reply = await raw('HEAD /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n');
    assert.equal(reply.status, 400);
    assert.equal(reply.headers.connection, 'close');
    assert.equal(reply.body, '');
    const get = await raw('GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n');
    assert.equal(get.status, 400);
    assert.equal(JSON.parse(get.body).error.type, 'invalid_request_error');
  });

  test('what the header checks allow: 100 header fields, HTTP/1.0 without Host; a refused Host names its param', async () => {
    const many = await raw(`GET /health/live HTTP/1.1\r\nHost: x\r\n${fields(1_899)}\r\n`);
    assert.match(JSON.parse(many.body).error.message, /more than 100 header fields/, 'refused for the count, not by Node\'s size limit');
    const hundred = await raw(`GET /health/live HTTP/1.1\r\nHost: x\r\n${fields(99)}\r\n`);
    assert.equal(hundred.status, 200, hundred.body);
    const old = await raw('GET /health/live HTTP/1.0\r\n\r\n');
    assert.equal(old.status, 200, old.body);
    const hostless = await raw('POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}');
    assertError(hostless, 400, 'invalid_request');
    assert.equal(JSON.parse(hostless.body).error.param, 'host');
  });

  test('the server keeps the configured timeouts (it is made by our serverFactory, not by fastify)', () => {
    assert.equal(app.server.headersTimeout, 1000);
    assert.equal(app.server.requestTimeout, 2000);
    assert.equal(app.server.keepAliveTimeout, testConfig().keepAliveTimeoutMs);
  });

  test('a half-open connection (partial headers) gets 408 after HEADERS_TIMEOUT_MS; the server answers meanwhile', async () => {
    const socket: Socket = connect(port, '127.0.0.1');
    socket.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le');
    let data = '';
    socket.on('data', (d) => { data += d; });
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    await assertAlive();
    await closed;
    assert.match(data, /^HTTP\/1.1 408 /);
    assert.match(data, /Connection: close/i);
    const body = JSON.parse(data.slice(data.indexOf('\r\n\r\n') + 4));
    assert.equal(body.error.code, 'request_timeout');
    await assertAlive();
  });
});
