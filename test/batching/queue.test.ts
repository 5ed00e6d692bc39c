import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BoundedQueue } from '../../src/batching/queue.js';
import { ServiceError } from '../../src/errors.js';

const item = (rows: number) => ({ rows, arrivedAt: performance.now() });

test('the queue is bounded by waiting prompts and refuses with queue_full (429) and Retry-After', () => {
  const q = new BoundedQueue(3, 2);
  q.push(item(2));
  q.push(item(1));
  assert.equal(q.rows, 3);
  assert.throws(() => q.push(item(1)), (e: unknown) => e instanceof ServiceError && e.code === 'queue_full' && e.status === 429 && e.retryAfterSeconds === 2);
  q.shift();
  q.push(item(1));
  assert.equal(q.rows, 2);
});

test('FIFO, remove, and close (503 for newcomers, waiting items stay)', async () => {
  const q = new BoundedQueue(10);
  const a = item(1);
  const b = item(1);
  q.push(a);
  q.push(b);
  assert.ok(q.remove(a));
  assert.ok(!q.remove(a));
  assert.equal(q.peek(), b);
  q.close();
  assert.throws(() => q.push(item(1)), (e: unknown) => e instanceof ServiceError && e.status === 503);
  assert.equal(q.shift(), b);
  await q.waitForChange(); // resolves at once when closed
});

test('waitForChange wakes on push, or times out', async () => {
  const q = new BoundedQueue(10);
  const started = performance.now();
  await q.waitForChange(20);
  assert.ok(performance.now() - started >= 15);
  const waiting = q.waitForChange();
  q.push(item(1));
  await waiting;
});

test('a request with more prompts than the whole queue holds is refused with 400, not a 429 that retrying never cures', () => {
  const q = new BoundedQueue(3, 2);
  assert.throws(() => q.push(item(4)), (e: unknown) => e instanceof ServiceError && e.code === 'invalid_request' && e.status === 400 && e.param === 'prompt');
  assert.equal(q.rows, 0);
});
