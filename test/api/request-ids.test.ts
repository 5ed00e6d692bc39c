/**
 * X-Request-Id through HTTP (a stub service, no engine): an id is kept, anything else is replaced by a fresh one,
 * in the response and in every log line, and so by the full queue's refusal sent before fastify.
 */
import assert from 'node:assert/strict';
import { connect, type AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { buildApp } from '../../src/app.js';
import { MODEL, testConfig } from '../helpers/app.js';
import { readyStub } from '../helpers/stub-service.js';

const FRESH = /^req-[0-9a-f-]{36}$/;

const KEPT = ['abc-123', 'a.b:c_d-E9', 'x'.repeat(128), '0'];
const REPLACED = ['x'.repeat(129), 'a b', '<script>alert(1)</script>', 'über', 'a,b', '{"level":60}', 'a/b', 'a\tb'];

describe('x-request-id', () => {
  test('an id of up to 128 characters of A-Z a-z 0-9 . _ : - is kept; anything else gets a fresh one, in the answer and in the log', async () => {
    const logLines: string[] = [];
    const app = await buildApp(testConfig(), { service: readyStub(MODEL), logger: { level: 'info', stream: { write: (line: string) => { logLines.push(line); } } } });
    try {
      for (const id of KEPT) {
        const res = await app.inject({ url: '/health/live', headers: { 'x-request-id': id } });
        assert.equal(res.headers['x-request-id'], id);
      }
      for (const id of REPLACED) {
        const res = await app.inject({ url: '/health/live', headers: { 'x-request-id': id } });
        assert.match(String(res.headers['x-request-id']), FRESH, JSON.stringify(id));
        const reqIds = logLines.map((line) => (JSON.parse(line) as { reqId?: string }).reqId);
        assert.ok(!reqIds.includes(id), `${JSON.stringify(id)} is not logged as an id`);
      }
      assert.match(String((await app.inject({ url: '/health/live' })).headers['x-request-id']), FRESH, 'none given: a fresh one');
      const repeated = await app.inject({ url: '/health/live', headers: { 'x-request-id': ['one', 'two'] } });
      assert.match(String(repeated.headers['x-request-id']), FRESH, 'two ids: neither is taken');
    } finally {
      await app.close();
    }
  });

  test('the full queue\'s refusal before fastify takes the same ids', async () => {
    const app = await buildApp(testConfig(), { service: readyStub(MODEL, { queueRoom: 0 }), logger: false });
    try {
      await app.listen({ host: '127.0.0.1', port: 0 });
      const port = (app.server.address() as AddressInfo).port;
      const refusalId = (id: string) => new Promise<string>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1');
        let data = '';
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => { data += chunk; });
        socket.on('error', reject);
        socket.on('close', () => {
          assert.match(data, /^HTTP\/1.1 429 /);
          resolve(/\r\nx-request-id: ([^\r]*)\r\n/i.exec(data)?.[1] ?? '');
        });
        socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`);
      });
      assert.equal(await refusalId('burst-7'), 'burst-7');
      assert.match(await refusalId('<b>hi</b>'), FRESH);
      assert.match(await refusalId('y'.repeat(500)), FRESH);
    } finally {
      await app.close();
    }
  });
});
