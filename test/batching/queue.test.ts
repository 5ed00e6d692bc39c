import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BoundedQueue } from '../../src/batching/queue.js';

const item = (rows: number) => ({ rows, arrivedAt: performance.now() });

test('the queue is bounded by waiting prompts: an item that does not fit is refused as full and leaves the queue as it was', () => {
  const q = new BoundedQueue(3);
  assert.equal(q.push(item(2)), 'queued');
  assert.equal(q.push(item(1)), 'queued');
  assert.equal(q.rows, 3);
  assert.equal(q.room, 0);
  assert.equal(q.push(item(1)), 'full');
  assert.equal(q.rows, 3);
  q.shift();
  assert.equal(q.room, 2);
  assert.equal(q.push(item(1)), 'queued');
  assert.equal(q.rows, 2);
  assert.equal(q.push(item(4)), 'full');
});

test('FIFO, remove, and close (newcomers refused as closed, waiting items stay)', async () => {
  const q = new BoundedQueue(10);
  const a = item(1);
  const b = item(1);
  q.push(a);
  q.push(b);
  assert.ok(q.remove(a));
  assert.ok(!q.remove(a));
  assert.equal(q.peek(), b);
  q.close();
  assert.equal(q.push(item(1)), 'closed');
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
